"""SQL for the intake schema only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.digest import StateTable
from libs.common.manifest import JobRequest


async def insert_job(tx: asyncpg.Connection, *, job_id: UUID, tenant: str, name: str, manifest: dict[str, Any],
                     request_json: str, at: datetime) -> bool:
    """Insert a new job; False when the tenant already has a job of that name."""
    row = await tx.fetchrow(
        "INSERT INTO jobs (job_id, tenant, name, status, status_rank, manifest, request, submitted_at, updated_at) "
        "VALUES ($1, $2, $3, 'accepted', 1, $4::jsonb, $5::jsonb, $6, $6) ON CONFLICT DO NOTHING RETURNING job_id",
        job_id, tenant, name, json.dumps(manifest, default=str), request_json, at)
    return row is not None


async def job_request(tx: asyncpg.Connection, tenant: str, name: str) -> tuple[str, JobRequest]:
    row = await tx.fetchrow("SELECT status, request::text AS request FROM jobs WHERE tenant = $1 AND name = $2",
                            tenant, name)
    return row["status"], JobRequest.model_validate_json(row["request"])


async def advance_many(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Move jobs' status forward (never back) and record facts such as vendor, outcome or total.

    rows: (job_id, status, rank, at, vendor, node, outcome, total_micro_eur); None keeps a value.
    """
    await tx.executemany(
        "UPDATE jobs SET status = CASE WHEN status_rank < $3 THEN $2 ELSE status END, "
        "status_rank = GREATEST(status_rank, $3), updated_at = GREATEST(updated_at, $4), "
        "vendor = COALESCE($5, vendor), node = COALESCE($6, node), "
        # a cancelled job stays cancelled, however its workload ended (killed by the cancel, or just before it)
        "outcome = CASE WHEN outcome = 'cancelled' THEN outcome ELSE COALESCE($7, outcome) END, "
        "total_micro_eur = COALESCE($8, total_micro_eur) WHERE job_id = $1", rows)


async def lock_statuses(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, str]:
    """The jobs' statuses, their rows locked (in job order, as `record_facts` updates them) until commit."""
    rows = await tx.fetch("SELECT job_id, status FROM jobs WHERE job_id = ANY($1::uuid[]) ORDER BY job_id FOR UPDATE",
                          job_ids)
    return {r["job_id"]: r["status"] for r in rows}


async def add_timeline(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (job_id, tenant, name, event_id, time, type, source, detail)."""
    await tx.executemany(
        "INSERT INTO job_events (job_id, tenant, name, event_id, time, type, source, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING", rows)


async def job_names(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, tuple[str, str]]:
    rows = await tx.fetch("SELECT job_id, tenant, name FROM jobs WHERE job_id = ANY($1::uuid[])", job_ids)
    return {r["job_id"]: (r["tenant"], r["name"]) for r in rows}


_JOB_COLS = ("job_id, tenant, name, status, outcome, vendor, node, submitted_at, updated_at, total_micro_eur")


async def list_jobs(con: asyncpg.Connection, tenant: str | None) -> list[dict[str, Any]]:
    rows = await con.fetch(f"SELECT {_JOB_COLS} FROM jobs WHERE $1::text IS NULL OR tenant = $1 "
                           "ORDER BY submitted_at, name", tenant)
    return [dict(r) for r in rows]


async def get_job(con: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any] | None:
    row = await con.fetchrow(f"SELECT {_JOB_COLS}, request FROM jobs WHERE tenant = $1 AND name = $2", tenant, name)
    timeline = await con.fetch("SELECT time, type, source, detail, event_id FROM job_events "
                               "WHERE tenant = $1 AND name = $2 ORDER BY time, seq", tenant, name)
    if row is None and not timeline:
        return None
    job = dict(row) if row else {"tenant": tenant, "name": name, "status": "rejected"}
    if "request" in job:
        job["request"] = json.loads(job["request"])
    job["timeline"] = [dict(t) for t in timeline]
    return job


# the digest (libs.common.digest) covers every table and column but these: a replay must rebuild the rest
DIGEST: dict[str, StateTable] = {
    # the row serial records the order the side-by-side consumers committed in; time and event id order a timeline
    "job_events": StateTable(exclude=("seq",)),
}
