"""Settlement use cases: hold at match time, charge and pay out when the meter closes."""

from __future__ import annotations

from typing import Any
from uuid import uuid5

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.matching import JobMatched
from libs.common.events.metering import MeterClosed
from libs.common.events.sdk import DepositRequested
from libs.common.events.settlement import ChargePosted, FundsDeposited, FundsHeld, HoldReleased, InsufficientFunds
from libs.common.ids import STRONGMOOSE_NS, derived_id
from libs.common.subjects import tenant_party
from services.settlement import domain, store

SOURCE = "settlement"
DEPOSITS_NS = uuid5(STRONGMOOSE_NS, "deposit")
FEES = "exchange:fees"


class HoldMissing(Exception):
    """A meter closed before this service saw the job's match: transient, retried after a delay."""


def tenant_account(tenant: str) -> str:
    return f"tenant:{tenant}"


def escrow_account(tenant: str) -> str:
    return f"escrow:{tenant}"


def vendor_account(vendor: str) -> str:
    return f"vendor:{vendor}"


FUNDING = "external:funding"  # money enters only by a deposit, from outside the exchange


async def deposit(tx: asyncpg.Connection, events: list[Envelope[DepositRequested]]) -> list[Envelope[Any]]:
    """Credit tenants' wallets; a payment reference deposits once, whatever the event id."""
    out: list[Envelope[Any]] = []
    transfers = []
    for ev in events:
        p = ev.payload
        if ev.party != tenant_party(p.tenant):
            raise PermanentError(f"a deposit into {p.tenant}'s wallet sent by {ev.party}")
        tid = uuid5(DEPOSITS_NS, f"{p.tenant}/{p.reference}")
        transfers.append((tid, FUNDING, tenant_account(p.tenant), p.amount_micro_eur, "deposit", None, ev.id,
                          ev.time))
        out.append(derive(ev, FundsDeposited(tenant=p.tenant, amount_micro_eur=p.amount_micro_eur,
                                             reference=p.reference), source=SOURCE))
    posted = await store.post(tx, transfers)
    await store.record_deposits(tx, [(e.payload.tenant, e.payload.reference, t[3], t[0], t[7])
                                     for e, t in zip(events, transfers, strict=True) if t[0] in posted])
    return [e for e, t in zip(out, transfers, strict=True) if t[0] in posted]


async def hold_funds(tx: asyncpg.Connection, events: list[Envelope[JobMatched]]) -> list[Envelope[Any]]:
    """Move (caps x DTUs and GPUs) x expected hours from the tenant's wallet into escrow per matched job,
    or refuse the job when the wallet cannot cover it. Wallets are locked for the batch, so two jobs
    the balance cannot both cover never both pass, whichever instance handles them."""
    rows = []
    for ev in events:
        p, r = ev.payload, ev.payload.request
        amount = domain.hold_amount(r.max_micro_eur_per_dtu_hour, p.dtu_rate, r.expected_duration_s,
                                    r.resources.gpu, r.max_micro_eur_per_gpu_hour or 0)
        rows.append((p.job_id, r.tenant, r.name, p.vendor, amount, p.price_micro_eur_per_dtu_hour, ev.time,
                     r.resources.gpu, p.price_micro_eur_per_gpu_hour or 0))
    available = await store.lock_wallets(tx, sorted({tenant_account(r[1]) for r in rows}))
    already = await store.existing_holds(tx, [r[0] for r in rows])
    covered, out = [], []
    for ev, row in zip(events, rows, strict=True):
        job_id, tenant, amount = row[0], row[1], row[4]
        if job_id in already:
            continue  # one hold per job, even if its match came twice
        already.add(job_id)
        wallet = tenant_account(tenant)
        if amount > available[wallet]:
            out.append(derive(ev, InsufficientFunds(job_id=job_id, tenant=tenant, name=row[2], needed_micro_eur=amount,
                                                    available_micro_eur=available[wallet]), source=SOURCE))
            continue
        available[wallet] -= amount
        covered.append((ev, row))
    await store.insert_holds(tx, [row for _, row in covered])
    await store.post(tx, [(derived_id(ev.id, "transfer/hold"), tenant_account(row[1]), escrow_account(row[1]), row[4],
                           "hold", row[0], ev.id, ev.time) for ev, row in covered])
    out += [derive(ev, FundsHeld(job_id=row[0], tenant=row[1], amount_micro_eur=row[4], match=ev.payload),
                   source=SOURCE) for ev, row in covered]
    return out


async def settle_meters(tx: asyncpg.Connection, events: list[Envelope[MeterClosed]],
                        *, fee_bps: int) -> list[Envelope[Any]]:
    """Charge the consumer for measured use: escrow pays the vendor and the fee, the rest returns."""
    holds = await store.lock_holds(tx, [ev.payload.job_id for ev in events])
    out: list[Envelope[Any]] = []
    transfers = []
    lines = []
    for ev in events:
        p = ev.payload
        h = holds.get(p.job_id)
        if h is None:
            raise HoldMissing(f"no hold yet for job {p.job_id}")
        if h["status"] != "pending":
            continue
        holds[p.job_id] = {**h, "status": "settled"}  # type: ignore[assignment]
        gpu_h = domain.gpu_micro_hours(h["gpus"], p.wall_us)
        c = domain.charge(h["amount"], h["price_micro_eur_per_dtu_hour"], p.dtu_micro_hours, fee_bps,
                          h["price_micro_eur_per_gpu_hour"], gpu_h)
        escrow = escrow_account(h["tenant"])
        transfers += [
            (derived_id(ev.id, "transfer/charge"), escrow, vendor_account(h["vendor"]), c.vendor, "charge",
             p.job_id, ev.id, ev.time),
            (derived_id(ev.id, "transfer/fee"), escrow, FEES, c.fee, "fee", p.job_id, ev.id, ev.time),
            (derived_id(ev.id, "transfer/release"), escrow, tenant_account(h["tenant"]), c.release, "release",
             p.job_id, ev.id, ev.time),
        ]
        lines.append((p.job_id, h["tenant"], h["name"], h["vendor"], p.dtu_micro_hours,
                      h["price_micro_eur_per_dtu_hour"], gpu_h, h["price_micro_eur_per_gpu_hour"], c.vendor, c.fee,
                      c.total, ev.time))
        out.append(derive(ev, ChargePosted(
            job_id=p.job_id, tenant=h["tenant"], name=h["name"], vendor=h["vendor"],
            dtu_micro_hours=p.dtu_micro_hours, price_micro_eur_per_dtu_hour=h["price_micro_eur_per_dtu_hour"],
            vendor_micro_eur=c.vendor, fee_micro_eur=c.fee, total_micro_eur=c.total), source=SOURCE))
        out.append(derive(ev, HoldReleased(job_id=p.job_id, tenant=h["tenant"], amount_micro_eur=c.release),
                          source=SOURCE))
    await store.settle_holds(tx, [line[0] for line in lines])
    await store.insert_invoice_lines(tx, lines)
    await store.post(tx, transfers)
    return out
