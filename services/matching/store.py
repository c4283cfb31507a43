"""SQL for the matching schema only: offers, pending jobs, reservations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.events.agent import OfferPublished
from libs.common.manifest import JobRequest
from services.matching.domain import Offer, region_matches


async def upsert_offers(tx: asyncpg.Connection, offers: list[tuple[OfferPublished, datetime]]) -> None:
    """A re-published offer replaces the previous one (capacity, price, window); reservations stay."""
    await tx.executemany(
        "INSERT INTO offers (offer_id, vendor, node, region, country, eu, vcpu, memory_gib, gpu_count, gpu_model, "
        "arch, price_micro_eur_per_dtu_hour, available_from, available_until, illustrative, published_at, "
        "price_micro_eur_per_gpu_hour) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) "
        "ON CONFLICT (offer_id) DO UPDATE SET vcpu = EXCLUDED.vcpu, memory_gib = EXCLUDED.memory_gib, "
        "gpu_count = EXCLUDED.gpu_count, gpu_model = EXCLUDED.gpu_model, "
        "price_micro_eur_per_dtu_hour = EXCLUDED.price_micro_eur_per_dtu_hour, "
        "price_micro_eur_per_gpu_hour = EXCLUDED.price_micro_eur_per_gpu_hour, "
        "available_from = EXCLUDED.available_from, available_until = EXCLUDED.available_until, "
        "published_at = EXCLUDED.published_at WHERE offers.published_at <= EXCLUDED.published_at",
        [(o.offer_id, o.vendor, o.node, o.region, o.country, o.eu, o.vcpu, o.memory_gib, o.gpu_count, o.gpu_model,
          o.arch, o.price_micro_eur_per_dtu_hour, o.available_from, o.available_until, o.illustrative, at,
          o.price_micro_eur_per_gpu_hour)
         for o, at in offers])


# the capacity held by active reservations, per offer
_RESERVED = ("LEFT JOIN (SELECT offer_id, sum(vcpu) AS vcpu, sum(memory_gib) AS mem, sum(gpu) AS gpu "
             "FROM reservations WHERE released_at IS NULL GROUP BY offer_id) r USING (offer_id)")


@dataclass(frozen=True)
class _Where:
    region: str
    country: str
    eu: bool


async def load_offers(tx: asyncpg.Connection) -> dict[UUID, Offer]:
    """Every offer with its free capacity (its resources less the active reservations on it)."""
    rows = await tx.fetch(
        "SELECT o.*, o.vcpu - COALESCE(r.vcpu, 0) AS free_vcpu, o.memory_gib - COALESCE(r.mem, 0) AS free_mem, "
        f"o.gpu_count - COALESCE(r.gpu, 0) AS free_gpu FROM offers o {_RESERVED} "
        "ORDER BY o.price_micro_eur_per_dtu_hour, o.offer_id FOR UPDATE OF o")  # best_match(by_price=True)
    return {r["offer_id"]: Offer(
        offer_id=r["offer_id"], vendor=r["vendor"], node=r["node"], region=r["region"], country=r["country"],
        eu=r["eu"], free_vcpu=r["free_vcpu"], free_memory_gib=r["free_mem"], free_gpu=r["free_gpu"],
        gpu_model=r["gpu_model"], price_micro_eur_per_dtu_hour=r["price_micro_eur_per_dtu_hour"],
        price_micro_eur_per_gpu_hour=r["price_micro_eur_per_gpu_hour"],
        available_from=r["available_from"], available_until=r["available_until"]) for r in rows}


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


async def set_status(tx: asyncpg.Connection, job_id: UUID, status: str) -> None:
    await tx.execute("UPDATE pending_jobs SET status = $2 WHERE job_id = $1", job_id, status)


async def reserve(tx: asyncpg.Connection, job_id: UUID, offer_id: UUID, req: JobRequest,
                  start_at: datetime, end_at: datetime) -> None:
    await tx.execute(
        "INSERT INTO reservations (job_id, offer_id, vcpu, memory_gib, gpu, start_at, end_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        job_id, offer_id, req.resources.vcpu, req.resources.memory_gib, req.resources.gpu, start_at, end_at)


async def release(tx: asyncpg.Connection, job_ids: list[UUID], at: datetime) -> int:
    res = await tx.execute("UPDATE reservations SET released_at = $2 WHERE job_id = ANY($1::uuid[]) "
                           "AND released_at IS NULL", job_ids, at)
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
