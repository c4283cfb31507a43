"""Matching use cases. The order book is decided serially (the service runs with `serialize=True`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.agent import OfferPublished
from libs.common.events.intake import JobAccepted, JobCancelled
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable
from libs.common.events.placement import WorkloadCancelled, WorkloadFailed, WorkloadFinished
from libs.common.events.settlement import InsufficientFunds
from libs.common.ids import offer_id
from libs.common.manifest import JobRequest
from libs.common.subjects import vendor_party
from services.matching import domain, store
from services.matching.book import OrderBook

SOURCE = "matching"


class JobNotInBook(Exception):
    """A cancellation overtook its job's acceptance (they come on different consumers): transient, retried
    after a delay, by when the job is in the book."""


async def accept_jobs(tx: asyncpg.Connection, events: list[Envelope[JobAccepted]]) -> list[Envelope[Any]]:
    """Try each newly accepted job against the book at once; say why when nothing fits (it then waits)."""
    if not events:
        return []
    book = await store.load_book(tx, events[0].time)
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        if not await store.insert_pending(tx, p.job_id, p.request, ev.time):
            continue  # the same job accepted twice: already in the book
        matched = await _try_match(tx, ev, p.job_id, p.request, book, ev.time)
        if matched is not None:
            out.append(matched)
            continue
        reasons = book.explain(p.request, ev.time)
        out.append(derive(ev, JobUnmatchable(job_id=p.job_id, tenant=p.request.tenant, name=p.request.name,
                                             offers_considered=len(book), reasons=reasons), source=SOURCE))
    return out


async def publish_offers(tx: asyncpg.Connection, events: list[Envelope[OfferPublished]]) -> list[Envelope[Any]]:
    """Take vendors' (re-)published offers into the book, then retry the waiting jobs against it."""
    for ev in events:
        p = ev.payload
        if ev.party != vendor_party(p.vendor) or p.offer_id != offer_id(p.vendor, p.node):
            raise PermanentError(f"offer {p.offer_id} of {p.vendor}/{p.node} published by {ev.party}: "
                                 "a vendor publishes only its own offers, under their own ids")
    await store.upsert_offers(tx, [(ev.payload, ev.time) for ev in events])
    return await _retry_waiting(tx, events[-1])


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


async def release_capacity(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """A workload ended or was cancelled before it ran, or its job was refused for want of funds: the
    reservation returns to the offer and waiting jobs retry."""
    ended = [ev for ev in events
             if isinstance(ev.payload, (WorkloadFinished, WorkloadFailed, WorkloadCancelled, InsufficientFunds))]
    for ev in ended:
        if isinstance(ev.payload, InsufficientFunds):
            await store.set_status(tx, ev.payload.job_id, "refused")
        elif isinstance(ev.payload, WorkloadCancelled):
            await store.set_status(tx, ev.payload.job_id, "cancelled")
    if not ended or not await store.release(tx, [(ev.payload.job_id, ev.time) for ev in ended]):
        return []
    return await _retry_waiting(tx, ended[-1])


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
    booked = book.offer(job["offer_id"]) if held else None
    return {
        "tenant": request.tenant, "name": request.name, "job_id": str(job["job_id"]), "status": job["status"],
        "at": at.isoformat(), "offers": len(book), "fit": counts["fit"],
        "constraints": [r.model_dump() for r in reasons],
        "booked": None if not held else {
            "vendor": booked.vendor if booked else None, "node": booked.node if booked else None,
            "offer_id": str(job["offer_id"]), "start_at": job["start_at"].isoformat(),
            "end_at": job["end_at"].isoformat()},
        "best_now": None if best is None else {
            "vendor": best.offer.vendor, "node": best.offer.node, "region": best.offer.region,
            "start_at": best.start_at.isoformat(), "end_at": best.end_at.isoformat(),
            "price_micro_eur_per_dtu_hour": best.price_micro_eur_per_dtu_hour,
            "price_micro_eur_per_gpu_hour": best.price_micro_eur_per_gpu_hour if request.resources.gpu else None},
    }


async def _retry_waiting(tx: asyncpg.Connection, cause: Envelope[Any]) -> list[Envelope[Any]]:
    """Match waiting jobs in arrival order; expire those whose deadline can no longer be met."""
    waiting = await store.waiting_jobs(tx)
    if not waiting:
        return []
    now = cause.time
    book = await store.load_book(tx, now)
    out: list[Envelope[Any]] = []
    for job_id, req in waiting:
        if req.not_after - timedelta(seconds=req.expected_duration_s) < now:
            await store.set_status(tx, job_id, "expired")
            out.append(derive(cause, JobExpired(job_id=job_id, tenant=req.tenant, name=req.name,
                                                reason="the deadline passed while the job waited for capacity"),
                              source=SOURCE, party=req.party, correlation_id=job_id, n=str(job_id)))
            continue
        matched = await _try_match(tx, cause, job_id, req, book, now)
        if matched is not None:
            out.append(matched)
    return out


async def _try_match(tx: asyncpg.Connection, cause: Envelope[Any], job_id: UUID, req: JobRequest,
                     book: OrderBook, now: datetime) -> Envelope[Any] | None:
    """Book the best run for the job, keeping the in-memory book in step with the reservation."""
    book.advance(now)
    match = book.best(req, now)
    if match is None:
        return None
    o = match.offer
    await store.reserve(tx, job_id, o.offer_id, req, match.start_at, match.end_at)
    await store.set_status(tx, job_id, "matched")
    book.book(job_id, o.offer_id, match.start_at, match.end_at, req)
    return derive(cause, JobMatched(
        job_id=job_id, request=req, offer_id=o.offer_id, vendor=o.vendor, node=o.node, region=o.region,
        price_micro_eur_per_dtu_hour=match.price_micro_eur_per_dtu_hour,
        price_micro_eur_per_gpu_hour=match.price_micro_eur_per_gpu_hour if req.resources.gpu else None,
        dtu_rate=req.resources.dtu_rate,
        start_at=match.start_at, end_at=match.end_at), source=SOURCE, party=req.party, correlation_id=job_id,
        n=str(job_id), time=now)
