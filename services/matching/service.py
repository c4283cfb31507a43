"""Matching use cases. The order book is decided serially (the service runs with `serialize=True`)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.agent import OfferPublished
from libs.common.events.intake import JobAccepted
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable
from libs.common.events.placement import WorkloadFailed, WorkloadFinished
from libs.common.events.settlement import InsufficientFunds
from libs.common.ids import offer_id
from libs.common.manifest import JobRequest
from libs.common.subjects import vendor_party
from services.matching import domain, store
from services.matching.domain import Offer

SOURCE = "matching"


async def accept_jobs(tx: asyncpg.Connection, events: list[Envelope[JobAccepted]]) -> list[Envelope[Any]]:
    """Try each newly accepted job against the book at once; say why when nothing fits (it then waits)."""
    offers = await store.load_offers(tx)
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        if not await store.insert_pending(tx, p.job_id, p.request, ev.time):
            continue  # the same job accepted twice: already in the book
        matched = await _try_match(tx, ev, p.job_id, p.request, offers, ev.time)
        if matched is not None:
            out.append(matched)
            continue
        _, reasons = domain.best_match(p.request, list(offers.values()), ev.time)
        out.append(derive(ev, JobUnmatchable(job_id=p.job_id, tenant=p.request.tenant, name=p.request.name,
                                             offers_considered=len(offers), reasons=reasons), source=SOURCE))
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


async def release_capacity(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """A workload ended, or its job was refused for want of funds: the reservation returns to the offer
    and waiting jobs retry."""
    ended = [ev for ev in events if isinstance(ev.payload, (WorkloadFinished, WorkloadFailed, InsufficientFunds))]
    for ev in ended:
        if isinstance(ev.payload, InsufficientFunds):
            await store.set_status(tx, ev.payload.job_id, "refused")
    if not ended or not await store.release(tx, [ev.payload.job_id for ev in ended], ended[-1].time):
        return []
    return await _retry_waiting(tx, ended[-1])


async def _retry_waiting(tx: asyncpg.Connection, cause: Envelope[Any]) -> list[Envelope[Any]]:
    """Match waiting jobs in arrival order; expire those whose deadline can no longer be met."""
    waiting = await store.waiting_jobs(tx)
    if not waiting:
        return []
    offers = await store.load_offers(tx)
    now = cause.time
    out: list[Envelope[Any]] = []
    for job_id, req in waiting:
        if req.not_after - timedelta(seconds=req.expected_duration_s) < now:
            await store.set_status(tx, job_id, "expired")
            out.append(derive(cause, JobExpired(job_id=job_id, tenant=req.tenant, name=req.name,
                                                reason="the deadline passed while the job waited for capacity"),
                              source=SOURCE, party=req.party, correlation_id=job_id, n=str(job_id)))
            continue
        matched = await _try_match(tx, cause, job_id, req, offers, now)
        if matched is not None:
            out.append(matched)
    return out


async def _try_match(tx: asyncpg.Connection, cause: Envelope[Any], job_id: UUID, req: JobRequest,
                     offers: dict[UUID, Offer], now: datetime) -> Envelope[Any] | None:
    """Book the best offer for the job, keeping the in-memory book in step with the reservation."""
    match, _ = domain.best_match(req, list(offers.values()), now, by_price=True)
    if match is None:
        return None
    o = match.offer
    await store.reserve(tx, job_id, o.offer_id, req, match.start_at, match.end_at)
    await store.set_status(tx, job_id, "matched")
    offers[o.offer_id] = dataclasses.replace(
        o, free_vcpu=o.free_vcpu - req.resources.vcpu, free_memory_gib=o.free_memory_gib - req.resources.memory_gib,
        free_gpu=o.free_gpu - req.resources.gpu)
    return derive(cause, JobMatched(
        job_id=job_id, request=req, offer_id=o.offer_id, vendor=o.vendor, node=o.node, region=o.region,
        price_micro_eur_per_dtu_hour=o.price_micro_eur_per_dtu_hour,
        price_micro_eur_per_gpu_hour=o.price_micro_eur_per_gpu_hour if req.resources.gpu else None,
        dtu_rate=req.resources.dtu_rate,
        start_at=match.start_at, end_at=match.end_at), source=SOURCE, party=req.party, correlation_id=job_id,
        n=str(job_id), time=now)
