"""SQL for the metering schema only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.metering.domain import Meter, Sample


async def ensure_meters(tx: asyncpg.Connection, rows: list[tuple[UUID, UUID, str, str]]) -> None:
    """(workload_id, job_id, tenant, vendor) from placement's facts: only placement says who runs what."""
    await tx.executemany("INSERT INTO meters (workload_id, job_id, tenant, vendor) VALUES ($1, $2, $3, $4) "
                         "ON CONFLICT DO NOTHING", rows)


async def lock_meters(tx: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM meters WHERE workload_id = ANY($1::uuid[]) ORDER BY workload_id "
                          "FOR UPDATE", ids)
    return {r["workload_id"]: r for r in rows}


def meter_of(r: asyncpg.Record) -> Meter:
    return Meter(last_seq=r["last_seq"], cpu_us=r["cpu_us"], wall_us=r["wall_us"], rss_peak_bytes=r["rss_peak_bytes"],
                 dtu_hours=r["dtu_hours"], samples=r["samples"])


async def save_meter(tx: asyncpg.Connection, workload_id: UUID, m: Meter) -> None:
    await tx.execute("UPDATE meters SET last_seq = $2, cpu_us = $3, wall_us = $4, rss_peak_bytes = $5, "
                     "dtu_hours = $6, samples = $7 WHERE workload_id = $1",
                     workload_id, m.last_seq, m.cpu_us, m.wall_us, m.rss_peak_bytes, m.dtu_hours, m.samples)


async def pending_samples(tx: asyncpg.Connection, workload_id: UUID, vendor: str,
                          after_seq: int | None) -> list[Sample]:
    rows = await tx.fetch("SELECT seq, cpu_us, wall_us, rss_peak_bytes FROM usage_samples "
                          "WHERE workload_id = $1 AND vendor = $2 AND seq > $3 ORDER BY seq",
                          workload_id, vendor, after_seq or 0)
    return [Sample(seq=r["seq"], cpu_us=r["cpu_us"], wall_us=r["wall_us"], rss_peak_bytes=r["rss_peak_bytes"])
            for r in rows]


async def insert_samples(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (workload_id, vendor, seq, at, cpu_us, wall_us, rss_peak_bytes)."""
    await tx.executemany("INSERT INTO usage_samples (workload_id, vendor, seq, at, cpu_us, wall_us, rss_peak_bytes) "
                         "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING", rows)


async def mark_ended(tx: asyncpg.Connection, workload_id: UUID, outcome: str, final_seq: int | None,
                     at: datetime) -> None:
    await tx.execute("UPDATE meters SET ended = true, outcome = $2, final_seq = $3, ended_at = $4 "
                     "WHERE workload_id = $1", workload_id, outcome, final_seq, at)


async def close(tx: asyncpg.Connection, workload_id: UUID) -> None:
    await tx.execute("UPDATE meters SET status = 'closed' WHERE workload_id = $1", workload_id)


async def list_meters(con: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await con.fetch("SELECT * FROM meters ORDER BY ended_at NULLS LAST")]
