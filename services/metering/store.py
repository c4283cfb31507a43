"""SQL for the metering schema only."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.digest import StateTable
from services.metering.domain import Meter, Reading, Sample, Witness

_SAMPLE_COLUMNS = "seq, at, cpu_us, wall_us, rss_peak_bytes, witness_cpu_us, witness_rss_peak_bytes"


async def lock_workloads(tx: asyncpg.Connection, ids: list[UUID]) -> None:
    """Serialize this transaction with every other one touching these workloads (their samples, start
    or end), also before a meter row exists: whichever commits second sees all the first one wrote, so
    no sample and no end report can slip past each other unseen."""
    # the two-key form has its own key space: it cannot collide with the migrations' one-key locks
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('metering'), hashtext(w::text)) "
                     "FROM (SELECT DISTINCT w FROM unnest($1::uuid[]) AS w ORDER BY w) AS ids", ids)


async def ensure_meters(tx: asyncpg.Connection, rows: list[tuple[UUID, UUID, str, str]]) -> None:
    """(workload_id, job_id, tenant, vendor) from placement's facts: only placement says who runs what."""
    await tx.executemany("INSERT INTO meters (workload_id, job_id, tenant, vendor) VALUES ($1, $2, $3, $4) "
                         "ON CONFLICT DO NOTHING", rows)


async def mark_started(tx: asyncpg.Connection, rows: list[tuple[UUID, datetime, Decimal]]) -> None:
    """(workload_id, started_at, dtu_rate); a repeated start changes nothing."""
    await tx.executemany("UPDATE meters SET started = true, started_at = $2, dtu_rate = $3 "
                         "WHERE workload_id = $1 AND NOT started", rows)


async def lock_meters(tx: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM meters WHERE workload_id = ANY($1::uuid[]) ORDER BY workload_id "
                          "FOR UPDATE", ids)
    return {r["workload_id"]: r for r in rows}


def meter_of(r: asyncpg.Record) -> Meter:
    witness = None if r["witness_dtu_hours"] is None else Witness(
        cpu_us=r["witness_cpu_us"], wall_us=r["witness_wall_us"], rss_peak_bytes=r["witness_rss_peak_bytes"],
        dtu_hours=r["witness_dtu_hours"])
    return Meter(last_seq=r["last_seq"], cpu_us=r["cpu_us"], wall_us=r["wall_us"], rss_peak_bytes=r["rss_peak_bytes"],
                 dtu_hours=r["dtu_hours"], samples=r["samples"], rejected=r["rejected"], last_at=r["last_at"],
                 witness=witness)


async def save_meter(tx: asyncpg.Connection, workload_id: UUID, m: Meter) -> None:
    w = m.witness
    witness = (None, None, None, None) if w is None else (w.cpu_us, w.wall_us, w.rss_peak_bytes, w.dtu_hours)
    await tx.execute(
        "UPDATE meters SET last_seq = $2, cpu_us = $3, wall_us = $4, rss_peak_bytes = $5, dtu_hours = $6, "
        "samples = $7, rejected = $8, last_at = $9, witness_cpu_us = $10, witness_wall_us = $11, "
        "witness_rss_peak_bytes = $12, witness_dtu_hours = $13 WHERE workload_id = $1",
        workload_id, m.last_seq, m.cpu_us, m.wall_us, m.rss_peak_bytes, m.dtu_hours, m.samples, m.rejected,
        m.last_at, *witness)


async def set_charged_intervals(tx: asyncpg.Connection, workload_id: UUID, n: int) -> None:
    await tx.execute("UPDATE meters SET charged_intervals = $2 WHERE workload_id = $1", workload_id, n)


def _sample(r: asyncpg.Record) -> Sample:
    return Sample(seq=r["seq"], at=r["at"], cpu_us=r["cpu_us"], wall_us=r["wall_us"],
                  rss_peak_bytes=r["rss_peak_bytes"], witness_cpu_us=r["witness_cpu_us"],
                  witness_rss_peak_bytes=r["witness_rss_peak_bytes"])


async def pending_samples(tx: asyncpg.Connection, workload_id: UUID, vendor: str,
                          after_seq: int | None) -> list[Sample]:
    rows = await tx.fetch(f"SELECT {_SAMPLE_COLUMNS} FROM usage_samples "
                          "WHERE workload_id = $1 AND vendor = $2 AND seq > $3 ORDER BY seq",
                          workload_id, vendor, after_seq or 0)
    return [_sample(r) for r in rows]


async def all_samples(tx: asyncpg.Connection, workload_id: UUID, vendor: str) -> list[Sample]:
    return await pending_samples(tx, workload_id, vendor, None)


async def top_seq(tx: asyncpg.Connection, workload_id: UUID, vendor: str) -> int | None:
    """The highest seq received from the workload's vendor, None when none."""
    return await tx.fetchval("SELECT max(seq) FROM usage_samples WHERE workload_id = $1 AND vendor = $2",
                             workload_id, vendor)


async def insert_samples(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[UUID, str]]:
    """rows: (workload_id, vendor, seq, at, cpu_us, wall_us, rss_peak_bytes, witness_cpu_us,
    witness_rss_peak_bytes). Returns (workload_id, vendor) of each sample that is new (a repeated seq is
    a no-op: the first reading of a seq is the one kept)."""
    if not rows:
        return []
    cols = list(zip(*rows, strict=True))
    new = await tx.fetch(
        "INSERT INTO usage_samples (workload_id, vendor, seq, at, cpu_us, wall_us, rss_peak_bytes, witness_cpu_us, "
        "witness_rss_peak_bytes) SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], "
        "$5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) ON CONFLICT DO NOTHING "
        "RETURNING workload_id, vendor", *[list(c) for c in cols])
    return [(r["workload_id"], r["vendor"]) for r in new]


async def count_late(tx: asyncpg.Connection, new: list[tuple[UUID, str]]) -> None:
    """New samples of meters that already closed: kept, counted, never integrated."""
    if new:
        await tx.execute("UPDATE meters m SET late_samples = m.late_samples + n.k FROM "
                         "(SELECT w, v, count(*) AS k FROM unnest($1::uuid[], $2::text[]) AS s(w, v) GROUP BY w, v) n "
                         "WHERE m.workload_id = n.w AND m.vendor = n.v AND m.status = 'closed'",
                         [w for w, _ in new], [v for _, v in new])


async def mark_ended(tx: asyncpg.Connection, workload_id: UUID, outcome: str, final_seq: int | None,
                     at: datetime) -> None:
    """The first end report counts (a workload ends once)."""
    await tx.execute("UPDATE meters SET ended = true, outcome = $2, final_seq = $3, ended_at = $4 "
                     "WHERE workload_id = $1 AND NOT ended", workload_id, outcome, final_seq, at)


async def close(tx: asyncpg.Connection, workload_id: UUID, m: Meter, r: Reading, missing: list[int]) -> None:
    """Keep the final meter (recomputed from every sample present) and the figures reported."""
    await save_meter(tx, workload_id, m)
    await tx.execute("UPDATE meters SET status = 'closed', claimed_dtu_micro_hours = $2, dtu_micro_hours = $3, "
                     "witness_dtu_micro_hours = $4, disputed_dtu_micro_hours = $5, missing_seqs = $6 "
                     "WHERE workload_id = $1", workload_id, r.claimed, r.billable, r.witness, r.disputed, missing)


async def list_meters(con: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await con.fetch("SELECT * FROM meters ORDER BY ended_at NULLS LAST")]


# the digest (libs.common.digest) covers every table and column of the schema but the ones named here
# (processing-order artefacts only): a replay must rebuild everything else exactly
DIGEST: dict[str, StateTable] = {
    # the progress watermark: how many charge intervals were reported depends on how the samples were
    # batched and on whether the workload's end was seen first, not on the usage (readings are cumulative
    # and MeterClosed is final, so no charge depends on it)
    "meters": StateTable(exclude=("charged_intervals",)),
}
