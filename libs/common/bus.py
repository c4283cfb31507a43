"""The batch consumer runtime every service runs on.

A service declares `Subscription`s (a durable consumer + a batch handler) and `Query` endpoints.
For each subscription a worker pulls a batch, parses the envelopes (an invalid one is dead-lettered
and terminated), and in ONE database transaction claims the inbox rows, runs the handler on the
fresh events and writes the outgoing events to the outbox; it acks only after commit. If the batch
transaction fails, its messages are retried one by one, so a poison message is isolated: it is
nacked with back-off and dead-lettered when it reaches `max_deliver` (or at once when the handler
raises `PermanentError`), while the rest go through.

Restarts of PostgreSQL or NATS pause a service rather than fail its messages. A batch whose transaction
fails because the database cannot be reached (or the connection broke, even during COMMIT) is retried
whole once the database answers again, while its messages are kept in progress: no nak, no delivery
counted against `max_deliver`. Retrying is safe because a batch is idempotent (the inbox claim skips
events a commit already applied; outgoing ids are derived), so an ambiguous commit is never applied
twice. The NATS client reconnects on its own; durable consumers resume where their acks stopped, and
the outbox relay publishes again what it had not yet seen acked. Both waits are bounded by
`max_outage_s`: beyond it the service gives up (`run_service` exits 1, for its supervisor to restart
it), and meanwhile the `health` query answers "not ready" and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic_core import to_jsonable_python

from libs.common import inbox, outbox, subjects, telemetry
from libs.common.db import create_pool, is_outage, reachable
from libs.common.digest import StateTable, state_digest
from libs.common.envelope import Envelope, InvalidEvent, parse_envelope
from libs.common.migrate import migrate
from libs.common.streams import ConsumerSpec, ensure_streams

log = logging.getLogger(__name__)

Handler = Callable[[asyncpg.Connection, list[Envelope[Any]]], Awaitable[list[Envelope[Any]]]]
QueryHandler = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[Any]]  # (connection, request) -> reply


class PermanentError(Exception):
    """The event can never be applied (unknown reference, impossible state): dead-letter it now."""


class NotReady(Exception):
    """The service cannot do its work now: the database or NATS is unreachable, or it gave up."""


class OutageTooLong(Exception):
    """The database stayed unreachable for longer than `max_outage_s`: the service gives up."""


# a batch that fails with a connection error although the database answers is retried this often, then
# handled as any failure (one by one, nak, dead letter): a "connection" error may also be a client bug
OUTAGE_RETRIES_WHILE_UP = 3
NATS_RECONNECT_WAIT_S = 0.5


@dataclass(frozen=True)
class Subscription:
    consumer: ConsumerSpec
    handle: Handler  # (tx, fresh events) -> outgoing events; runs inside the batch transaction
    # events from outside the exchange (consumers, vendors) carry a time their sender chose: take the
    # time the stream stored the message instead, which a replay sees unchanged (True: every event; a
    # tuple of payload classes: the events of those)
    time_from_stream: bool | tuple[type[Any], ...] = False


class PartyMismatch(InvalidEvent):
    """The subject names one party and the envelope another: a forgery or a bug, never applied."""


def received(sub: Subscription, m: Msg) -> Envelope[Any]:
    """Parse a message and check that its subject's party token is the envelope's party."""
    env = parse_envelope(m.data)
    token = m.subject.rsplit(".", 1)[-1]
    if token != env.party:
        raise PartyMismatch(f"subject party {token!r} is not the envelope's party {env.party!r}")
    if sub.time_from_stream is True or (
            isinstance(sub.time_from_stream, tuple) and isinstance(env.payload, sub.time_from_stream)):
        env = env.model_copy(update={"time": m.metadata.timestamp})
    return env


@dataclass
class Service:
    """What a service is to the runtime: its name, schema, migrations, subscriptions and queries."""

    name: str
    schema: str
    migrations: Path
    subscriptions: list[Subscription]
    queries: dict[str, QueryHandler] = field(default_factory=dict)
    # one writer at a time inside this process (matching: the order book is decided serially)
    serialize: bool = False
    # what of its schema is not plain state (libs.common.digest): by default every table and column is
    digest: dict[str, StateTable] = field(default_factory=dict)


async def apply_events(tx: asyncpg.Connection, sub: Subscription, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """A batch's work inside its transaction: claim the inbox rows, run the handler on the fresh events,
    queue the outgoing events in the outbox; returns them. Live consumers and a replay both run this."""
    fresh = await inbox.claim_many(tx, sub.consumer.durable, events)
    out = await sub.handle(tx, fresh) if fresh else []
    # each outgoing event continues the trace of the event that caused it
    by_id = {e.id: e for e in fresh}
    out = [o if o.traceparent or o.causation_id not in by_id
           else o.model_copy(update={"traceparent": by_id[o.causation_id].traceparent})
           for o in out]
    await outbox.add_many(tx, out)
    return out


async def connect_nats(url: str, name: str, *, max_outage_s: float | None = None, **callbacks: Any) -> NATS:
    """Connect; a NATS restart pauses the client, which reconnects on its own.

    Args:
        url: The NATS server.
        name: The client name the server shows.
        max_outage_s: Stop reconnecting (and close, calling `closed_cb`) after about this long without a
            server; None reconnects forever.
        callbacks: nats-py callbacks (`disconnected_cb`, `reconnected_cb`, `closed_cb`, `error_cb`).
    """
    attempts = -1 if max_outage_s is None else max(1, int(max_outage_s / NATS_RECONNECT_WAIT_S))
    return await nats.connect(url, name=name, max_reconnect_attempts=attempts,
                              reconnect_time_wait=NATS_RECONNECT_WAIT_S, connect_timeout=5, **callbacks)


async def dead_letter(js: JetStreamContext, consumer: str, msg: Msg, error: str) -> None:
    """Park a message that cannot be applied on `dlq.<consumer>.<subject>` with the reason."""
    meta = msg.metadata
    headers = {
        "Strongmoose-Consumer": consumer,
        "Strongmoose-Error": error[:2000],
        "Strongmoose-Subject": msg.subject,
        "Strongmoose-Stream": meta.stream,
        "Strongmoose-Stream-Seq": str(meta.sequence.stream),
        "Nats-Msg-Id": f"dlq:{consumer}:{meta.stream}:{meta.sequence.stream}",
    }
    await js.publish(subjects.dead_letter(consumer, msg.subject), msg.data, headers=headers)
    log.error("dead-lettered %s seq %s for %s: %s", msg.subject, meta.sequence.stream, consumer, error)


def _nats_trouble(e: BaseException) -> bool:
    """A NATS server that is not there (yet), or JetStream not answering yet: worth another try (a request
    JetStream refuses, such as an invalid stream change, is not)."""
    if isinstance(e, nats.js.errors.APIError):
        return isinstance(e, (nats.js.errors.ServiceUnavailableError, nats.js.errors.ServerError))
    return isinstance(e, (nats.errors.Error, OSError, asyncio.TimeoutError))


class Runtime:
    """Runs one service: pool, migrations, streams, relay, batch consumers and query endpoints."""

    def __init__(self, service: Service, nats_url: str, database_url: str, batch_size: int = 200,
                 stream_replicas: int = 1, max_outage_s: float = 120.0):
        self.service = service
        self.nats_url, self.database_url, self.batch_size = nats_url, database_url, batch_size
        self.stream_replicas = stream_replicas
        self.max_outage_s = max_outage_s
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.pool: asyncpg.Pool | None = None
        self.relay: outbox.Relay | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock() if service.serialize else None
        # readiness: set once started while the database and NATS are both reachable, cleared during an outage
        self.ready = asyncio.Event()
        self.started = False
        self.failed: str | None = None  # why the service gave up; `run_until_signalled` then returns
        self.db_down_since: float | None = None  # time.monotonic() of the outage's start
        self.nats_down_since: float | None = None
        self._fatal = asyncio.Event()
        self._db_probe: asyncio.Task[bool] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Connect (retrying for up to `max_outage_s` while a server is not there yet), migrate, declare the
        streams and consumers, then consume, relay and answer queries."""
        s = self.service
        self.pool = await self._retrying("PostgreSQL", self._open_database, is_outage)
        self.nc, psubs = await self._retrying("NATS", self._open_nats, _nats_trouble)
        self.js = self.nc.jetstream()
        self.relay = outbox.Relay(self.pool, self.js, s.schema, nc=self.nc, database_back=self.database_back)
        self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{s.name}-relay"))
        for sub, psub in zip(s.subscriptions, psubs, strict=True):
            self._tasks.append(asyncio.create_task(self._consume(sub, psub), name=sub.consumer.durable))
        queries: dict[str, QueryHandler] = {"health": self._health, "digest": self._digest, **s.queries}
        for name, handler in queries.items():
            await self.nc.subscribe(subjects.query(s.name, name), queue=s.name,
                                    cb=self._answer(handler, needs_db=name != "health"))
        await self.nc.flush()  # the server knows our subscriptions before anyone is told we are ready
        self.started = True
        self._readiness_changed()
        log.info("%s started: schema %s, %d consumers", s.name, s.schema, len(s.subscriptions))

    async def _open_database(self) -> asyncpg.Pool:
        s = self.service
        pool = await create_pool(self.database_url, s.schema, max_size=len(s.subscriptions) + 4)
        try:
            await migrate(pool, s.schema, s.migrations)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _open_nats(self) -> tuple[NATS, list[JetStreamContext.PullSubscription]]:
        s = self.service
        nc: NATS | None = None

        async def disconnected() -> None:
            if self.nc is nc and self.nats_down_since is None and not self._stopping:
                self.nats_down_since = time.monotonic()
                log.warning("%s: NATS disconnected; reconnecting (readiness: not ready)", s.name)
                self._readiness_changed()

        async def reconnected() -> None:
            if self.nc is nc:
                took = time.monotonic() - (self.nats_down_since or time.monotonic())
                self.nats_down_since = None
                log.warning("%s: NATS reconnected after %.1f s; consumers resume", s.name, took)
                self._readiness_changed()

        async def closed() -> None:
            if self.nc is nc and not self._stopping:
                self._fail(f"the NATS connection closed (no server for {self.max_outage_s:g} s)")

        async def error(e: Exception) -> None:  # nats-py's default logs a traceback per reconnect attempt
            log.debug("%s: NATS: %s: %s", s.name, type(e).__name__, e)

        nc = await connect_nats(self.nats_url, s.name, max_outage_s=self.max_outage_s, disconnected_cb=disconnected,
                                reconnected_cb=reconnected, closed_cb=closed, error_cb=error)
        try:
            js = nc.jetstream()
            await ensure_streams(js, self.stream_replicas)
            psubs = [await js.pull_subscribe(sub.consumer.filter_subject, durable=sub.consumer.durable,
                                             stream=sub.consumer.stream, config=sub.consumer.config())
                     for sub in s.subscriptions]
        except BaseException:
            await nc.close()
            raise
        return nc, psubs

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[Any]],
                        transient: Callable[[BaseException], bool]) -> Any:
        """`attempt()`, again with back-off while it fails transiently, for up to `max_outage_s`."""
        deadline = time.monotonic() + self.max_outage_s
        delay = 0.2
        while True:
            try:
                return await attempt()
            except Exception as e:
                if not transient(e) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: %s not available yet (%s: %s); retrying in %.1f s", self.service.name, what,
                            type(e).__name__, e, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    # -- readiness and outages ---------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """Whether the service can do its work now, and if not, why (the `health` query's answer)."""
        now = time.monotonic()
        database = "up" if self.db_down_since is None else f"unreachable for {now - self.db_down_since:.1f} s"
        if self.nc is None or self.nc.is_closed:
            bus = "closed" if self.started else "not connected yet"
        elif self.nc.is_connected:
            bus = "connected"
        else:
            bus = f"reconnecting for {now - (self.nats_down_since or now):.1f} s"
        ready = self.started and self.failed is None and database == "up" and bus == "connected"
        out: dict[str, Any] = {"ready": ready, "database": database, "nats": bus}
        if self.failed:
            out["failed"] = self.failed
        return out

    def _readiness_changed(self) -> None:
        if self.readiness()["ready"]:
            self.ready.set()
        else:
            self.ready.clear()

    def _fail(self, reason: str) -> None:
        """Give up: consumers stop, readiness says why, `run_until_signalled` returns (and the process exits 1)."""
        if self.failed is None:
            self.failed = reason
            log.error("%s: giving up: %s", self.service.name, reason)
            self._readiness_changed()
            self._fatal.set()

    async def database_back(self, keep: list[Msg] | tuple[()] = (), ack_wait_s: float = 30.0) -> bool:
        """Return once the database answers (at once when it does); meanwhile keep `keep` in progress, so that
        JetStream neither redelivers them nor counts a delivery. One probe serves every waiting consumer.
        Returns whether the database had been unreachable.

        Raises:
            OutageTooLong: the database stayed away for more than `max_outage_s`; the service has given up.
        """
        if self._db_probe is None or self._db_probe.done():
            self._db_probe = asyncio.create_task(self._probe_database(), name=f"{self.service.name}-db-probe")
        probe = self._db_probe
        while True:
            done, _ = await asyncio.wait({probe}, timeout=max(1.0, ack_wait_s / 3))
            if done:
                break
            for m in keep:
                with contextlib.suppress(Exception):  # NATS may be away too: then it redelivers later
                    await m.in_progress()
        return probe.result()

    async def _probe_database(self) -> bool:
        assert self.pool is not None
        await self.pool.expire_connections()  # connections from before a restart are dead: replace them all
        if await reachable(self.database_url):
            return False
        self.db_down_since = down = time.monotonic()
        self._readiness_changed()
        log.warning("%s: database unreachable; consumers pause (readiness: not ready) for up to %g s",
                    self.service.name, self.max_outage_s)
        delay = 0.1
        while not await reachable(self.database_url):
            if time.monotonic() - down > self.max_outage_s:
                self._fail(f"the database was unreachable for more than {self.max_outage_s:g} s")
                raise OutageTooLong(self.failed)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)
        await self.pool.expire_connections()
        self.db_down_since = None
        log.warning("%s: database back after %.1f s; consumers resume", self.service.name, time.monotonic() - down)
        self._readiness_changed()
        return True

    async def stop(self) -> None:
        """Stop consuming and close; bounded, because a cancelled fetch in nats-py may not notice at once."""
        self._stopping = True
        if self._db_probe is not None:
            self._db_probe.cancel()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()  # every handled message is acked; a loop still fetching sees the close
        pending = [t for t in self._tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            _, still = await asyncio.wait(pending, timeout=5.0)
            if still:
                log.warning("%s: %d tasks did not stop", self.service.name, len(still))
        self._tasks.clear()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=10.0)
            except asyncio.TimeoutError:
                self.pool.terminate()

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._fatal.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await self.stop()

    # -- consuming ----------------------------------------------------------------------------

    async def _consume(self, sub: Subscription, psub: JetStreamContext.PullSubscription) -> None:
        assert self.nc is not None
        # nats-py's fetch can swallow a cancellation: stop on close too
        while not self.nc.is_closed and self.failed is None:
            try:
                msgs = await psub.fetch(self.batch_size, timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection trouble: the client reconnects, we wait
                if self.nc.is_connected:  # a reconnect is logged once, not per consumer and second
                    log.warning("%s: fetch failed (%s: %s); retrying", sub.consumer.durable, type(e).__name__, e)
                await asyncio.sleep(1.0)
                continue
            try:
                await self.process(sub, msgs)
            except asyncio.CancelledError:
                raise
            except OutageTooLong:
                return  # the service gave up; nothing was acked, JetStream redelivers to its successor
            except Exception:
                # nothing was acked: JetStream redelivers after ack_wait
                log.exception("%s: batch processing failed", sub.consumer.durable)
                await asyncio.sleep(1.0)

    async def process(self, sub: Subscription, msgs: list[Msg]) -> None:
        assert self.js is not None
        good: list[tuple[Msg, Envelope[Any]]] = []
        for m in msgs:
            try:
                good.append((m, received(sub, m)))
            except InvalidEvent as e:
                await dead_letter(self.js, sub.consumer.durable, m, f"invalid event: {e}")
                await m.term()
        if not good:
            return
        try:
            await self._apply_through_outages(sub, [m for m, _ in good], [e for _, e in good])
        except OutageTooLong:
            raise
        except Exception as e:
            if len(good) == 1:
                await self._failed(sub, *good[0], e)
                return
            log.warning("%s: batch of %d failed (%r); retrying one by one", sub.consumer.durable, len(good), e)
            for m, env in good:
                try:
                    await self._apply_through_outages(sub, [m], [env])
                except OutageTooLong:
                    raise
                except Exception as e1:
                    await self._failed(sub, m, env, e1)
                else:
                    await m.ack()
            return
        for m, _ in good:
            await m.ack()

    async def _apply_through_outages(self, sub: Subscription, msgs: list[Msg], events: list[Envelope[Any]]) -> None:
        """`_apply`, retried whole while the database is unreachable or the connection broke.

        The failed attempt may have committed (a connection lost during COMMIT): the retry then claims no
        inbox row and applies nothing, and the relay publishes what that commit queued.
        """
        retries_while_up = 0
        while True:
            try:
                return await self._apply(sub, events)
            except Exception as e:
                if not is_outage(e):
                    raise
                log.warning("%s: batch of %d hit a database connection error (%s: %s); retrying it whole once "
                            "the database answers", sub.consumer.durable, len(events), type(e).__name__, e)
                if not await self.database_back(msgs, sub.consumer.ack_wait_s):
                    retries_while_up += 1
                    if retries_while_up > OUTAGE_RETRIES_WHILE_UP:
                        raise

    async def _apply(self, sub: Subscription, events: list[Envelope[Any]]) -> None:
        assert self.pool is not None and self.relay is not None
        first = events[0]
        with telemetry.span(f"{sub.consumer.durable} x{len(events)}", first.traceparent,
                            **{"messaging.batch.message_count": len(events), "event.type": first.type}):
            if self._lock is not None:
                async with self._lock:
                    out = await self._transaction(sub, events)
            else:
                out = await self._transaction(sub, events)
        if out:
            self.relay.notify()

    async def _transaction(self, sub: Subscription, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
        assert self.pool is not None
        async with self.pool.acquire() as tx:
            async with tx.transaction():
                return await apply_events(tx, sub, events)

    async def _failed(self, sub: Subscription, m: Msg, env: Envelope[Any], e: Exception) -> None:
        assert self.js is not None
        delivered = m.metadata.num_delivered
        ctx = f"event {env.id} {env.type} correlation {env.correlation_id} party {env.party}"
        if isinstance(e, PermanentError) or delivered >= sub.consumer.max_deliver:
            await dead_letter(self.js, sub.consumer.durable, m, f"{type(e).__name__}: {e}")
            await m.term()
        else:
            log.warning("%s: %s failed (delivery %d): %r; will retry", sub.consumer.durable, ctx, delivered, e)
            await m.nak(delay=min(0.5 * 2 ** (delivered - 1), 30.0))

    async def _health(self, con: asyncpg.Connection | None, req: dict[str, Any]) -> Any:
        """Readiness: answers only when the service can work; otherwise the error says why not."""
        r = self.readiness()
        if not r["ready"]:
            raise NotReady(f"{self.service.name} is not ready: database {r['database']}, NATS {r['nats']}"
                           + (f"; gave up: {r['failed']}" if "failed" in r else ""))
        return {"service": self.service.name, "schema": self.service.schema,
                "outbox_published": self.relay.published if self.relay else 0, **r}

    async def _digest(self, con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        """The digest of this service's schema, or of one of its replays (`<schema>_...`), never another's."""
        own = self.service.schema
        schema = str(req.get("schema") or own)
        if schema != own and not schema.startswith(own + "_"):
            raise ValueError(f"{self.service.name} digests its schema {own!r} and its replays ({own}_...), "
                             f"not {schema!r}")
        return {"service": self.service.name, **await state_digest(con, schema, self.service.digest)}

    # -- queries --------------------------------------------------------------------------------

    def _answer(self, handler: QueryHandler, needs_db: bool = True) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            assert self.pool is not None
            try:
                req = json.loads(msg.data) if msg.data else {}
                if needs_db:
                    async with self.pool.acquire() as con:
                        body: Any = {"ok": True, "result": await handler(con, req)}
                else:
                    body = {"ok": True, "result": await handler(None, req)}  # type: ignore[arg-type]
            except NotReady as e:
                body = {"ok": False, "error": f"NotReady: {e}"}
            except Exception as e:
                if is_outage(e):  # the readiness already says so; one line, not a traceback per query
                    log.warning("query %s failed: %s: %s", msg.subject, type(e).__name__, e)
                else:
                    log.exception("query %s failed", msg.subject)
                body = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            await msg.respond(json.dumps(to_jsonable_python(body)).encode())

        return cb


def run_service(build: Callable[[], Service], settings: Any) -> None:
    """Entry point of `python -m services.<name>`."""
    service = build()
    telemetry.setup(service.name)
    rt = Runtime(service, settings.nats_url, settings.database_url, settings.batch_size, settings.stream_replicas,
                 max_outage_s=getattr(settings, "max_outage_s", 120.0))
    asyncio.run(rt.run_until_signalled())
    if rt.failed:
        sys.exit(1)  # for the supervisor (systemd, Kubernetes, smctl) to start it again
