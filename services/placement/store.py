"""SQL for the placement schema only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.digest import StateTable


async def insert_workloads(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> set[UUID]:
    """rows: (workload_id, job_id, tenant, name, vendor, node, vcpu, memory_gib, assigned_at, attempt, deadline).

    Returns the workloads created now; a job that has one for that attempt already keeps it.
    """
    if not rows:
        return set()
    inserted = await tx.fetch(
        "INSERT INTO workloads (workload_id, job_id, tenant, name, vendor, node, vcpu, memory_gib, assigned_at, "
        "attempt, deadline, status) SELECT *, 'assigned' FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], "
        "$5::text[], $6::text[], $7::numeric[], $8::numeric[], $9::timestamptz[], $10::int[], $11::timestamptz[]) "
        "ON CONFLICT DO NOTHING RETURNING workload_id",
        *[list(col) for col in zip(*rows, strict=True)])
    return {r["workload_id"] for r in inserted}


async def lock_workloads(tx: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM workloads WHERE workload_id = ANY($1::uuid[]) ORDER BY workload_id "
                          "FOR UPDATE", ids)
    return {r["workload_id"]: r for r in rows}


async def set_status(tx: asyncpg.Connection, workload_id: UUID, status: str, at: datetime,
                     exit_code: int | None, reason: str | None) -> None:
    await tx.execute(
        "UPDATE workloads SET status = $2, "
        "started_at = CASE WHEN $2 = 'running' THEN $3 ELSE started_at END, "
        "ended_at = CASE WHEN $2 IN ('succeeded', 'failed') THEN $3 ELSE ended_at END, "
        "exit_code = COALESCE($4, exit_code), reason = COALESCE($5, reason) WHERE workload_id = $1",
        workload_id, status, at, exit_code, reason)


async def list_workloads(con: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await con.fetch("SELECT * FROM workloads ORDER BY assigned_at")]


async def lock_jobs(tx: asyncpg.Connection, job_ids: list[UUID]) -> None:
    """Serialise placing and cancelling a job until commit (a transaction lock per job, taken in job
    order): a cancel that finds no workload yet and the FundsHeld that creates it never pass each other."""
    await tx.executemany("SELECT pg_advisory_xact_lock(hashtextextended('placement-job:' || $1::text, 0))",
                         [(str(j),) for j in sorted(set(job_ids))])


async def lock_nodes(tx: asyncpg.Connection, offer_ids: list[UUID]) -> None:
    """Serialise placing on a node and losing it until commit (a transaction lock per node, taken before the
    jobs' locks, in offer order): a match placed while its node is lost is seen by one or the other."""
    await tx.executemany("SELECT pg_advisory_xact_lock(hashtextextended('placement-node:' || $1::text, 0))",
                         [(str(o),) for o in sorted(set(offer_ids))])


async def workloads_of_jobs(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    """Each job's workload of its latest attempt (earlier ones never started)."""
    rows = await tx.fetch("SELECT * FROM workloads WHERE job_id = ANY($1::uuid[]) ORDER BY workload_id FOR UPDATE",
                          job_ids)
    latest: dict[UUID, asyncpg.Record] = {}
    for r in rows:
        if r["job_id"] not in latest or r["attempt"] > latest[r["job_id"]]["attempt"]:
            latest[r["job_id"]] = r
    return latest


async def unplace(tx: asyncpg.Connection, workload_id: UUID, at: datetime, reason: str) -> None:
    """The workload ended before it started: nothing ran (its job is booked again)."""
    await tx.execute("UPDATE workloads SET status = 'unplaced', ended_at = $2, reason = $3 WHERE workload_id = $1",
                     workload_id, at, reason)


async def add_lost_offers(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (offer_id, lost_at, vendor, node, event_id, cause, reason)."""
    await tx.executemany("INSERT INTO lost_offers (offer_id, lost_at, vendor, node, event_id, cause, reason) "
                         "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING", rows)


async def last_losses(tx: asyncpg.Connection, offer_ids: list[UUID]) -> dict[UUID, tuple[datetime, str, str]]:
    """When each of these offers was last lost, how and in the vendor's words (offers never lost are left
    out)."""
    rows = await tx.fetch("SELECT DISTINCT ON (offer_id) offer_id, lost_at, cause, reason FROM lost_offers "
                          "WHERE offer_id = ANY($1::uuid[]) ORDER BY offer_id, lost_at DESC", offer_ids)
    return {r["offer_id"]: (r["lost_at"], r["cause"], r["reason"]) for r in rows}


async def assigned_on(tx: asyncpg.Connection, vendor: str, node: str) -> list[UUID]:
    """Jobs with a workload assigned to a node and not started."""
    rows = await tx.fetch("SELECT DISTINCT job_id FROM workloads WHERE vendor = $1 AND node = $2 "
                          "AND status = 'assigned' ORDER BY job_id", vendor, node)
    return [r["job_id"] for r in rows]


async def add_cancellations(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (job_id, tenant, name, reason, cancelled_at, event_id): cancels that came before the job's
    FundsHeld."""
    await tx.executemany("INSERT INTO cancellations (job_id, tenant, name, reason, cancelled_at, event_id) "
                         "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING", rows)


async def cancellations(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM cancellations WHERE job_id = ANY($1::uuid[])", job_ids)
    return {r["job_id"]: r for r in rows}


async def cancel(tx: asyncpg.Connection, workload_id: UUID, at: datetime, reason: str) -> None:
    await tx.execute("UPDATE workloads SET status = 'cancelled', ended_at = $2, reason = $3, "
                     "cancel_requested_at = COALESCE(cancel_requested_at, $2) WHERE workload_id = $1",
                     workload_id, at, reason)


async def request_stop(tx: asyncpg.Connection, workload_id: UUID, at: datetime) -> None:
    await tx.execute("UPDATE workloads SET cancel_requested_at = $2 WHERE workload_id = $1", workload_id, at)


# the digest (libs.common.digest) covers every table and column of the schema but the ones named here
# (processing-order artefacts only): a replay must rebuild everything else exactly
DIGEST: dict[str, StateTable] = {}
