"""The consumer SDK: submit manifests to the exchange and read its state.

Writes are events: a manifest goes to JetStream as an `Envelope[JobSubmitted]`, and intake decides
whether it becomes a job. Reads are NATS request-reply queries the services answer on
`query.<service>.<name>` (`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`); the SDK
never reads a database.

    async with await Exchange.connect("nats://127.0.0.1:4222") as ex:
        for doc in load_manifests("job.yaml"):
            outcome = await ex.apply(doc)
        job = await ex.wait_for_job("xyz", "my-first-sparkjob", {"settled"}, timeout_s=120)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator
from uuid import UUID, uuid4

import nats
import yaml
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as JsNotFoundError
from pydantic import ValidationError

from libs.common import subjects
from libs.common.envelope import Envelope, InvalidEvent, new_envelope, parse_envelope
from libs.common.events.agent import OfferWithdrawn
from libs.common.events.intake import JobAccepted, JobCancelled, JobCancelRefused, JobRejected
from libs.common.events.matching import OfferLost
from libs.common.events.sdk import (
    DepositRequested,
    DisputeResolutionRequested,
    JobCancelRequested,
    JobSubmitted,
    PayoutRequested,
)
from libs.common.events.settlement import PayoutPosted, PayoutRefused
from libs.common.ids import job_id, offer_id
from libs.common.manifest import MICRO, FieldError, euro_to_micro, is_dns_label, manifest_identity
from libs.common.streams import ensure_streams

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DLQ_STREAM = "DLQ"
NOT_RUNNING = "is the exchange running? (smctl up)"
SERVICES = ("intake", "matching", "placement", "metering", "settlement")
JOB_STATUSES = ("accepted", "waiting", "matched", "placed", "running", "finished", "failed", "metered",
                "settled", "expired", "refused", "cancelled")
# a namespace that can stand as a subject token; anything else is published under `t-invalid`
INVALID_PARTY = "t-invalid"


class ExchangeError(Exception):
    """The exchange could not be reached, or a service refused or failed a request."""


class ManifestFileError(ValueError):
    """A manifest file that cannot be read as YAML mappings; the message names the file."""


def redact(url: str) -> str:
    """A URL fit to print: a password in it is masked."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def format_eur(micro_eur: int | str | Decimal) -> str:
    """Integer micro-euros as EUR with 6 decimals: 1234567 -> "1.234567" (exact, never float)."""
    if isinstance(micro_eur, float):
        raise TypeError("money is integer micro-euros, never float")
    return f"{(Decimal(micro_eur) / MICRO).quantize(Decimal('0.000001'))}"


def format_dtu_hours(dtu_micro_hours: int | str | Decimal) -> str:
    """DTU-hours x 1e6 as DTU-hours with 6 decimals."""
    return format_eur(dtu_micro_hours)


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the strings the user wrote: intake parses them, and
    `notAfter: 2025-03-25T08:25:58Z` travels exactly as written (no local-time or naive surprises).
    It refuses aliases: a few bytes of nested aliases can expand to gigabytes ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted in a manifest",
                                              event.start_mark)
        return super().compose_node(parent, index)


_ManifestLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


MAX_FILE_BYTES = 1024 * 1024  # intake accepts at most 64 KiB per manifest; a file may hold several


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """Every document of a (multi-document) YAML file, each a mapping; empty documents are skipped.

    Raises:
        ManifestFileError: the file is missing, is not YAML, or a document is not a mapping.
    """
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            raise ManifestFileError(f"{p}: is {p.stat().st_size} bytes; a manifest file is at most {MAX_FILE_BYTES}")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ManifestFileError(f"{p}: is a directory, not a manifest file") from None
    except UnicodeDecodeError:
        raise ManifestFileError(f"{p}: not a YAML file (not UTF-8 text)") from None
    except OSError as e:
        raise ManifestFileError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        docs = list(yaml.load_all(text, Loader=_ManifestLoader))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ManifestFileError(f"{p}: not valid YAML{where}: {problem}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestFileError(
                f"{p}: document {i} is a {_yaml_kind(doc)}, not a mapping (a manifest starts with apiVersion:)")
        out.append(doc)
    if not out:
        raise ManifestFileError(f"{p}: contains no manifest")
    return out


def _yaml_kind(doc: Any) -> str:
    if isinstance(doc, list):
        return "list"
    if isinstance(doc, str):
        return "string"
    return type(doc).__name__


def submission_party(manifest: dict[str, Any]) -> tuple[str, UUID]:
    """(party, correlation id) a manifest is submitted under.

    A namespace that cannot be a subject token goes out as `t-invalid` with a fresh correlation id,
    so intake still sees it and rejects it naming `metadata.namespace`.
    """
    namespace, name = manifest_identity(manifest)
    if is_dns_label(namespace):
        return subjects.tenant_party(namespace), job_id(namespace, name)
    return INVALID_PARTY, uuid4()


@dataclass(frozen=True)
class Outcome:
    """What intake decided about one submission."""

    event_id: UUID  # the JobSubmitted event's id
    tenant: str
    name: str
    accepted: bool
    job_id: UUID | None = None
    errors: list[FieldError] = field(default_factory=list)
    status: str | None = None  # the job's status when it is known from the intake query
    resubmitted: bool = False  # the job existed already; intake left it as it was


@dataclass(frozen=True)
class CancelOutcome:
    """What intake decided about one cancel request."""

    event_id: UUID  # the JobCancelRequested event's id
    tenant: str
    name: str
    cancelled: bool  # the job is cancelled: now, or before (`already`)
    already: bool = False  # it was cancelled before; nothing changed
    previous_status: str | None = None  # the job's status when it was cancelled now
    reason: str = ""  # why intake refused (not cancelled)


@dataclass(frozen=True)
class PayoutOutcome:
    """What settlement did with one payout request."""

    event_id: UUID  # the PayoutRequested event's id
    vendor: str
    amount_micro_eur: int
    paid: bool  # paid out: now, or before under the same reference (`already`)
    already: bool = False
    available_micro_eur: int | None = None  # when refused: what the vendor's payable holds


@dataclass(frozen=True)
class WithdrawOutcome:
    """What matching did with one withdrawal of a node's offer."""

    event_id: UUID  # the OfferWithdrawn event's id
    vendor: str
    node: str
    withdrawn: bool  # the offer left the book; False: it was not in the book (never published, or already out)


class Exchange:
    """A connection to the exchange: NATS for events and queries.

    Either `async with Exchange(url) as ex:` (connects on entry), or
    `async with await Exchange.connect(url) as ex:`; both close the connection on exit.
    """

    def __init__(self, nats_url: str | None = None, *, timeout_s: float = 5.0):
        self.url = nats_url or DEFAULT_NATS_URL
        self.timeout_s = timeout_s
        self._nc: NATS | None = None
        self._streams_ready = False

    @classmethod
    async def connect(cls, nats_url: str | None = None, *, timeout_s: float = 5.0) -> Exchange:
        """A connected Exchange.

        Raises:
            ExchangeError: nobody listens at `nats_url`.
        """
        ex = cls(nats_url, timeout_s=timeout_s)
        await ex.open()
        return ex

    async def open(self) -> None:
        """Connect, unless connected already."""
        if self._nc is not None and not self._nc.is_closed:
            return

        async def quiet(_e: Exception) -> None:  # errors are raised to the caller, not logged twice
            return None

        try:
            # nats-py retries forever with max_reconnect_attempts=0; 1 gives up after one retry
            self._nc = await asyncio.wait_for(
                nats.connect(self.url, name="strongmoose-sdk", connect_timeout=2, max_reconnect_attempts=1,
                             reconnect_time_wait=0.2, error_cb=quiet),
                timeout=10,
            )
        except (NoServersError, OSError, asyncio.TimeoutError, NatsError) as e:
            reason = str(e) or type(e).__name__
            raise ExchangeError(f"cannot reach NATS at {redact(self.url)} ({reason}): {NOT_RUNNING}") from None

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise ExchangeError("not connected: use `async with Exchange(url)` or `await Exchange.connect(url)`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                # publishes were already acked; a drain only has to settle subscriptions, so keep it short
                await asyncio.wait_for(self._nc.drain(), timeout=2.0)
            except (NatsError, asyncio.TimeoutError, OSError):
                await self._nc.close()

    async def __aenter__(self) -> Exchange:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes ---------------------------------------------------------------------------------

    async def deposit(self, tenant: str, amount_eur: str | int | Decimal, reference: str | None = None) -> UUID:
        """Pay `amount_eur` into the tenant's wallet; the same `reference` deposits once."""
        try:
            micro = euro_to_micro(amount_eur)
        except ValueError as e:
            raise ExchangeError(f"amount: {e}") from None
        if not is_dns_label(tenant):
            raise ExchangeError(f"tenant: {tenant!r} is not a DNS-1123 label")
        if reference is not None and not 1 <= len(reference) <= 200:
            raise ExchangeError("reference: must be 1 to 200 characters")
        env = new_envelope(DepositRequested(tenant=tenant, amount_micro_eur=micro, reference=reference or str(uuid4())),
                           source="sdk", party=f"t-{tenant}", correlation_id=uuid4())
        await self._publish(env)
        return env.id

    async def journal(self, tenant: str, name: str) -> dict[str, Any] | None:
        return await self.query("settlement", "journal", tenant=tenant, name=name)

    async def wallet(self, tenant: str) -> dict[str, Any]:
        return await self.query("settlement", "wallet", tenant=tenant)

    async def submit(self, manifest: dict[str, Any]) -> UUID:
        """Publish a manifest as a JobSubmitted event; returns the event id (intake decides later)."""
        env = self._submission(manifest)
        await self._publish(env)
        return env.id

    def _submission(self, manifest: dict[str, Any]) -> Envelope[Any]:
        if not isinstance(manifest, dict):
            raise ExchangeError(f"a manifest must be a mapping, not {_yaml_kind(manifest)}")
        party, correlation = submission_party(manifest)
        try:
            payload = JobSubmitted(manifest=manifest)
            env = new_envelope(payload, source="sdk", party=party, correlation_id=correlation)
            # the job's trace starts here; every event it causes carries the same trace id
            env = env.model_copy(update={"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"})
            env.to_bytes()  # fail here, not half-way, on values that have no JSON form
        except (ValidationError, ValueError, TypeError) as e:
            raise ExchangeError(f"manifest cannot be sent as JSON: {e}") from None
        return env

    async def _publish(self, env: Envelope[Any]) -> None:
        try:
            if not self._streams_ready:
                await ensure_streams(self.js)
                self._streams_ready = True
            await self.js.publish(subjects.subject_for(env), env.to_bytes(), headers={"Nats-Msg-Id": str(env.id)},
                                  timeout=self.timeout_s)
        except (NatsError, asyncio.TimeoutError) as e:
            raise ExchangeError(f"publishing to JetStream at {redact(self.url)} failed ({e or type(e).__name__}): "
                                f"{NOT_RUNNING}") from None

    async def cancel(self, tenant: str, name: str, reason: str = "", *, wait: bool = True,
                     timeout_s: float = 20.0) -> CancelOutcome | UUID:
        """Ask intake to cancel the tenant's job `name`; with `wait`, return its decision.

        A job cancelled before it was matched leaves the order book; one matched but not started is
        dropped and its hold voided; a running one is stopped by its vendor and only what it used is
        charged. A job that has ended is not cancelled (the outcome says why); cancelling a cancelled
        job changes nothing (`already`).

        Raises:
            ExchangeError: the tenant is no DNS-1123 label, or the exchange is not reachable.
            TimeoutError: no decision within `timeout_s`.
        """
        if not is_dns_label(tenant):
            raise ExchangeError(f"tenant: {tenant!r} is not a DNS-1123 label")
        if not name:
            raise ExchangeError("name: the job's name is required")
        try:
            payload = JobCancelRequested(tenant=tenant, name=name, reason=reason)
        except ValidationError as e:
            raise ExchangeError("; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                                          for err in e.errors())) from None
        env = new_envelope(payload, source="sdk", party=subjects.tenant_party(tenant),
                           correlation_id=job_id(tenant, name))
        if not wait:
            await self._publish(env)
            return env.id
        async with self._answers(env, (JobCancelled, JobCancelRefused)) as answers:
            await self._publish(env)
            deadline = time.monotonic() + timeout_s
            while True:
                got = await _next_answer(answers, deadline)
                if got is not None:
                    p = got.payload
                    if isinstance(p, JobCancelled):
                        return CancelOutcome(env.id, tenant, name, True, previous_status=p.previous_status)
                    return CancelOutcome(env.id, tenant, name, False, reason=p.reason)
                # a repeated cancel emits nothing: intake notes it in the job's timeline under the request's id
                job = await self._job_quietly(tenant, name)
                if job and any(str(e.get("event_id")) == str(env.id) for e in job.get("timeline") or []):
                    return CancelOutcome(env.id, tenant, name, True, already=True)
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"intake did not answer the cancel of {tenant}/{name} within {timeout_s:g}s (the request is "
                        f"stored and will be answered when intake runs): {NOT_RUNNING}")

    @contextlib.asynccontextmanager
    async def _answers(self, env: Envelope[Any],
                       kinds: tuple[type, ...]) -> AsyncIterator[asyncio.Queue[Envelope[Any]]]:
        """The events of `kinds` caused by `env`, as they come: subscribed to before `env` is published, so
        that the answer cannot slip past (the cause is the event's causation id, so an older answer to the same
        job is not mistaken for this one)."""
        answers: asyncio.Queue[Envelope[Any]] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            try:
                got = parse_envelope(msg.data)
            except InvalidEvent:
                return
            if got.causation_id == env.id and isinstance(got.payload, kinds):
                answers.put_nowait(got)

        subs = [await self.nc.subscribe(f"{_prefix(kind)}.{env.party}", cb=on_event) for kind in kinds]
        try:
            await self.nc.flush()
            yield answers
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _job_quietly(self, tenant: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.job(tenant, name)
        except ExchangeError:
            return None

    async def apply(self, manifest: dict[str, Any], *, wait: bool = True, timeout_s: float = 20.0) -> Outcome | UUID:
        """Submit a manifest; with `wait`, return intake's decision about it (accepted or rejected).

        The decision is recognised by its causation id (intake's JobAccepted/JobRejected name the
        submission that caused them), so resubmitting an existing job is not confused with its past.
        If intake emits nothing for a resubmission, the job's current status from the intake query
        is reported instead once the timeout is near.

        Raises:
            TimeoutError: no decision within `timeout_s`.
        """
        env = self._submission(manifest)
        if not wait:
            await self._publish(env)
            return env.id
        namespace, name = manifest_identity(manifest)
        async with self._answers(env, (JobAccepted, JobRejected)) as answers:
            before = await self._decision_count(namespace, name)
            await self._publish(env)
            deadline = time.monotonic() + timeout_s
            while True:
                got = await _next_answer(answers, deadline)
                if got is not None:
                    return _outcome(env.id, namespace, name, got)
                # fallback: the intake query shows a new decision (e.g. the event was on another subject)
                fallback = await self._decision_from_query(env.id, namespace, name, before,
                                                           final=time.monotonic() >= deadline - 1.0)
                if fallback is not None:
                    return fallback
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"intake did not decide about {namespace or '?'}/{name or '?'} within {timeout_s:g}s "
                        f"(the submission is stored and will be decided when intake runs): {NOT_RUNNING}")

    async def _decision_count(self, tenant: str, name: str) -> int | None:
        if not (is_dns_label(tenant) and name):
            return None
        try:
            job = await self.job(tenant, name)
        except ExchangeError:
            return None
        return _count_decisions(job)

    async def _decision_from_query(self, event_id: UUID, tenant: str, name: str, before: int | None,
                                   *, final: bool) -> Outcome | None:
        if before is None:
            return None
        try:
            job = await self.job(tenant, name)
        except ExchangeError:
            return None
        if not job or _count_decisions(job) <= before:
            if final and job and job.get("status") not in (None, "rejected"):
                # no word from intake about this submission, but the job stands: report it as it is
                return Outcome(event_id, tenant, name, True, _uuid(job.get("job_id")), [], job.get("status"),
                               resubmitted=True)
            return None
        last = [e for e in job.get("timeline") or [] if e.get("type") in _DECISIONS][-1]
        if last.get("type") == "JobRejected":
            return Outcome(event_id, tenant, name, False, None, field_errors(last.get("detail")), "rejected")
        return Outcome(event_id, tenant, name, True, _uuid(job.get("job_id")), [], job.get("status"),
                       resubmitted=last.get("type") == "JobResubmitted")

    # -- reads ----------------------------------------------------------------------------------

    async def query(self, service: str, name: str, /, **req: Any) -> Any:
        """Ask `service` the query `name` (`query.<service>.<name>`); returns the reply's `result`.

        Raises:
            ExchangeError: nobody answers, or the service answered with an error.
        """
        subject = subjects.query(service, name)
        body = json.dumps({k: v for k, v in req.items() if v is not None}, default=str).encode()
        try:
            msg = await self.nc.request(subject, body, timeout=self.timeout_s)
        except NoRespondersError:
            raise ExchangeError(f"no {service} service answers {subject}: {NOT_RUNNING}") from None
        except (NatsTimeoutError, asyncio.TimeoutError):
            raise ExchangeError(f"{service} did not answer {subject} within {self.timeout_s:g}s: "
                                f"{NOT_RUNNING}") from None
        except NatsError as e:
            raise ExchangeError(f"query {subject} failed ({e or type(e).__name__}): {NOT_RUNNING}") from None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            raise ExchangeError(f"{service} sent a reply to {subject} that is not JSON") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ExchangeError(f"{service} sent a malformed reply to {subject}")
        if not reply["ok"]:
            raise ExchangeError(f"{service} could not answer {name}: {reply.get('error') or 'unknown error'}")
        return reply.get("result")

    async def health(self, service: str) -> dict[str, Any]:
        return await self.query(service, "health")

    async def jobs(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await self.query("intake", "jobs", tenant=tenant) or []

    async def job(self, tenant: str, name: str) -> dict[str, Any] | None:
        """The job with its timeline, or `{"status": "rejected", ...}` if it was never accepted, or None."""
        return await self.query("intake", "job", tenant=tenant, name=name)

    async def offers(self, vendor: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
        return await self.query("matching", "offers", vendor=vendor, region=region) or []

    async def explain(self, tenant: str, name: str, at: datetime | None = None) -> dict[str, Any] | None:
        """Why a job (matched or not) has the run it has: per constraint how many offers it excluded and the
        nearest miss, how many offers fit, and the best run at `at` (default: now); None if matching has no
        such job."""
        return await self.query("matching", "explain", tenant=tenant, name=name,
                                at=at.isoformat() if at else None)

    async def vendors(self) -> list[dict[str, Any]]:
        return await self.query("matching", "vendors") or []

    async def invoice(self, tenant: str, since: datetime | None = None,
                      until: datetime | None = None) -> dict[str, Any]:
        """A line per job charged in [since, until) (either end open when None): DTU-hours, price, fee, total."""
        return await self.query("settlement", "invoice", tenant=tenant, **_period(since, until))

    # -- vendors: payouts and statements ---------------------------------------------------------------

    async def statement(self, vendor: str, since: datetime | None = None,
                        until: datetime | None = None) -> dict[str, Any]:
        """A vendor's payout statement for [since, until): earned per job, disputes, payouts, balances."""
        return await self.query("settlement", "statement", vendor=vendor, **_period(since, until))

    async def payout(self, vendor: str, amount_eur: str | int | Decimal, reference: str, *, wait: bool = False,
                     timeout_s: float = 20.0) -> PayoutOutcome | UUID:
        """Ask for `amount_eur` of the vendor's payable to be paid out; the same `reference` pays once.

        Without `wait`, returns the request's event id. With it, returns settlement's answer: paid, or
        refused with what the payable holds (more than the payable, or a vendor that has earned nothing).

        Raises:
            TimeoutError: no answer within `timeout_s`.
        """
        try:
            micro = euro_to_micro(amount_eur)
        except ValueError as e:
            raise ExchangeError(f"amount: {e}") from None
        if not is_dns_label(vendor):
            raise ExchangeError(f"vendor: {vendor!r} is not a DNS-1123 label")
        if not reference or len(reference) > 200:
            raise ExchangeError("reference: must be 1 to 200 characters")
        env = new_envelope(PayoutRequested(vendor=vendor, amount_micro_eur=micro, reference=reference),
                           source="sdk", party=subjects.vendor_party(vendor), correlation_id=uuid4())
        if not wait:
            await self._publish(env)
            return env.id
        async with self._answers(env, (PayoutPosted, PayoutRefused)) as answers:
            await self._publish(env)
            deadline = time.monotonic() + timeout_s
            while True:
                got = await _next_answer(answers, deadline)
                if got is not None:
                    refused = isinstance(got.payload, PayoutRefused)
                    return PayoutOutcome(env.id, vendor, micro, not refused,
                                         available_micro_eur=got.payload.available_micro_eur if refused else None)
                # the same reference again posts nothing and says nothing: the statement shows it paid
                paid = await self.statement(vendor)
                if any(p["reference"] == reference for p in paid.get("payouts") or []):
                    return PayoutOutcome(env.id, vendor, micro, True, already=True)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"settlement did not answer the payout {reference!r} of {vendor} within "
                                       f"{timeout_s:g}s (the request is stored and will be answered when settlement "
                                       f"runs): {NOT_RUNNING}")

    async def withdraw(self, vendor: str, node: str, reason: str = "", *, wait: bool = True,
                       timeout_s: float = 20.0) -> WithdrawOutcome | UUID:
        """Take a vendor node's offer off the market now: its capacity leaves the book, and the jobs booked on
        it that have not started are booked elsewhere. An agent that still serves the node stops offering it
        (until the agent restarts); publishing the node again brings it back.

        Without `wait`, returns the request's event id; with it, whether matching took the offer out.

        Raises:
            ExchangeError: vendor is no DNS-1123 label, node is empty, or the exchange is not reachable.
            TimeoutError: no answer within `timeout_s`.
        """
        if not is_dns_label(vendor):
            raise ExchangeError(f"vendor: {vendor!r} is not a DNS-1123 label")
        if not node or len(node) > 253 or any(c.isspace() for c in node):
            raise ExchangeError(f"node: {node!r} is not a node name (1 to 253 characters, no spaces)")
        if len(reason) > 500:
            raise ExchangeError("reason: at most 500 characters")
        oid = offer_id(vendor, node)
        env = new_envelope(OfferWithdrawn(offer_id=oid, vendor=vendor, node=node, reason=reason), source="sdk",
                           party=subjects.vendor_party(vendor), correlation_id=oid)
        if not wait:
            await self._publish(env)
            return env.id
        async with self._answers(env, (OfferLost,)) as answers:
            await self._publish(env)
            deadline = time.monotonic() + timeout_s
            while True:
                if await _next_answer(answers, deadline) is not None:
                    return WithdrawOutcome(env.id, vendor, node, True)
                # a withdrawal of an offer not in the book says nothing: the book shows it absent
                with contextlib.suppress(ExchangeError):  # matching down: the withdrawal waits in its stream
                    if not any(o["node"] == node for o in await self.offers(vendor)):
                        return WithdrawOutcome(env.id, vendor, node, False)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"matching did not take {vendor}/{node} out of the book within "
                                       f"{timeout_s:g}s (the request is stored and will be applied when matching "
                                       f"runs): {NOT_RUNNING}")

    # -- operator: disputes ---------------------------------------------------------------------------

    async def disputes(self, vendor: str | None = None) -> list[dict[str, Any]]:
        return await self.query("settlement", "disputes", vendor=vendor) or []

    async def resolve_dispute(self, tenant: str, name: str, pay: str, note: str = "") -> UUID:
        """Decide a job's dispute: its held amount goes to the vendor (`pay="vendor"`) or back to the tenant."""
        if pay not in ("vendor", "tenant"):
            raise ExchangeError(f"pay: must be vendor or tenant, not {pay!r}")
        jid = job_id(tenant, name)
        env = new_envelope(DisputeResolutionRequested(job_id=jid, pay=pay, note=note), source="sdk",
                           party=subjects.OPERATOR_PARTY, correlation_id=jid)
        await self._publish(env)
        return env.id

    # -- operator: dead letters -----------------------------------------------------------------------

    async def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest dead letters (up to `limit`), oldest first: where each came from and why."""
        try:
            info = await self.js.stream_info(DLQ_STREAM)
        except JsNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        seq = info.state.last_seq if info.state.messages else 0
        while seq >= max(1, info.state.first_seq) and len(out) < limit:
            letter = await self.dead_letter(seq)
            if letter is not None:
                out.append(letter)
            seq -= 1
        return out[::-1]

    async def dead_letter(self, seq: int) -> dict[str, Any] | None:
        """One dead letter by its sequence in the DLQ stream (from 1), with the original message's body."""
        if seq < 1:
            return None
        try:
            msg = await self.js.get_msg(DLQ_STREAM, seq)
        except JsNotFoundError:
            return None
        h = msg.headers or {}
        return {"seq": seq, "subject": msg.subject, "consumer": h.get("Strongmoose-Consumer", ""),
                "error": h.get("Strongmoose-Error", ""), "original_subject": h.get("Strongmoose-Subject", ""),
                "original_stream": h.get("Strongmoose-Stream", ""),
                "original_seq": int(h["Strongmoose-Stream-Seq"]) if "Strongmoose-Stream-Seq" in h else None,
                "time": msg.time,
                "body": (msg.data or b"").decode(errors="replace")}

    async def redrive(self, seq: int) -> dict[str, Any]:
        """Publish a dead letter's message again on its original subject, then remove the letter.

        The consumer sees it as new delivery; its inbox still keeps an event applied only once.
        """
        try:
            msg = await self.js.get_msg(DLQ_STREAM, seq) if seq >= 1 else None
        except JsNotFoundError:
            msg = None
        if msg is None:
            raise ExchangeError(f"no dead letter {seq} (smctl ops dlq list shows them)")
        h = msg.headers or {}
        subject = h.get("Strongmoose-Subject")
        if not subject:
            raise ExchangeError(f"dead letter {seq} does not name its original subject")
        ack = await self.js.publish(subject, msg.data or b"", headers={"Nats-Msg-Id": f"redrive:{seq}:{uuid4()}"})
        await self.js.delete_msg(DLQ_STREAM, seq)
        return {"seq": seq, "subject": subject, "stream": ack.stream, "new_seq": ack.seq}

    async def ledger_check(self) -> dict[str, Any]:
        return await self.query("settlement", "ledger_check")

    async def wait_for_job(self, tenant: str, name: str, statuses: set[str] | frozenset[str],
                           timeout_s: float) -> dict[str, Any]:
        """Poll the job every 0.2 s until its status is one of `statuses`; returns the job.

        Raises:
            TimeoutError: the status did not get there in time (the message has the last one seen).
        """
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        while True:
            job = await self.job(tenant, name)
            last = job.get("status") if job else None
            if last in statuses:
                return job  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {tenant}/{name} did not reach {'/'.join(sorted(statuses))} within "
                                   f"{timeout_s:g}s (last status: {last or 'unknown'})")
            await asyncio.sleep(0.2)


def _prefix(cls: type) -> str:
    from libs.common.events import subject_prefix

    return subject_prefix(cls)


def _uuid(v: Any) -> UUID | None:
    try:
        return UUID(str(v)) if v else None
    except ValueError:
        return None


# timeline entries in which intake answers a submission; a resubmission of an existing job emits no
# event, only a JobResubmitted entry in the job's timeline
_DECISIONS = ("JobAccepted", "JobRejected", "JobResubmitted")


def _count_decisions(job: dict[str, Any] | None) -> int:
    if not job:
        return 0
    return sum(1 for e in job.get("timeline") or [] if e.get("type") in _DECISIONS)


async def _next_answer(answers: asyncio.Queue[Envelope[Any]], deadline: float) -> Envelope[Any] | None:
    """The next answer, or None after at most a second (the caller looks at the job's state in between)."""
    try:
        return await asyncio.wait_for(answers.get(), timeout=max(0.05, min(1.0, deadline - time.monotonic())))
    except asyncio.TimeoutError:
        return None


def _outcome(event_id: UUID, namespace: str, name: str, env: Envelope[Any]) -> Outcome:
    p = env.payload
    if isinstance(p, JobAccepted):
        return Outcome(event_id, p.request.tenant, p.request.name, True, p.job_id, [], "accepted")
    return Outcome(event_id, p.tenant or namespace, p.name or name, False, None, list(p.errors), "rejected")


def field_errors(detail: Any) -> list[FieldError]:
    """The field errors in a JobRejected timeline entry's detail, whatever shape it comes in:
    a list of `{field, reason}`, `{"errors": [...]}`, or text such as "a: why; b: why"."""
    if isinstance(detail, dict):
        if "errors" in detail:
            return field_errors(detail["errors"])
        if "field" in detail:
            return [FieldError(field=str(detail["field"]), reason=str(detail.get("reason", "")))]
        return [FieldError(field=str(k), reason=str(v)) for k, v in detail.items()]
    if isinstance(detail, list):
        out: list[FieldError] = []
        for item in detail:
            out.extend(field_errors(item))
        return out
    if isinstance(detail, str):
        text = re.sub(r"^rejected:\s*", "", detail.strip(), flags=re.IGNORECASE)
        if text.startswith(("[", "{")):
            try:
                return field_errors(json.loads(text))
            except ValueError:
                pass
        out = []
        for part in re.split(r";\s+|\n", text):
            if not part.strip():
                continue
            f, sep, reason = part.partition(": ")
            out.append(FieldError(field=f.strip(), reason=reason.strip()) if sep
                       else FieldError(field="(manifest)", reason=part.strip()))
        return out
    return [] if detail is None else [FieldError(field="(manifest)", reason=str(detail))]


def _period(since: datetime | None, until: datetime | None) -> dict[str, str]:
    """A report period for a query; times must carry a time zone (a naive one is refused, naming it)."""
    out = {}
    for name, t in (("from", since), ("to", until)):
        if t is None:
            continue
        if t.tzinfo is None or t.utcoffset() is None:
            raise ExchangeError(f"{name}: {t.isoformat()} has no time zone (add Z or +01:00)")
        out[name] = t.isoformat()
    if since and until and until <= since:
        raise ExchangeError(f"to: {until.isoformat()} is not after from: {since.isoformat()}")
    return out
