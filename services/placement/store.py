"""SQL for the placement schema only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def insert_workloads(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> set[UUID]:
    """rows: (workload_id, job_id, tenant, name, vendor, node, vcpu, memory_gib, assigned_at).

    Returns the workloads created now; a job that has one already keeps it.
    """
    if not rows:
        return set()
    inserted = await tx.fetch(
        "INSERT INTO workloads (workload_id, job_id, tenant, name, vendor, node, vcpu, memory_gib, assigned_at, "
        "status) SELECT *, 'assigned' FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::numeric[], $8::numeric[], $9::timestamptz[]) ON CONFLICT DO NOTHING RETURNING workload_id",
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
