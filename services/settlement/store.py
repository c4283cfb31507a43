"""SQL for the settlement schema only: the ledger, holds, invoices and the ledger's invariant checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def post(tx: asyncpg.Connection,
               transfers: list[tuple[UUID, str, str, int, str, UUID | None, UUID, datetime]]) -> set[UUID]:
    """Post transfers (id, debit, credit, amount, kind, job_id, event_id, at); zero amounts are skipped.

    A transfer id already posted is not posted again, and balances move only for those inserted.
    Returns the ids posted now.
    """
    transfers = [t for t in transfers if t[3] > 0]
    if not transfers:
        return set()
    accounts = sorted({a for t in transfers for a in (t[1], t[2])})
    await tx.executemany("INSERT INTO accounts (name, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                         [(a, a.split(":", 1)[0]) for a in accounts])
    rows = await tx.fetch(
        "INSERT INTO transfers (transfer_id, debit, credit, amount, kind, job_id, event_id, at) "
        "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::uuid[], "
        "$7::uuid[], $8::timestamptz[]) ON CONFLICT DO NOTHING RETURNING transfer_id, debit, credit, amount",
        *[list(col) for col in zip(*transfers, strict=True)])
    delta: dict[str, int] = {}
    for r in rows:
        delta[r["debit"]] = delta.get(r["debit"], 0) - r["amount"]
        delta[r["credit"]] = delta.get(r["credit"], 0) + r["amount"]
    # accounts updated in name order: concurrent batches never deadlock on each other
    await tx.executemany("UPDATE accounts SET balance = balance + $2 WHERE name = $1", sorted(delta.items()))
    return {r["transfer_id"] for r in rows}


async def insert_holds(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> set[UUID]:
    """rows: (job_id, tenant, name, vendor, amount, price per DTU-h, held_at, gpus, price per GPU-h).

    Returns the jobs held now; a job held before keeps its hold.
    """
    if not rows:
        return set()
    inserted = await tx.fetch(
        "INSERT INTO holds (job_id, tenant, name, vendor, amount, price_micro_eur_per_dtu_hour, held_at, gpus, "
        "price_micro_eur_per_gpu_hour, status) SELECT *, 'pending' FROM unnest($1::uuid[], $2::text[], $3::text[], "
        "$4::text[], $5::bigint[], $6::bigint[], $7::timestamptz[], $8::int[], $9::bigint[]) "
        "ON CONFLICT DO NOTHING RETURNING job_id", *[list(col) for col in zip(*rows, strict=True)])
    return {r["job_id"] for r in inserted}


async def lock_wallets(tx: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    """The wallets' balances, locked (in name order) until the transaction ends; a wallet never paid into is 0."""
    await tx.executemany("INSERT INTO accounts (name, kind) VALUES ($1, 'tenant') ON CONFLICT DO NOTHING",
                         [(n,) for n in names])
    rows = await tx.fetch("SELECT name, balance FROM accounts WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE",
                          names)
    return {r["name"]: r["balance"] for r in rows}


async def existing_holds(tx: asyncpg.Connection, job_ids: list[UUID]) -> set[UUID]:
    return {r["job_id"] for r in await tx.fetch("SELECT job_id FROM holds WHERE job_id = ANY($1::uuid[])", job_ids)}


async def lock_holds(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM holds WHERE job_id = ANY($1::uuid[]) ORDER BY job_id FOR UPDATE", job_ids)
    return {r["job_id"]: r for r in rows}


async def settle_holds(tx: asyncpg.Connection, job_ids: list[UUID]) -> None:
    await tx.execute("UPDATE holds SET status = 'settled' WHERE job_id = ANY($1::uuid[])", job_ids)


async def insert_invoice_lines(tx: asyncpg.Connection, lines: list[tuple[Any, ...]]) -> None:
    """lines: (job_id, tenant, name, vendor, dtu_micro_hours, price per DTU-h, gpu_micro_hours, price per GPU-h,
    vendor_micro_eur, fee_micro_eur, total_micro_eur, at)."""
    await tx.executemany(
        "INSERT INTO invoice_lines (job_id, tenant, name, vendor, dtu_micro_hours, price_micro_eur_per_dtu_hour, "
        "gpu_micro_hours, price_micro_eur_per_gpu_hour, vendor_micro_eur, fee_micro_eur, total_micro_eur, at) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT DO NOTHING", lines)


async def record_deposits(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (tenant, reference, amount, transfer_id, at)."""
    await tx.executemany("INSERT INTO deposits (tenant, reference, amount, transfer_id, at) "
                         "VALUES ($1, $2, $3, $4, $5)", rows)


async def wallet(con: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    balances = {r["name"]: r["balance"] for r in await con.fetch(
        "SELECT name, balance FROM accounts WHERE name = ANY($1::text[])", [f"tenant:{tenant}", f"escrow:{tenant}"])}
    deposits = await con.fetch("SELECT reference, amount, at FROM deposits WHERE tenant = $1 ORDER BY at", tenant)
    return {"tenant": tenant, "balance_micro_eur": balances.get(f"tenant:{tenant}", 0),
            "held_micro_eur": balances.get(f"escrow:{tenant}", 0),
            "deposited_micro_eur": sum(r["amount"] for r in deposits), "deposits": [dict(r) for r in deposits]}


async def journal(con: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any] | None:
    """Every transfer of a job, in order, with the event that caused it: an invoice line traced to its money."""
    hold = await con.fetchrow("SELECT job_id, amount, status, vendor FROM holds WHERE tenant = $1 AND name = $2",
                              tenant, name)
    if hold is None:
        return None
    rows = await con.fetch("SELECT transfer_id, kind, debit, credit, amount, event_id, at FROM transfers "
                           "WHERE job_id = $1 ORDER BY at, CASE kind WHEN 'hold' THEN 0 WHEN 'charge' THEN 1 "
                           "WHEN 'fee' THEN 2 ELSE 3 END", hold["job_id"])
    return {"tenant": tenant, "name": name, "job_id": hold["job_id"], "vendor": hold["vendor"],
            "hold_micro_eur": hold["amount"], "hold_status": hold["status"], "transfers": [dict(r) for r in rows]}


async def invoice(con: asyncpg.Connection, tenant: str) -> list[dict[str, Any]]:
    rows = await con.fetch("SELECT * FROM invoice_lines WHERE tenant = $1 ORDER BY at, name", tenant)
    return [dict(r) for r in rows]


# each invariant is a query that returns no rows when it holds
INVARIANTS: dict[str, str] = {
    "accounts sum to zero":
        "SELECT sum(balance) AS total FROM accounts HAVING sum(balance) <> 0",
    "stored balances equal balances recomputed from the transfers":
        "SELECT a.name, a.balance, COALESCE(c.sum, 0) - COALESCE(d.sum, 0) AS recomputed FROM accounts a "
        "LEFT JOIN (SELECT credit AS name, sum(amount) FROM transfers GROUP BY credit) c USING (name) "
        "LEFT JOIN (SELECT debit AS name, sum(amount) FROM transfers GROUP BY debit) d USING (name) "
        "WHERE a.balance <> COALESCE(c.sum, 0) - COALESCE(d.sum, 0)",
    "escrow holds exactly the pending holds":
        "SELECT a.name, a.balance, COALESCE(h.sum, 0) AS pending FROM accounts a LEFT JOIN "
        "(SELECT 'escrow:' || tenant AS name, sum(amount) FROM holds WHERE status = 'pending' GROUP BY tenant) h "
        "USING (name) WHERE a.kind = 'escrow' AND a.balance <> COALESCE(h.sum, 0)",
    "a settled hold is fully spent: charge + fee + release = hold":
        "SELECT h.job_id, h.amount, COALESCE(t.sum, 0) AS out FROM holds h LEFT JOIN "
        "(SELECT job_id, sum(amount) FROM transfers WHERE kind IN ('charge', 'fee', 'release') GROUP BY job_id) t "
        "USING (job_id) WHERE h.status = 'settled' AND h.amount <> COALESCE(t.sum, 0)",
    "no charge exceeds its hold":
        "SELECT l.job_id, l.total_micro_eur, h.amount FROM invoice_lines l JOIN holds h USING (job_id) "
        "WHERE l.total_micro_eur > h.amount",
    "vendor and exchange accounts are never negative":
        "SELECT name, balance FROM accounts WHERE kind IN ('vendor', 'exchange') AND balance < 0",
    "a wallet never goes below zero":
        "SELECT name, balance FROM accounts WHERE kind = 'tenant' AND balance < 0",
    "money enters only by deposits: the funding account is minus the deposits":
        "SELECT a.balance, d.sum FROM accounts a, (SELECT COALESCE(sum(amount), 0) AS sum FROM deposits) d "
        "WHERE a.name = 'external:funding' AND a.balance <> -d.sum",
}


async def check(con: asyncpg.Connection) -> list[dict[str, Any]]:
    results = []
    for name, sql in INVARIANTS.items():
        rows = await con.fetch(sql + " LIMIT 5")
        results.append({"name": name, "ok": not rows,
                        "detail": "" if not rows else "; ".join(str(dict(r)) for r in rows)})
    return results
