"""SQL for the matching schema only: offers, pending jobs, reservations, vendors' records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from libs.common.digest import StateTable
from libs.common.events.agent import AvailabilityWindow, OfferPublished
from libs.common.manifest import JobRequest
from services.matching.book import Booking, OrderBook
from services.matching.domain import Offer, Slot, region_matches, reliability, to_us


async def upsert_offers(tx: asyncpg.Connection, offers: list[tuple[OfferPublished, datetime]]) -> None:
    """A re-published offer replaces the previous one (capacity, price, window, calendar); reservations stay."""
    await tx.executemany(
        "INSERT INTO offers (offer_id, vendor, node, region, country, eu, vcpu, memory_gib, gpu_count, gpu_model, "
        "arch, price_micro_eur_per_dtu_hour, available_from, available_until, illustrative, published_at, "
        "price_micro_eur_per_gpu_hour, calendar, attributes) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18::jsonb,$19) "
        "ON CONFLICT (offer_id) DO UPDATE SET vcpu = EXCLUDED.vcpu, memory_gib = EXCLUDED.memory_gib, "
        "gpu_count = EXCLUDED.gpu_count, gpu_model = EXCLUDED.gpu_model, "
        "price_micro_eur_per_dtu_hour = EXCLUDED.price_micro_eur_per_dtu_hour, "
        "price_micro_eur_per_gpu_hour = EXCLUDED.price_micro_eur_per_gpu_hour, "
        "available_from = EXCLUDED.available_from, available_until = EXCLUDED.available_until, "
        "calendar = EXCLUDED.calendar, attributes = EXCLUDED.attributes, "
        "published_at = EXCLUDED.published_at, "
        # back in the book unless it left after this publication (a withdrawal that came later stands)
        "lost_at = CASE WHEN offers.lost_at <= EXCLUDED.published_at THEN NULL ELSE offers.lost_at END "
        "WHERE offers.published_at <= EXCLUDED.published_at",
        [(o.offer_id, o.vendor, o.node, o.region, o.country, o.eu, o.vcpu, o.memory_gib, o.gpu_count, o.gpu_model,
          o.arch, o.price_micro_eur_per_dtu_hour, o.available_from, o.available_until, o.illustrative, at,
          o.price_micro_eur_per_gpu_hour,
          None if o.calendar is None else json.dumps([w.model_dump(mode="json") for w in o.calendar]),
          sorted({a.strip().lower() for a in o.attributes}))
         for o, at in offers])


# the capacity held by active reservations, per offer
_RESERVED = ("LEFT JOIN (SELECT offer_id, sum(vcpu) AS vcpu, sum(memory_gib) AS mem, sum(gpu) AS gpu "
             "FROM reservations WHERE released_at IS NULL GROUP BY offer_id) r USING (offer_id)")


@dataclass(frozen=True)
class _Where:
    region: str
    country: str
    eu: bool


def _offer(r: asyncpg.Record) -> Offer:
    """The book's view of an offer row: the node's resources, and its calendar with every gap filled from the
    offer (a window's free capacity defaults to the whole node, its prices to the offer's)."""
    calendar: tuple[Slot, ...] = ()
    price, gpu_price = r["price_micro_eur_per_dtu_hour"], r["price_micro_eur_per_gpu_hour"]
    if r["calendar"] is not None:
        calendar = tuple(
            Slot(start=w.start, end=w.end, vcpu=w.vcpu if w.vcpu is not None else r["vcpu"],
                 memory_gib=w.memory_gib if w.memory_gib is not None else r["memory_gib"],
                 gpu=w.gpu_count if w.gpu_count is not None else r["gpu_count"],
                 price_micro_eur_per_dtu_hour=w.price_micro_eur_per_dtu_hour or price,
                 price_micro_eur_per_gpu_hour=w.price_micro_eur_per_gpu_hour or gpu_price)
            for w in _WINDOWS.validate_json(r["calendar"]))
        if calendar:  # what the offer shows as its price: its lowest hourly one
            price = min(s.price_micro_eur_per_dtu_hour for s in calendar)
            gpu_prices = [s.price_micro_eur_per_gpu_hour for s in calendar if s.price_micro_eur_per_gpu_hour]
            gpu_price = min(gpu_prices) if gpu_prices else gpu_price
    return Offer(
        offer_id=r["offer_id"], vendor=r["vendor"], node=r["node"], region=r["region"], country=r["country"],
        eu=r["eu"], free_vcpu=r["vcpu"], free_memory_gib=r["memory_gib"], free_gpu=r["gpu_count"],
        gpu_model=r["gpu_model"], price_micro_eur_per_dtu_hour=price, price_micro_eur_per_gpu_hour=gpu_price,
        available_from=r["available_from"], available_until=r["available_until"], calendar=calendar,
        attributes=frozenset(r["attributes"]))


_WINDOWS = TypeAdapter(list[AvailabilityWindow])


async def load_book(tx: asyncpg.Connection, now: datetime, lock: bool = True) -> OrderBook:
    """The order book: every offer, with the capacity its active reservations hold over time taken out
    (`lock`: the offers are locked for the deciding transaction; a query reads without)."""
    rows = await tx.fetch(
        "SELECT offer_id, vendor, node, region, country, eu, vcpu, memory_gib, gpu_count, gpu_model, "
        "price_micro_eur_per_dtu_hour, price_micro_eur_per_gpu_hour, available_from, available_until, attributes, "
        "calendar::text AS calendar FROM offers WHERE lost_at IS NULL "  # a lost offer is out of the book
        f"ORDER BY offer_id{' FOR UPDATE' if lock else ''}")
    records = await tx.fetch("SELECT vendor, completed, failed FROM vendor_records")
    book = OrderBook((_offer(r) for r in rows),
                     {r["vendor"]: reliability(r["completed"], r["failed"]) for r in records})
    held = await tx.fetch(
        "SELECT r.job_id, r.offer_id, r.vcpu, r.memory_gib, r.gpu, r.start_at, r.end_at, p.not_after "
        "FROM reservations r JOIN pending_jobs p USING (job_id) WHERE r.released_at IS NULL")
    for h in held:
        book.book_raw(Booking(h["job_id"], h["offer_id"], to_us(h["start_at"]), to_us(h["end_at"]),
                              math.ceil(h["vcpu"] * 10**6), math.ceil(h["memory_gib"] * 2**30), h["gpu"],
                              to_us(h["not_after"])))
    book.advance(now)
    return book


async def job_of(con: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any] | None:
    """A job in the book by its tenant and name: its request, its status and its reservation (with its node,
    and when that left the book), if any."""
    row = await con.fetchrow(
        "SELECT p.job_id, p.status, p.accepted_at, p.request::text AS request, r.offer_id, r.start_at, r.end_at, "
        "r.released_at, o.vendor, o.node, o.lost_at FROM pending_jobs p LEFT JOIN reservations r USING (job_id) "
        "LEFT JOIN offers o ON o.offer_id = r.offer_id "  # a lost or withdrawn offer still names its node
        "WHERE p.tenant = $1 AND p.name = $2 ORDER BY p.accepted_at DESC, r.attempt DESC LIMIT 1", tenant, name)
    if row is None:
        return None
    return dict(row) | {"request": JobRequest.model_validate_json(row["request"])}


async def insert_pending(tx: asyncpg.Connection, job_id: UUID, req: JobRequest, at: datetime,
                         status: str = "waiting") -> bool:
    row = await tx.fetchrow(
        "INSERT INTO pending_jobs (job_id, tenant, name, request, accepted_at, not_after, status) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING job_id",
        job_id, req.tenant, req.name, req.model_dump_json(), at, req.not_after, status)
    return row is not None


async def record_outcomes(tx: asyncpg.Connection, outcomes: list[tuple[str, bool]]) -> None:
    """Add to vendors' records: (vendor, completed) per placement that ended, True completed, False failed
    or lost (summed per vendor first: one row each, in a fixed order)."""
    tally: dict[str, list[int]] = {}
    for vendor, ok in outcomes:
        tally.setdefault(vendor, [0, 0])[0 if ok else 1] += 1
    await tx.executemany(
        "INSERT INTO vendor_records (vendor, completed, failed) VALUES ($1, $2, $3) ON CONFLICT (vendor) DO UPDATE "
        "SET completed = vendor_records.completed + EXCLUDED.completed, "
        "failed = vendor_records.failed + EXCLUDED.failed",
        [(v, c, f) for v, (c, f) in sorted(tally.items())])


async def tenant_usage(tx: asyncpg.Connection, tenants: list[str], now: datetime,
                       half_life_s: float) -> dict[str, Decimal]:
    """Each tenant's decayed usage at `now` (policy: fair share): the DTU- plus GPU-hours its reservations
    held, each in full until its start, then halved every half-life. Exact (numeric), so a replay orders
    the same; bookings that started more than 30 half-lives ago (under 10^-9 of their weight) are left out."""
    rows = await tx.fetch(
        "SELECT p.tenant, sum((greatest(r.vcpu, r.memory_gib / 4) + r.gpu) "
        "  * greatest(extract(epoch FROM least(r.end_at, coalesce(r.released_at, r.end_at)) - r.start_at), 0) / 3600 "
        "  * power(2::numeric, -greatest(extract(epoch FROM $2 - r.start_at), 0) / $3)) AS usage "
        "FROM reservations r JOIN pending_jobs p USING (job_id) "
        "WHERE p.tenant = ANY($1::text[]) AND r.start_at > $2 - make_interval(secs => ($3 * 30)::float8) "
        "GROUP BY p.tenant",
        tenants, now, Decimal(str(half_life_s)))
    return {r["tenant"]: r["usage"] for r in rows}


async def waiting_jobs(tx: asyncpg.Connection) -> list[tuple[UUID, JobRequest]]:
    rows = await tx.fetch("SELECT job_id, request::text AS request FROM pending_jobs WHERE status = 'waiting' "
                          "ORDER BY accepted_at, job_id FOR UPDATE")
    return [(r["job_id"], JobRequest.model_validate_json(r["request"])) for r in rows]


async def accepted_times(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, datetime]:
    rows = await tx.fetch("SELECT job_id, accepted_at FROM pending_jobs WHERE job_id = ANY($1::uuid[])", job_ids)
    return {r["job_id"]: r["accepted_at"] for r in rows}


async def lock_statuses(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, str]:
    rows = await tx.fetch("SELECT job_id, status FROM pending_jobs WHERE job_id = ANY($1::uuid[]) ORDER BY job_id "
                          "FOR UPDATE", job_ids)
    return {r["job_id"]: r["status"] for r in rows}


async def set_status(tx: asyncpg.Connection, job_id: UUID, status: str) -> None:
    await tx.execute("UPDATE pending_jobs SET status = $2 WHERE job_id = $1", job_id, status)


async def reserve(tx: asyncpg.Connection, job_id: UUID, offer_id: UUID, req: JobRequest,
                  start_at: datetime, end_at: datetime, attempt: int = 1) -> None:
    await tx.execute(
        "INSERT INTO reservations (job_id, offer_id, vcpu, memory_gib, gpu, start_at, end_at, attempt) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        job_id, offer_id, req.resources.vcpu, req.resources.memory_gib, req.resources.gpu, start_at, end_at, attempt)


async def retries(tx: asyncpg.Connection) -> dict[UUID, tuple[int, frozenset[UUID]]]:
    """Waiting jobs that were booked before and never started there: their next attempt and the offers
    (nodes) they must not be booked on again."""
    rows = await tx.fetch("SELECT job_id, attempt, excluded_offers FROM pending_jobs "
                          "WHERE status = 'waiting' AND attempt > 1")
    return {r["job_id"]: (r["attempt"], frozenset(r["excluded_offers"])) for r in rows}


async def lock_attempts(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, tuple[str, int]]:
    rows = await tx.fetch("SELECT job_id, status, attempt FROM pending_jobs WHERE job_id = ANY($1::uuid[]) "
                          "ORDER BY job_id FOR UPDATE", job_ids)
    return {r["job_id"]: (r["status"], r["attempt"]) for r in rows}


async def rebook(tx: asyncpg.Connection, job_id: UUID, failed_offer: UUID) -> None:
    """The job's current attempt never started: it waits for its next one, never on that offer again."""
    await tx.execute("UPDATE pending_jobs SET status = 'waiting', attempt = attempt + 1, "
                     "excluded_offers = array_append(excluded_offers, $2) WHERE job_id = $1", job_id, failed_offer)


async def live_offers_published_before(tx: asyncpg.Connection, before: datetime) -> dict[UUID, asyncpg.Record]:
    """Offers in the book not published since `before`: the ones a batch of heartbeats may find lost."""
    rows = await tx.fetch("SELECT offer_id, vendor, node, published_at FROM offers "
                          "WHERE lost_at IS NULL AND published_at < $1 ORDER BY offer_id FOR UPDATE", before)
    return {r["offer_id"]: r for r in rows}


async def mark_lost(tx: asyncpg.Connection, lost: list[tuple[UUID, datetime]]) -> None:
    """rows: (offer_id, lost_at): the offers leave the book (their reservations stay until placement says
    what became of their workloads)."""
    await tx.executemany("UPDATE offers SET lost_at = $2 WHERE offer_id = $1", lost)


async def withdraw(tx: asyncpg.Connection, rows: list[tuple[UUID, datetime]]) -> dict[UUID, datetime]:
    """rows: (offer_id, withdrawn at), one per offer: the offers in the book, last published at or before
    then, leave it. Returns those that left, with their last publication."""
    gone = await tx.fetch(
        "UPDATE offers o SET lost_at = v.at FROM unnest($1::uuid[], $2::timestamptz[]) AS v(offer_id, at) "
        "WHERE o.offer_id = v.offer_id AND o.lost_at IS NULL AND o.published_at <= v.at "
        "RETURNING o.offer_id, o.published_at", [r[0] for r in rows], [r[1] for r in rows])
    return {r["offer_id"]: r["published_at"] for r in gone}


async def release(tx: asyncpg.Connection, released: list[tuple[UUID, datetime]]) -> int:
    """Return jobs' reservations to their offers, each at the time of the event that released it (not the
    batch's last): a replay, whose batches differ from live's, records the same times. The first release
    of a job counts."""
    first: dict[UUID, datetime] = {}
    for job_id, at in released:
        first.setdefault(job_id, at)
    res = await tx.execute("UPDATE reservations r SET released_at = v.at FROM unnest($1::uuid[], $2::timestamptz[]) "
                           "AS v(job_id, at) WHERE r.job_id = v.job_id AND r.released_at IS NULL",
                           list(first), list(first.values()))
    return int(res.split()[-1])


async def list_offers(con: asyncpg.Connection, vendor: str | None, region: str | None) -> list[dict[str, Any]]:
    """The book as a trader reads it, cheapest first, with each offer's free capacity."""
    rows = await con.fetch(
        "SELECT o.offer_id, o.vendor, o.node, o.region, o.country, o.eu, o.vcpu, o.memory_gib, o.gpu_count, "
        "o.gpu_model, o.price_micro_eur_per_dtu_hour, o.price_micro_eur_per_gpu_hour, o.available_from, "
        "o.available_until, o.illustrative, o.vcpu - COALESCE(r.vcpu, 0) AS free_vcpu, "
        f"o.memory_gib - COALESCE(r.mem, 0) AS free_memory_gib FROM offers o {_RESERVED} "
        "WHERE ($1::text IS NULL OR o.vendor = $1) AND o.lost_at IS NULL "
        "ORDER BY o.price_micro_eur_per_dtu_hour, o.vendor, o.node", vendor)
    offers = [dict(r) for r in rows]
    if region is None:
        return offers
    return [o for o in offers if region_matches(region, _Where(o["region"], o["country"], o["eu"]))]


async def list_vendors(con: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await con.fetch(
        "SELECT o.vendor, min(o.region) AS region, min(o.country) AS country, bool_and(o.eu) AS eu, "
        "count(*) AS offers, min(o.price_micro_eur_per_dtu_hour) AS min_price_micro_eur_per_dtu_hour, "
        f"sum(o.vcpu) - COALESCE(sum(r.vcpu), 0) AS free_vcpu FROM offers o {_RESERVED} "
        "WHERE o.lost_at IS NULL GROUP BY o.vendor ORDER BY o.vendor")
    return [dict(r) for r in rows]


# the digest (libs.common.digest) covers every table and column of the schema but the ones named here
# (processing-order artefacts only): a replay must rebuild everything else exactly
DIGEST: dict[str, StateTable] = {}
