"""SQL for the matching schema only: offers, pending jobs, reservations."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from libs.common.digest import StateTable
from libs.common.events.agent import AvailabilityWindow, OfferPublished
from libs.common.manifest import JobRequest
from services.matching.book import Booking, OrderBook
from services.matching.domain import Offer, Slot, region_matches, to_us


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
        "published_at = EXCLUDED.published_at WHERE offers.published_at <= EXCLUDED.published_at",
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
        f"calendar::text AS calendar FROM offers ORDER BY offer_id{' FOR UPDATE' if lock else ''}")
    book = OrderBook(_offer(r) for r in rows)
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
    """A job in the book by its tenant and name: its request, its status and its reservation, if any."""
    row = await con.fetchrow(
        "SELECT p.job_id, p.status, p.accepted_at, p.request::text AS request, r.offer_id, r.start_at, r.end_at, "
        "r.released_at FROM pending_jobs p LEFT JOIN reservations r USING (job_id) "
        "WHERE p.tenant = $1 AND p.name = $2 ORDER BY p.accepted_at DESC LIMIT 1", tenant, name)
    if row is None:
        return None
    return dict(row) | {"request": JobRequest.model_validate_json(row["request"])}


async def insert_pending(tx: asyncpg.Connection, job_id: UUID, req: JobRequest, at: datetime) -> bool:
    row = await tx.fetchrow(
        "INSERT INTO pending_jobs (job_id, tenant, name, request, accepted_at, not_after, status) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, 'waiting') ON CONFLICT DO NOTHING RETURNING job_id",
        job_id, req.tenant, req.name, req.model_dump_json(), at, req.not_after)
    return row is not None


async def waiting_jobs(tx: asyncpg.Connection) -> list[tuple[UUID, JobRequest]]:
    rows = await tx.fetch("SELECT job_id, request::text AS request FROM pending_jobs WHERE status = 'waiting' "
                          "ORDER BY accepted_at, job_id FOR UPDATE")
    return [(r["job_id"], JobRequest.model_validate_json(r["request"])) for r in rows]


async def lock_statuses(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, str]:
    rows = await tx.fetch("SELECT job_id, status FROM pending_jobs WHERE job_id = ANY($1::uuid[]) ORDER BY job_id "
                          "FOR UPDATE", job_ids)
    return {r["job_id"]: r["status"] for r in rows}


async def set_status(tx: asyncpg.Connection, job_id: UUID, status: str) -> None:
    await tx.execute("UPDATE pending_jobs SET status = $2 WHERE job_id = $1", job_id, status)


async def reserve(tx: asyncpg.Connection, job_id: UUID, offer_id: UUID, req: JobRequest,
                  start_at: datetime, end_at: datetime) -> None:
    await tx.execute(
        "INSERT INTO reservations (job_id, offer_id, vcpu, memory_gib, gpu, start_at, end_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        job_id, offer_id, req.resources.vcpu, req.resources.memory_gib, req.resources.gpu, start_at, end_at)


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
        "WHERE ($1::text IS NULL OR o.vendor = $1) "
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
        "GROUP BY o.vendor ORDER BY o.vendor")
    return [dict(r) for r in rows]


# the digest (libs.common.digest) covers every table and column of the schema but the ones named here
# (processing-order artefacts only): a replay must rebuild everything else exactly
DIGEST: dict[str, StateTable] = {}
