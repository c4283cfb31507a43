"""SQL for the settlement schema only: the ledger, holds, invoices and the ledger's invariant checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.digest import StateTable
from services.settlement.domain import Paid


class TransferConflict(PermanentError):
    """A transfer id already posted with other fields: the causing event was changed or forged.
    (One transfer per id: the same id with the same fields is a no-op, with different fields an error.)"""


# (id, debit, credit, amount, kind, job_id, event_id, at)
Transfer = tuple[UUID, str, str, int, str, "UUID | None", UUID, datetime]
_FIELDS = ("debit", "credit", "amount", "kind", "job_id")


async def post(tx: asyncpg.Connection, transfers: list[Transfer]) -> set[UUID]:
    """Post transfers (id, debit, credit, amount, kind, job_id, event_id, at) together; zero amounts are skipped.

    A transfer id already posted with the same fields is not posted again; with different fields it
    raises TransferConflict (and the whole batch rolls back). Balances move only for those inserted;
    the database refuses a balance below zero on any account but the external ones. Returns the ids
    posted now.
    """
    transfers = [t for t in transfers if t[3] > 0]
    if not transfers:
        return set()
    if len({t[0] for t in transfers}) != len(transfers):
        raise TransferConflict("one batch posts the same transfer id twice")
    accounts = sorted({a for t in transfers for a in (t[1], t[2])})
    await tx.executemany("INSERT INTO accounts (name, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                         [(a, a.split(":", 1)[0]) for a in accounts])
    rows = await tx.fetch(
        "INSERT INTO transfers (transfer_id, debit, credit, amount, kind, job_id, event_id, at) "
        "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::uuid[], "
        "$7::uuid[], $8::timestamptz[]) ON CONFLICT DO NOTHING RETURNING transfer_id, debit, credit, amount",
        *[list(col) for col in zip(*transfers, strict=True)])
    posted = {r["transfer_id"] for r in rows}
    repeated = [t for t in transfers if t[0] not in posted]
    if repeated:
        existing = {r["transfer_id"]: r for r in await tx.fetch(
            "SELECT transfer_id, debit, credit, amount, kind, job_id FROM transfers "
            "WHERE transfer_id = ANY($1::uuid[])",
            [t[0] for t in repeated])}
        for t in repeated:
            old = existing[t[0]]
            if tuple(old[f] for f in _FIELDS) != (t[1], t[2], t[3], t[4], t[5]):
                raise TransferConflict(f"transfer {t[0]} exists as {dict(old)}, now asked for "
                                       f"{dict(zip(_FIELDS, (t[1], t[2], t[3], t[4], t[5]), strict=True))}")
    delta: dict[str, int] = {}
    for r in rows:
        delta[r["debit"]] = delta.get(r["debit"], 0) - r["amount"]
        delta[r["credit"]] = delta.get(r["credit"], 0) + r["amount"]
    # accounts updated in name order: concurrent batches never deadlock on each other
    await tx.executemany("UPDATE accounts SET balance = balance + $2 WHERE name = $1", sorted(delta.items()))
    return posted


async def insert_holds(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> set[UUID]:
    """rows: (job_id, tenant, name, vendor, amount, price per DTU-h, held_at, gpus, price per GPU-h, expires_at).

    Returns the jobs held now; a job held before keeps its hold.
    """
    if not rows:
        return set()
    inserted = await tx.fetch(
        "INSERT INTO holds (job_id, tenant, name, vendor, amount, price_micro_eur_per_dtu_hour, held_at, gpus, "
        "price_micro_eur_per_gpu_hour, expires_at, status) SELECT *, 'pending' FROM unnest($1::uuid[], $2::text[], "
        "$3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::timestamptz[], $8::int[], $9::bigint[], "
        "$10::timestamptz[]) ON CONFLICT DO NOTHING RETURNING job_id", *[list(col) for col in zip(*rows, strict=True)])
    return {r["job_id"] for r in inserted}


async def move_holds(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (job_id, vendor, price per DTU-h, price per GPU-h, expires_at): a job booked again after its
    workload never started keeps its hold (the amount depends on its caps, not on the vendor); the hold now
    pays the new vendor at the new price, and expires after the new booking. No money moves."""
    await tx.executemany("UPDATE holds SET vendor = $2, price_micro_eur_per_dtu_hour = $3, "
                         "price_micro_eur_per_gpu_hour = $4, expires_at = $5 WHERE job_id = $1", rows)


async def extend_holds(tx: asyncpg.Connection, rows: list[tuple[UUID, datetime]]) -> None:
    """rows: (job_id, at the earliest): pending holds expire no sooner than that."""
    await tx.executemany("UPDATE holds SET expires_at = GREATEST(expires_at, $2) WHERE job_id = $1 "
                         "AND status = 'pending'", rows)


async def lock_wallets(tx: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    """The accounts' balances, locked (in name order) until the transaction ends; an account never paid into is 0."""
    await tx.executemany("INSERT INTO accounts (name, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                         [(n, n.split(":", 1)[0]) for n in names])
    rows = await tx.fetch("SELECT name, balance FROM accounts WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE",
                          names)
    return {r["name"]: r["balance"] for r in rows}


async def existing_holds(tx: asyncpg.Connection, job_ids: list[UUID]) -> set[UUID]:
    return {r["job_id"] for r in await tx.fetch("SELECT job_id FROM holds WHERE job_id = ANY($1::uuid[])", job_ids)}


async def lock_holds(tx: asyncpg.Connection, job_ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    rows = await tx.fetch("SELECT * FROM holds WHERE job_id = ANY($1::uuid[]) ORDER BY job_id FOR UPDATE", job_ids)
    return {r["job_id"]: r for r in rows}


async def lock_expired_holds(tx: asyncpg.Connection, now: datetime) -> list[asyncpg.Record]:
    return await tx.fetch("SELECT * FROM holds WHERE status = 'pending' AND expires_at < $1 ORDER BY job_id "
                          "FOR UPDATE", now)


def paid_of(h: Any) -> Paid:
    return Paid(vendor=h["vendor_micro_eur"], disputed=h["disputed_micro_eur"], fee=h["fee_micro_eur"],
                rounding=h["rounding_micro_eur"])


async def update_holds(tx: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """Write back holds changed in memory (status, what they charged and paid, what they released)."""
    await tx.executemany(
        "UPDATE holds SET status = $2, charged_dtu_micro_hours = $3, charged_gpu_micro_hours = $4, "
        "vendor_micro_eur = $5, disputed_micro_eur = $6, fee_micro_eur = $7, rounding_micro_eur = $8, "
        "released_micro_eur = $9 WHERE job_id = $1",
        [(h["job_id"], h["status"], h["charged_dtu_micro_hours"], h["charged_gpu_micro_hours"], h["vendor_micro_eur"],
          h["disputed_micro_eur"], h["fee_micro_eur"], h["rounding_micro_eur"], h["released_micro_eur"])
         for h in rows])


async def insert_charges(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (charge_id, job_id, kind, dtu, gpu, vendor, disputed, fee, rounding, total, event_id, at), all deltas."""
    await tx.executemany(
        "INSERT INTO charges (charge_id, job_id, kind, dtu_micro_hours, gpu_micro_hours, vendor_micro_eur, "
        "disputed_micro_eur, fee_micro_eur, rounding_micro_eur, total_micro_eur, event_id, at) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT DO NOTHING", rows)


async def open_disputes(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (job_id, vendor, tenant, claimed, witness, disputed DTU, held, opened_at)."""
    await tx.executemany(
        "INSERT INTO disputes (job_id, vendor, tenant, claimed_dtu_micro_hours, witness_dtu_micro_hours, "
        "disputed_dtu_micro_hours, held_micro_eur, opened_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) "
        "ON CONFLICT DO NOTHING", rows)


async def lock_dispute(tx: asyncpg.Connection, job_id: UUID) -> asyncpg.Record | None:
    return await tx.fetchrow("SELECT * FROM disputes WHERE job_id = $1 FOR UPDATE", job_id)


async def resolve_dispute(tx: asyncpg.Connection, job_id: UUID, paid_to: str, at: datetime, note: str) -> None:
    await tx.execute("UPDATE disputes SET status = $2, resolved_at = $3, note = $4 WHERE job_id = $1",
                     job_id, paid_to, at, note)


async def record_deposits(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (tenant, reference, amount, transfer_id, at)."""
    await tx.executemany("INSERT INTO deposits (tenant, reference, amount, transfer_id, at) "
                         "VALUES ($1, $2, $3, $4, $5)", rows)


async def record_payouts(tx: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """rows: (vendor, reference, amount, transfer_id, at)."""
    await tx.executemany("INSERT INTO payouts (vendor, reference, amount, transfer_id, at) "
                         "VALUES ($1, $2, $3, $4, $5)", rows)


async def existing_payouts(tx: asyncpg.Connection, transfer_ids: list[UUID]) -> set[UUID]:
    rows = await tx.fetch("SELECT transfer_id FROM payouts WHERE transfer_id = ANY($1::uuid[])", transfer_ids)
    return {r["transfer_id"] for r in rows}


async def wallet(con: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    balances = {r["name"]: r["balance"] for r in await con.fetch(
        "SELECT name, balance FROM accounts WHERE name = ANY($1::text[])", [f"tenant:{tenant}", f"escrow:{tenant}"])}
    deposits = await con.fetch("SELECT reference, amount, at FROM deposits WHERE tenant = $1 ORDER BY at", tenant)
    return {"tenant": tenant, "balance_micro_eur": balances.get(f"tenant:{tenant}", 0),
            "held_micro_eur": balances.get(f"escrow:{tenant}", 0),
            "deposited_micro_eur": sum(r["amount"] for r in deposits), "deposits": [dict(r) for r in deposits]}


async def journal(con: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any] | None:
    """Every transfer of a job, in order, with the event that caused it: an invoice line traced to its money."""
    hold = await con.fetchrow("SELECT * FROM holds WHERE tenant = $1 AND name = $2", tenant, name)
    if hold is None:
        return None
    # each charge leg with the metered use that caused it (the reading's DTU-hours since the last one)
    rows = await con.fetch("SELECT t.transfer_id, t.kind, t.debit, t.credit, t.amount, t.event_id, t.at, "
                           "c.kind AS reading, c.dtu_micro_hours AS usage_dtu_micro_hours FROM transfers t "
                           "LEFT JOIN charges c ON c.event_id = t.event_id AND c.job_id = t.job_id "
                           "WHERE t.job_id = $1 ORDER BY t.at, CASE t.kind WHEN 'hold' THEN 0 WHEN 'charge' THEN 1 "
                           "WHEN 'dispute' THEN 2 WHEN 'fee' THEN 3 WHEN 'rounding' THEN 4 ELSE 5 END, t.transfer_id",
                           hold["job_id"])
    return {"tenant": tenant, "name": name, "job_id": hold["job_id"], "vendor": hold["vendor"],
            "hold_micro_eur": hold["amount"], "hold_status": hold["status"], "transfers": [dict(r) for r in rows]}


_LINE = ("SELECT h.job_id, h.tenant, h.name, h.vendor, h.price_micro_eur_per_dtu_hour, "
         "h.price_micro_eur_per_gpu_hour, h.status, sum(c.dtu_micro_hours)::bigint AS dtu_micro_hours, "
         "sum(c.gpu_micro_hours)::bigint AS gpu_micro_hours, sum(c.vendor_micro_eur)::bigint AS vendor_micro_eur, "
         "sum(c.disputed_micro_eur)::bigint AS disputed_micro_eur, sum(c.fee_micro_eur)::bigint AS fee_micro_eur, "
         "sum(c.rounding_micro_eur)::bigint AS rounding_micro_eur, sum(c.total_micro_eur)::bigint AS total_micro_eur, "
         "min(c.at) AS first_at, max(c.at) AS at FROM charges c JOIN holds h USING (job_id) ")


async def invoice(con: asyncpg.Connection, tenant: str, since: datetime | None,
                  until: datetime | None) -> list[dict[str, Any]]:
    """A line per job charged in [since, until): what its charges in the period add up to."""
    rows = await con.fetch(_LINE + "WHERE h.tenant = $1 AND ($2::timestamptz IS NULL OR c.at >= $2) "
                           "AND ($3::timestamptz IS NULL OR c.at < $3) GROUP BY h.job_id ORDER BY max(c.at), h.name",
                           tenant, since, until)
    return [dict(r) for r in rows]


async def statement(con: asyncpg.Connection, vendor: str, since: datetime | None,
                    until: datetime | None) -> dict[str, Any]:
    """A vendor's payout statement: earned per job in the period, disputes, payouts, and its balances."""
    lines = await con.fetch(_LINE + "WHERE h.vendor = $1 AND ($2::timestamptz IS NULL OR c.at >= $2) "
                            "AND ($3::timestamptz IS NULL OR c.at < $3) GROUP BY h.job_id ORDER BY max(c.at), h.name",
                            vendor, since, until)
    payouts = await con.fetch("SELECT reference, amount, at FROM payouts WHERE vendor = $1 "
                              "AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at < $3) "
                              "ORDER BY at", vendor, since, until)
    balances = {r["name"]: r["balance"] for r in await con.fetch(
        "SELECT name, balance FROM accounts WHERE name = ANY($1::text[])", [f"vendor:{vendor}", f"dispute:{vendor}"])}
    return {"vendor": vendor, "lines": [dict(r) for r in lines], "payouts": [dict(r) for r in payouts],
            "disputes": await disputes(con, vendor),
            "payable_micro_eur": balances.get(f"vendor:{vendor}", 0),
            "in_dispute_micro_eur": balances.get(f"dispute:{vendor}", 0)}


async def disputes(con: asyncpg.Connection, vendor: str | None = None) -> list[dict[str, Any]]:
    rows = await con.fetch("SELECT d.*, h.name, (SELECT COALESCE(sum(t.amount), 0) FROM transfers t "
                           "WHERE t.job_id = d.job_id AND t.kind = 'fee_refund')::bigint AS fee_refunded_micro_eur "
                           "FROM disputes d JOIN holds h USING (job_id) "
                           "WHERE $1::text IS NULL OR d.vendor = $1 ORDER BY d.opened_at", vendor)
    return [dict(r) for r in rows]


# the transfer kinds that take money out of a hold's escrow
_FROM_ESCROW = "('charge', 'dispute', 'fee', 'rounding', 'release', 'void', 'expire')"

# each invariant is a query that returns no rows when it holds
INVARIANTS: dict[str, str] = {
    "accounts sum to zero":
        "SELECT sum(balance) AS total FROM accounts HAVING sum(balance) <> 0",
    "stored balances equal balances recomputed from the transfers":
        "SELECT a.name, a.balance, COALESCE(c.sum, 0) - COALESCE(d.sum, 0) AS recomputed FROM accounts a "
        "LEFT JOIN (SELECT credit AS name, sum(amount) FROM transfers GROUP BY credit) c USING (name) "
        "LEFT JOIN (SELECT debit AS name, sum(amount) FROM transfers GROUP BY debit) d USING (name) "
        "WHERE a.balance <> COALESCE(c.sum, 0) - COALESCE(d.sum, 0)",
    "escrow holds exactly what pending holds have not yet paid":
        "SELECT a.name, a.balance, COALESCE(h.sum, 0) AS unspent FROM accounts a LEFT JOIN "
        "(SELECT 'escrow:' || tenant AS name, sum(amount - vendor_micro_eur - disputed_micro_eur - fee_micro_eur "
        "- rounding_micro_eur) FROM holds WHERE status = 'pending' GROUP BY tenant) h "
        "USING (name) WHERE a.kind = 'escrow' AND a.balance <> COALESCE(h.sum, 0)",
    "a hold's running totals equal its transfers":
        "SELECT h.job_id, h.vendor_micro_eur, h.disputed_micro_eur, h.fee_micro_eur, h.rounding_micro_eur, "
        "h.released_micro_eur, t.* FROM holds h LEFT JOIN (SELECT job_id, "
        "COALESCE(sum(amount) FILTER (WHERE kind IN ('charge', 'dispute_release')), 0) AS vendor, "
        "COALESCE(sum(amount) FILTER (WHERE kind = 'dispute'), 0) "
        "- COALESCE(sum(amount) FILTER (WHERE kind IN ('dispute_release', 'refund')), 0) AS disputed, "
        "COALESCE(sum(amount) FILTER (WHERE kind = 'fee'), 0) "
        "- COALESCE(sum(amount) FILTER (WHERE kind = 'fee_refund'), 0) AS fee, "
        "COALESCE(sum(amount) FILTER (WHERE kind = 'rounding'), 0) AS rounding, "
        "COALESCE(sum(amount) FILTER (WHERE kind IN ('release', 'void', 'expire')), 0) AS released "
        "FROM transfers GROUP BY job_id) t USING (job_id) WHERE h.vendor_micro_eur <> COALESCE(t.vendor, 0) "
        "OR h.disputed_micro_eur <> COALESCE(t.disputed, 0) OR h.fee_micro_eur <> COALESCE(t.fee, 0) "
        "OR h.rounding_micro_eur <> COALESCE(t.rounding, 0) OR h.released_micro_eur <> COALESCE(t.released, 0)",
    "a closed hold (posted, voided, expired) is fully spent and released exactly once":
        "SELECT h.job_id, h.status, h.amount, COALESCE(t.out, 0) AS out, COALESCE(t.releases, 0) AS releases "
        "FROM holds h LEFT JOIN (SELECT job_id, sum(amount) FILTER (WHERE kind IN " + _FROM_ESCROW + ") AS out, "
        "count(*) FILTER (WHERE kind IN ('release', 'void', 'expire')) AS releases FROM transfers GROUP BY job_id) t "
        "USING (job_id) WHERE h.status <> 'pending' "
        "AND (h.amount <> COALESCE(t.out, 0) OR COALESCE(t.releases, 0) > 1)",
    "no hold pays out more than it held":
        "SELECT job_id, h.amount, sum(t.amount) AS out FROM holds h JOIN transfers t USING (job_id) "
        "WHERE t.kind IN " + _FROM_ESCROW + " GROUP BY job_id, h.amount HAVING sum(t.amount) > h.amount",
    "invoices add up to what the tenant paid (less refunds)":
        "SELECT h.job_id, h.vendor_micro_eur + h.disputed_micro_eur + h.fee_micro_eur + h.rounding_micro_eur AS held, "
        "c.sum FROM holds h JOIN (SELECT job_id, sum(total_micro_eur) FROM charges GROUP BY job_id) c USING (job_id) "
        "WHERE c.sum <> h.vendor_micro_eur + h.disputed_micro_eur + h.fee_micro_eur + h.rounding_micro_eur",
    "a dispute account holds exactly the disputed amounts":
        "SELECT a.name, a.balance, COALESCE(d.sum, 0) AS held FROM accounts a LEFT JOIN "
        "(SELECT 'dispute:' || vendor AS name, sum(disputed_micro_eur) FROM holds GROUP BY vendor) d "
        "USING (name) WHERE a.kind = 'dispute' AND a.balance <> COALESCE(d.sum, 0)",
    "a resolved dispute holds nothing any more":
        "SELECT d.job_id, d.status, h.disputed_micro_eur FROM disputes d JOIN holds h USING (job_id) "
        "WHERE d.status <> 'open' AND h.disputed_micro_eur <> 0",
    "no account but the external ones is below zero":
        "SELECT name, balance FROM accounts WHERE kind <> 'external' AND balance < 0",
    "money enters only by deposits: the funding account is minus the deposits":
        "SELECT a.balance, d.sum FROM accounts a, (SELECT COALESCE(sum(amount), 0) AS sum FROM deposits) d "
        "WHERE a.name = 'external:funding' AND a.balance <> -d.sum",
    "money leaves only by payouts: the payout account is the payouts":
        "SELECT a.balance, p.sum FROM accounts a, (SELECT COALESCE(sum(amount), 0) AS sum FROM payouts) p "
        "WHERE a.name = 'external:payouts' AND a.balance <> p.sum",
}


async def check(con: asyncpg.Connection) -> list[dict[str, Any]]:
    results = []
    for name, sql in INVARIANTS.items():
        rows = await con.fetch(sql + " LIMIT 5")
        results.append({"name": name, "ok": not rows,
                        "detail": "" if not rows else "; ".join(str(dict(r)) for r in rows)})
    return results


# the digest (libs.common.digest) covers every table and column of the schema but the ones named here
# (processing-order artefacts only): a replay must rebuild everything else exactly
DIGEST: dict[str, StateTable] = {}
