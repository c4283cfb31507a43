"""SQL for the placement schema only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def insert_workload(tx: asyncpg.Connection, row: dict[str, Any]) -> bool:
    r = await tx.fetchrow(
        "INSERT INTO workloads (workload_id, job_id, tenant, name, vendor, node, vcpu, memory_gib, status, "
        "assigned_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'assigned', $9) ON CONFLICT DO NOTHING "
        "RETURNING workload_id",
        row["workload_id"], row["job_id"], row["tenant"], row["name"], row["vendor"], row["node"], row["vcpu"],
        row["memory_gib"], row["assigned_at"])
    return r is not None


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
