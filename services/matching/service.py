"""Matching use cases. The order book is decided serially (the service runs with `serialize=True`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.agent import OfferPublished, OfferWithdrawn
from libs.common.events.intake import JobAccepted, JobCancelled
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable, OfferLost
from libs.common.events.placement import PlacementFailed, WorkloadCancelled, WorkloadFailed, WorkloadFinished
from libs.common.events.settlement import InsufficientFunds
from libs.common.ids import offer_id
from libs.common.manifest import JobRequest
from libs.common.subjects import vendor_party
from services.matching import domain, store
from services.matching.book import OrderBook
from services.matching.clearing import clear
from services.matching.domain import Match, to_us
from services.matching.policy import ALL, FairShare, Policy, market_of, round_of

SOURCE = "matching"


class JobNotInBook(Exception):
    """A cancellation overtook its job's acceptance (they come on different consumers): transient, retried
    after a delay, by when the job is in the book."""


async def consume(tx: asyncpg.Connection, events: list[Envelope[Any]], *, ttl_s: float = 300.0,
                  rules: Policy = ALL) -> list[Envelope[Any]]:
    """Everything matching hears, in its stream's order: the batch is cut where the kind of fact changes,
    and each run goes to its use case in turn."""
    out: list[Envelope[Any]] = []
    for run in _runs(events, _KIND):
        kind = _KIND.get(type(run[0].payload))
        if kind is None:
            raise PermanentError(f"matching does not handle {run[0].type} events")
        if kind == "offer":
            out += await change_offers(tx, run, ttl_s=ttl_s, rules=rules)
        elif kind == "accepted":
            out += await accept_jobs(tx, run, rules=rules)
        elif kind == "cancelled":
            out += await cancel_jobs(tx, run)
        elif kind == "unplaced":
            out += await rebook_jobs(tx, run, rules=rules)
        else:
            out += await release_capacity(tx, run, rules=rules)
    return out


_KIND: dict[type, str] = {
    OfferPublished: "offer", OfferWithdrawn: "offer", JobAccepted: "accepted", JobCancelled: "cancelled",
    PlacementFailed: "unplaced", WorkloadFinished: "released", WorkloadFailed: "released",
    WorkloadCancelled: "released", InsufficientFunds: "released",
}


async def accept_jobs(tx: asyncpg.Connection, events: list[Envelope[JobAccepted]], *,
                      rules: Policy = ALL) -> list[Envelope[Any]]:
    """Try each newly accepted job against the book at once; say why when nothing fits (it then waits).
    A job of a periodic market waits for its round; one of a market another instance owns is only noted
    (`policy`)."""
    if not events:
        return []
    book = await store.load_book(tx, events[0].time)
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        if not rules.owns_job(p.request):
            await store.insert_pending(tx, p.job_id, p.request, ev.time, "elsewhere")
            continue
        if not await store.insert_pending(tx, p.job_id, p.request, ev.time):
            continue  # the same job accepted twice: already in the book
        if rules.interval(p.request):
            continue  # it waits for its market's next clearing round
        matched = await _try_match(tx, ev, p.job_id, p.request, book, ev.time)
        if matched is not None:
            out.append(matched)
            continue
        reasons = book.explain(p.request, ev.time)
        out.append(derive(ev, JobUnmatchable(job_id=p.job_id, tenant=p.request.tenant, name=p.request.name,
                                             offers_considered=len(book), reasons=reasons), source=SOURCE))
    if rules.periodic:  # arrivals are the market's clock too: clear the rounds that are due
        out += await _retry_waiting(tx, events[-1], rules, continuous=False)
    return out


async def change_offers(tx: asyncpg.Connection, events: list[Envelope[OfferPublished | OfferWithdrawn]], *,
                        ttl_s: float = 300.0, rules: Policy = ALL) -> list[Envelope[Any]]:
    """Vendors' offers, in the order they came: (re-)publications take an offer into the book, withdrawals
    take it out (OfferLost, cause "withdrawn"); offers whose heartbeats stopped leave too (OfferLost, cause
    "silent"). Then the waiting jobs try the book again."""
    for ev in events:
        p = ev.payload
        if ev.party != vendor_party(p.vendor) or p.offer_id != offer_id(p.vendor, p.node):
            raise PermanentError(f"offer {p.offer_id} of {p.vendor}/{p.node} {_verb(p)} by {ev.party}: "
                                 "a vendor publishes and withdraws only its own offers, under their own ids")
    out: list[Envelope[Any]] = []
    published: list[Envelope[OfferPublished]] = []
    for run in _runs(events):
        if isinstance(run[0].payload, OfferWithdrawn):
            out += await _withdraw(tx, run)
            continue
        run = [ev for ev in run if rules.owns_offer(ev.payload.region, ev.payload.country)]
        if run:  # (others are offers of markets other instances own)
            out += await _lose_silent_offers(tx, run, timedelta(seconds=ttl_s))
            published += run
    return out + (await _retry_waiting(tx, published[-1], rules) if published else [])


def _verb(p: OfferPublished | OfferWithdrawn) -> str:
    return "withdrawn" if isinstance(p, OfferWithdrawn) else "published"


def _runs(events: list[Envelope[Any]], kind: Mapping[type, str] | None = None) -> list[list[Envelope[Any]]]:
    """The batch cut where the kind of event (its class, or `kind` of it) changes: each run is applied
    whole, the runs in stream order."""
    def of(ev: Envelope[Any]) -> object:
        return kind.get(type(ev.payload)) if kind else type(ev.payload)

    runs: list[list[Envelope[Any]]] = []
    for ev in events:
        if runs and of(runs[-1][-1]) == of(ev):
            runs[-1].append(ev)
        else:
            runs.append([ev])
    return runs


async def _withdraw(tx: asyncpg.Connection, events: list[Envelope[OfferWithdrawn]]) -> list[Envelope[Any]]:
    """Offers their vendors withdrew leave the book at the withdrawal; placement gives up the workloads booked
    on them that have not started, and matching books those jobs again (as after a lost node). A withdrawal
    of an offer not in this book (never published, already out, or of a market another instance owns) or
    older than the offer's last publication changes nothing."""
    first: dict[UUID, Envelope[OfferWithdrawn]] = {}
    for ev in events:
        first.setdefault(ev.payload.offer_id, ev)
    gone = await store.withdraw(tx, [(oid, ev.time) for oid, ev in first.items()])
    return [derive(ev, OfferLost(offer_id=oid, vendor=ev.payload.vendor, node=ev.payload.node,
                                 last_published_at=gone[oid], lost_at=ev.time, cause="withdrawn",
                                 reason=ev.payload.reason),
                   source=SOURCE, party=vendor_party(ev.payload.vendor), correlation_id=oid,
                   n=f"{oid}/withdrawn/{ev.time.isoformat()}")
            for oid, ev in first.items() if oid in gone]


async def _lose_silent_offers(tx: asyncpg.Connection, events: list[Envelope[OfferPublished]],
                              ttl: timedelta) -> list[Envelope[Any]]:
    """The heartbeats, in stream order, are the clock (`domain.lost_offers`): an offer silent for longer
    than the TTL leaves the book. Its workloads that have not started are placement's to fail; matching
    books their jobs again when it hears so (PlacementFailed)."""
    candidates = await store.live_offers_published_before(tx, max(ev.time for ev in events) - ttl)
    losses, live = domain.lost_offers({oid: r["published_at"] for oid, r in candidates.items()},
                                      [(ev.payload.offer_id, ev.time) for ev in events], ttl)
    await store.upsert_offers(tx, [(ev.payload, ev.time) for ev in events])
    last_loss = dict(losses)  # an offer lost, published again and lost again in one batch: the last loss holds
    await store.mark_lost(tx, [(oid, at + ttl) for oid, at in last_loss.items() if oid not in live])
    # a loss is noticed by the first heartbeat after it: that event causes it (a replay picks the same one)
    noticed = {(oid, at): next(ev for ev in events if ev.time > at + ttl) for oid, at in losses}
    names = {oid: (r["vendor"], r["node"]) for oid, r in candidates.items()}
    names.update({ev.payload.offer_id: (ev.payload.vendor, ev.payload.node) for ev in events})
    return [derive(cause, OfferLost(offer_id=oid, vendor=names[oid][0], node=names[oid][1], last_published_at=at,
                                    lost_at=at + ttl),
                   source=SOURCE, party=vendor_party(names[oid][0]), correlation_id=oid, n=f"{oid}/{at.isoformat()}")
            for (oid, at), cause in noticed.items()]


async def rebook_jobs(tx: asyncpg.Connection, events: list[Envelope[PlacementFailed]], *,
                      rules: Policy = ALL) -> list[Envelope[Any]]:
    """A booked workload never started (its vendor gave it up, or its node was lost): the reservation
    returns, and the job is booked again at once on another node (attempt + 1), or waits for one until
    its deadline (JobExpired). A job cancelled meanwhile is not booked again."""
    states = await store.lock_attempts(tx, sorted({ev.payload.job_id for ev in events}))
    freed = []
    for ev in events:
        p = ev.payload
        status, attempt = states.get(p.job_id, (None, 0))
        if status is None:
            raise PermanentError(f"placement failed for job {p.job_id}, which matching never booked")
        new = domain.status_on_placement_failed(status, attempt, p.attempt)
        if new is None:
            continue
        states[p.job_id] = (new, attempt + 1)
        await store.rebook(tx, p.job_id, p.offer_id)
        freed.append(ev)
    if not freed:
        return []
    await store.record_outcomes(tx, [(ev.payload.vendor, False) for ev in freed])  # never started: a failure
    await store.release(tx, [(ev.payload.job_id, ev.time) for ev in freed])
    return await _retry_waiting(tx, freed[-1], rules)


async def cancel_jobs(tx: asyncpg.Connection, events: list[Envelope[JobCancelled]]) -> list[Envelope[Any]]:
    """A cancelled job that still waits leaves the book; a matched one keeps its reservation until
    placement says its workload was cancelled (WorkloadCancelled) or ended."""
    statuses = await store.lock_statuses(tx, [ev.payload.job_id for ev in events])
    for ev in events:
        jid = ev.payload.job_id
        if jid not in statuses:
            raise JobNotInBook(f"job {jid} was cancelled before matching saw it accepted")
        new = domain.status_on_cancel(statuses[jid])
        if new is not None:
            statuses[jid] = new
            await store.set_status(tx, jid, new)
    return []


async def release_capacity(tx: asyncpg.Connection, events: list[Envelope[Any]], *,
                           rules: Policy = ALL) -> list[Envelope[Any]]:
    """A workload ended or was cancelled before it ran, or its job was refused for want of funds: the
    reservation returns to the offer and waiting jobs retry. A workload that ended counts in its vendor's
    record (domain.reliability): finished, or failed by its own exit code, is completed; failed without an
    exit code (lost or killed on the vendor's side) is a failure."""
    ended = [ev for ev in events
             if isinstance(ev.payload, (WorkloadFinished, WorkloadFailed, WorkloadCancelled, InsufficientFunds))]
    for ev in ended:
        if isinstance(ev.payload, InsufficientFunds):
            await store.set_status(tx, ev.payload.job_id, "refused")
        elif isinstance(ev.payload, WorkloadCancelled):
            await store.set_status(tx, ev.payload.job_id, "cancelled")
    await store.record_outcomes(tx, [(ev.payload.vendor, isinstance(ev.payload, WorkloadFinished)
                                      or ev.payload.exit_code is not None)
                                     for ev in ended if isinstance(ev.payload, (WorkloadFinished, WorkloadFailed))])
    if not ended or not await store.release(tx, [(ev.payload.job_id, ev.time) for ev in ended]):
        return []
    return await _retry_waiting(tx, ended[-1], rules)


async def explain_job(con: asyncpg.Connection, req: dict[str, Any]) -> dict[str, Any] | None:
    """Why a job has the run it has, or none: every offer checked against it, per constraint how many it
    excluded and the nearest miss, how many fit, and the best run at `at` (default now). A matched job's own
    reservation is left out of the book, so that its offer shows as the fit it was."""
    job = await store.job_of(con, req["tenant"], req["name"])
    if job is None:
        return None
    at = datetime.fromisoformat(req["at"]) if req.get("at") else datetime.now(timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    book = await store.load_book(con, at, lock=False)
    book.release(job["job_id"])
    request: JobRequest = job["request"]
    counts, reasons, best = book.analyse(request, at)
    held = job["offer_id"] is not None and job["released_at"] is None
    return {
        "tenant": request.tenant, "name": request.name, "job_id": str(job["job_id"]), "status": job["status"],
        "at": at.isoformat(), "offers": len(book), "fit": counts["fit"],
        "constraints": [r.model_dump() for r in reasons],
        "booked": None if not held else {
            "vendor": job["vendor"], "node": job["node"],
            "left_book_at": job["lost_at"].isoformat() if job["lost_at"] else None,
            "offer_id": str(job["offer_id"]), "start_at": job["start_at"].isoformat(),
            "end_at": job["end_at"].isoformat()},
        "best_now": None if best is None else {
            "vendor": best.offer.vendor, "node": best.offer.node, "region": best.offer.region,
            "start_at": best.start_at.isoformat(), "end_at": best.end_at.isoformat(),
            "price_micro_eur_per_dtu_hour": best.price_micro_eur_per_dtu_hour,
            "price_micro_eur_per_gpu_hour": best.price_micro_eur_per_gpu_hour if request.resources.gpu else None},
    }


async def _retry_waiting(tx: asyncpg.Connection, cause: Envelope[Any], rules: Policy = ALL,
                         continuous: bool = True) -> list[Envelope[Any]]:
    """Match waiting jobs in fair-share order (policy.FairShare) and clear the periodic markets' rounds that
    are due (`continuous=False`: only those); expire jobs whose deadline can no longer be met."""
    waiting = await store.waiting_jobs(tx)
    if not waiting:
        return []
    now = cause.time
    retries = await store.retries(tx)  # jobs whose earlier booking never started: not on those nodes again
    since = await store.accepted_times(tx, [j for j, r in waiting if rules.interval(r)]) if rules.periodic else {}
    out: list[Envelope[Any]] = []
    queue: list[tuple[UUID, JobRequest]] = []
    rounds: dict[str, list[tuple[UUID, JobRequest]]] = {}
    for job_id, req in waiting:
        if req.not_after - timedelta(seconds=req.expected_duration_s) < now:
            await store.set_status(tx, job_id, "expired")
            out.append(derive(cause, JobExpired(job_id=job_id, tenant=req.tenant, name=req.name,
                                                reason="the deadline passed while the job waited for capacity"),
                              source=SOURCE, party=req.party, correlation_id=job_id, n=str(job_id)))
            continue
        interval = None if job_id in retries else rules.interval(req)  # a job booked again: at once
        if interval is None:
            if continuous:
                queue.append((job_id, req))
        elif round_of(to_us(since[job_id]), interval) < round_of(to_us(now), interval):
            rounds.setdefault(market_of(req) or "", []).append((job_id, req))
    if not queue and not rounds:
        return out
    book = await store.load_book(tx, now)
    if queue:
        usage = await store.tenant_usage(tx, sorted({r.tenant for _, r in queue}), now, rules.usage_half_life_s)
        fair = FairShare(queue, usage)
        for job_id, req in fair:
            matched = await _try_match(tx, cause, job_id, req, book, now, *retries.get(job_id, (1, frozenset())))
            if matched is not None:
                fair.charge(req)
                out.append(matched)
    for market in sorted(rounds):  # a call auction per market: its due jobs assigned together
        book.advance(now)
        cleared = clear(book, rounds[market], now)  # books the runs it gives into `book`
        for job_id, req in rounds[market]:
            if job_id in cleared.matches:
                out.append(await _record_match(tx, cause, job_id, req, cleared.matches[job_id], now))
            elif _first_round(since[job_id], now, rules.interval(req)):  # said once: why its round left it out
                out.append(derive(cause, JobUnmatchable(
                    job_id=job_id, tenant=req.tenant, name=req.name, offers_considered=len(book),
                    reasons=book.explain(req, now)), source=SOURCE, party=req.party, correlation_id=job_id,
                    n=f"{job_id}/unfilled"))
    return out


def _first_round(accepted: datetime, now: datetime, interval: int | None) -> bool:
    """Whether `now` falls in the round right after the one the job arrived in: the round that first tried it."""
    return interval is not None and round_of(to_us(accepted), interval) + 1 == round_of(to_us(now), interval)


async def _try_match(tx: asyncpg.Connection, cause: Envelope[Any], job_id: UUID, req: JobRequest,
                     book: OrderBook, now: datetime, attempt: int = 1,
                     exclude: frozenset[UUID] = frozenset()) -> Envelope[Any] | None:
    """Book the best run for the job (on none of the `exclude`d offers: nodes where an earlier attempt
    never started), keeping the in-memory book in step with the reservation."""
    book.advance(now)
    if exclude:  # the best runs each on another offer: one of the first len(exclude) + 1 is allowed
        match = next((m for m in book.top(req, now, len(exclude) + 1) if m.offer.offer_id not in exclude), None)
    else:
        match = book.best(req, now)
    if match is None:
        return None
    book.book(job_id, match.offer.offer_id, match.start_at, match.end_at, req)
    return await _record_match(tx, cause, job_id, req, match, now, attempt)


async def _record_match(tx: asyncpg.Connection, cause: Envelope[Any], job_id: UUID, req: JobRequest,
                        match: Match, now: datetime, attempt: int = 1) -> Envelope[Any]:
    """Reserve a run the book has booked, and say so (JobMatched)."""
    o = match.offer
    await store.reserve(tx, job_id, o.offer_id, req, match.start_at, match.end_at, attempt)
    await store.set_status(tx, job_id, "matched")
    return derive(cause, JobMatched(
        job_id=job_id, request=req, offer_id=o.offer_id, vendor=o.vendor, node=o.node, region=o.region,
        price_micro_eur_per_dtu_hour=match.price_micro_eur_per_dtu_hour,
        price_micro_eur_per_gpu_hour=match.price_micro_eur_per_gpu_hour if req.resources.gpu else None,
        dtu_rate=req.resources.dtu_rate,
        start_at=match.start_at, end_at=match.end_at, attempt=attempt), source=SOURCE, party=req.party,
        correlation_id=job_id, n=str(job_id) if attempt == 1 else f"{job_id}/{attempt}", time=now)
