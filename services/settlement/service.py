"""Settlement use cases: hold at match time; charge as the meter runs and when it closes; void a
cancelled job's hold; expire holds that outlived their booking; pay vendors out; decide disputes.

Every transfer id derives from the event that caused it, so a redelivered or replayed event posts
nothing twice, and every batch's transfers commit together or not at all."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive, new_envelope
from libs.common.events.matching import JobExpired, JobMatched
from libs.common.events.metering import MeterClosed, MeterProgressed
from libs.common.events.placement import PlacementFailed, WorkloadCancelled
from libs.common.events.sdk import DepositRequested, DisputeResolutionRequested, PayoutRequested
from libs.common.events.settlement import (
    ChargePosted,
    DisputeOpened,
    DisputeResolved,
    FundsDeposited,
    FundsHeld,
    HoldReleased,
    InsufficientFunds,
    PayoutPosted,
    PayoutRefused,
    UsageCharged,
)
from libs.common.ids import STRONGMOOSE_NS, derived_id
from libs.common.subjects import OPERATOR_PARTY, tenant_party, vendor_party
from services.settlement import domain, store
from services.settlement.domain import Paid, Use

SOURCE = "settlement"
DEPOSITS_NS = uuid5(STRONGMOOSE_NS, "deposit")
PAYOUTS_NS = uuid5(STRONGMOOSE_NS, "payout")
FEES = "exchange:fees"
ROUNDING = "exchange:rounding"  # sub-micro-euro remainders of splitting a charge (see domain)


class HoldMissing(Exception):
    """A meter closed before this service saw the job's match: transient, retried after a delay."""


def tenant_account(tenant: str) -> str:
    return f"tenant:{tenant}"


def escrow_account(tenant: str) -> str:
    return f"escrow:{tenant}"


def vendor_account(vendor: str) -> str:
    return f"vendor:{vendor}"


def dispute_account(vendor: str) -> str:
    return f"dispute:{vendor}"


FUNDING = "external:funding"  # money enters only by a deposit, from outside the exchange
PAYOUTS = "external:payouts"  # and leaves only by a payout to a vendor


async def deposit(tx: asyncpg.Connection, events: list[Envelope[DepositRequested]]) -> list[Envelope[Any]]:
    """Credit tenants' wallets; a payment reference deposits once, whatever the event id."""
    expired = await _expire(tx, events)
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
    return expired + [e for e, t in zip(out, transfers, strict=True) if t[0] in posted]


async def hold_funds(tx: asyncpg.Connection, events: list[Envelope[JobMatched]], *,
                     hold_grace_s: int = 3600) -> list[Envelope[Any]]:
    """Move (caps x DTUs and GPUs) x expected hours from the tenant's wallet into escrow per matched job,
    or refuse the job when the wallet cannot cover it. Wallets are locked for the batch, so two jobs
    the balance cannot both cover never both pass, whichever instance handles them. The hold expires
    `hold_grace_s` after the booked window ends. A job booked again because its workload never started
    (attempt > 1) keeps the hold it has (`_move_holds`)."""
    out = await _expire(tx, events)
    again = [ev.payload.job_id for ev in events if ev.payload.attempt > 1]
    holds = {k: dict(v) for k, v in (await store.lock_holds(tx, again)).items()} if again else {}
    out += await _move_holds(tx, [ev for ev in events if ev.payload.job_id in holds], holds, hold_grace_s)
    events = [ev for ev in events if ev.payload.job_id not in holds]
    if not events:
        return out
    rows = []
    for ev in events:
        p, r = ev.payload, ev.payload.request
        amount = domain.hold_amount(r.max_micro_eur_per_dtu_hour, p.dtu_rate, r.expected_duration_s,
                                    r.resources.gpu, r.max_micro_eur_per_gpu_hour or 0)
        rows.append((p.job_id, r.tenant, r.name, p.vendor, amount, p.price_micro_eur_per_dtu_hour, ev.time,
                     r.resources.gpu, p.price_micro_eur_per_gpu_hour or 0,
                     p.end_at + timedelta(seconds=hold_grace_s)))
    available = await store.lock_wallets(tx, sorted({tenant_account(r[1]) for r in rows}))
    already = await store.existing_holds(tx, [r[0] for r in rows])
    covered = []
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


async def _move_holds(tx: asyncpg.Connection, events: list[Envelope[JobMatched]], holds: dict[UUID, dict[str, Any]],
                      hold_grace_s: int) -> list[Envelope[Any]]:
    """A job booked again after its workload never started: the one hold it has moves to the new booking
    (vendor, prices, expiry) and the new attempt is placed. No money moves: the hold depends on the job's
    caps, not on the vendor, and nothing was charged. A job whose hold closed meanwhile is not placed:
    voided, it was cancelled; posted, it ran; expired, its money went back to the wallet, so the new
    booking is refused as unfunded (and matching frees it)."""
    out: list[Envelope[Any]] = []
    moves = []
    for ev in events:
        p, h = ev.payload, holds[ev.payload.job_id]
        if h["status"] == "pending" and store.paid_of(h).total == 0 and not h["charged_dtu_micro_hours"]:
            moves.append((p.job_id, p.vendor, p.price_micro_eur_per_dtu_hour, p.price_micro_eur_per_gpu_hour or 0,
                          p.end_at + timedelta(seconds=hold_grace_s)))
            out.append(derive(ev, FundsHeld(job_id=p.job_id, tenant=h["tenant"], amount_micro_eur=h["amount"],
                                            match=p), source=SOURCE))
        elif h["status"] == "expired":
            wallet = tenant_account(h["tenant"])
            available = (await store.lock_wallets(tx, [wallet]))[wallet]
            out.append(derive(ev, InsufficientFunds(job_id=p.job_id, tenant=h["tenant"], name=h["name"],
                                                    needed_micro_eur=h["amount"], available_micro_eur=available),
                              source=SOURCE))
    await store.move_holds(tx, moves)
    return out


async def wait_for_rebooking(tx: asyncpg.Connection, events: list[Envelope[PlacementFailed]], *,
                             hold_grace_s: int = 3600) -> list[Envelope[Any]]:
    """A workload never started and its job waits to be booked again: its hold must not expire with the
    booking that failed, only after the job's deadline (by when it is booked again, or JobExpired voids it).
    The event's time may be the vendor's clock, so it expires nobody's hold."""
    await store.extend_holds(tx, sorted({(ev.payload.job_id, ev.payload.deadline + timedelta(seconds=hold_grace_s))
                                         for ev in events}))
    return []


async def void_expired_jobs(tx: asyncpg.Connection, events: list[Envelope[JobExpired]]) -> list[Envelope[Any]]:
    """A job that waited to be booked again until its deadline passed (JobExpired) ran nowhere: what its
    hold has left returns to the wallet now. A job never held has nothing to return."""
    holds = {k: dict(v) for k, v in (await store.lock_holds(tx, [ev.payload.job_id for ev in events])).items()}
    closing: dict[UUID, tuple[Envelope[Any], dict[str, Any]]] = {}
    for ev in events:
        h = holds.get(ev.payload.job_id)
        if h is not None and h["status"] == "pending" and h["job_id"] not in closing:
            closing[h["job_id"]] = (ev, h)
    return await _release(tx, list(closing.values()), "expired")


async def charge_usage(tx: asyncpg.Connection, events: list[Envelope[Any]], *, fee_bps: int) -> list[Envelope[Any]]:
    """Charge metering's cumulative readings (MeterProgressed while a job runs, MeterClosed at its end):
    each posts only the increase over what the hold already paid; the final one also releases the rest
    of the hold and opens a dispute when part of the vendor's claim is disputed. A reading's time is
    the vendor's clock, so it never expires anyone's hold (see `_expire`)."""
    out: list[Envelope[Any]] = []
    holds = {k: dict(v) for k, v in (await store.lock_holds(tx, [ev.payload.job_id for ev in events])).items()}
    transfers: list[store.Transfer] = []
    charges, disputes, changed = [], [], {}
    for ev in events:
        p: MeterProgressed | MeterClosed = ev.payload
        h = holds.get(p.job_id)
        if h is None:
            raise HoldMissing(f"no hold yet for job {p.job_id}")
        if h["status"] != "pending":
            continue  # the hold is closed (posted, voided or expired): a late reading charges nothing
        final = isinstance(p, MeterClosed)
        dtu = max(p.dtu_micro_hours, h["charged_dtu_micro_hours"])
        if not final and dtu <= h["charged_dtu_micro_hours"]:
            continue  # a repeated or stale reading
        gpu = max(domain.gpu_micro_hours(h["gpus"], p.wall_us), h["charged_gpu_micro_hours"])
        use = Use(h["price_micro_eur_per_dtu_hour"], dtu, h["price_micro_eur_per_gpu_hour"], gpu,
                  min(p.disputed_dtu_micro_hours, dtu))
        before = store.paid_of(h)
        after = domain.paid_after(h["amount"], use, fee_bps, before, final=final)
        if not final and after == before:
            continue  # the use outgrew the hold: the final reading settles it
        transfers += _charge_legs(ev, h, before, after)
        release = h["amount"] - after.total if final else 0
        if release:
            transfers.append((derived_id(ev.id, "transfer/release"), escrow_account(h["tenant"]),
                              tenant_account(h["tenant"]), release, "release", p.job_id, ev.id, ev.time))
        charges.append((derived_id(ev.id, "charge"), p.job_id, "final" if final else "usage",
                        dtu - h["charged_dtu_micro_hours"], gpu - h["charged_gpu_micro_hours"],
                        after.vendor - before.vendor, after.disputed - before.disputed, after.fee - before.fee,
                        after.rounding - before.rounding, after.total - before.total, ev.id, ev.time))
        h.update(charged_dtu_micro_hours=dtu, charged_gpu_micro_hours=gpu, vendor_micro_eur=after.vendor,
                 disputed_micro_eur=after.disputed, fee_micro_eur=after.fee, rounding_micro_eur=after.rounding,
                 released_micro_eur=h["released_micro_eur"] + release, status="posted" if final else "pending")
        changed[p.job_id] = h
        figures = dict(job_id=p.job_id, tenant=h["tenant"], name=h["name"], vendor=h["vendor"], dtu_micro_hours=dtu,
                       price_micro_eur_per_dtu_hour=h["price_micro_eur_per_dtu_hour"], vendor_micro_eur=after.vendor,
                       fee_micro_eur=after.fee, total_micro_eur=after.total, disputed_micro_eur=after.disputed,
                       rounding_micro_eur=after.rounding)
        if not final:
            out.append(derive(ev, UsageCharged(**figures), source=SOURCE))
            continue
        out.append(derive(ev, ChargePosted(**figures), source=SOURCE))
        out.append(derive(ev, HoldReleased(job_id=p.job_id, tenant=h["tenant"], amount_micro_eur=release),
                          source=SOURCE))
        if after.disputed:
            disputes.append((p.job_id, h["vendor"], h["tenant"], p.claimed_dtu_micro_hours, p.witness_dtu_micro_hours,
                             use.disputed_dtu_micro_hours, after.disputed, ev.time))
            out.append(derive(ev, DisputeOpened(
                job_id=p.job_id, tenant=h["tenant"], name=h["name"], vendor=h["vendor"],
                disputed_dtu_micro_hours=use.disputed_dtu_micro_hours,
                claimed_dtu_micro_hours=p.claimed_dtu_micro_hours, witness_dtu_micro_hours=p.witness_dtu_micro_hours,
                held_micro_eur=after.disputed), source=SOURCE))
    await store.post(tx, transfers)
    await store.update_holds(tx, list(changed.values()))
    await store.insert_charges(tx, charges)
    await store.open_disputes(tx, disputes)
    return out


def _charge_legs(ev: Envelope[Any], h: dict[str, Any], before: Paid, after: Paid) -> list[store.Transfer]:
    """The transfers that take a hold from `before` to `after`: escrow pays the vendor, its dispute
    account, the fee and the rounding; a dispute that shrank releases its excess to the vendor."""
    escrow, vendor, dispute = escrow_account(h["tenant"]), vendor_account(h["vendor"]), dispute_account(h["vendor"])
    d_vendor, d_disputed = after.vendor - before.vendor, after.disputed - before.disputed
    legs = [(FEES, after.fee - before.fee, "fee"), (ROUNDING, after.rounding - before.rounding, "rounding")]
    if d_disputed >= 0:
        legs += [(vendor, d_vendor, "charge"), (dispute, d_disputed, "dispute")]
    else:
        legs += [(vendor, d_vendor + d_disputed, "charge")]
    transfers = [(derived_id(ev.id, f"transfer/{kind}"), escrow, account, amount, kind, h["job_id"], ev.id, ev.time)
                 for account, amount, kind in legs]
    if d_disputed < 0:
        transfers.append((derived_id(ev.id, "transfer/dispute_release"), dispute, vendor, -d_disputed,
                          "dispute_release", h["job_id"], ev.id, ev.time))
    return transfers


async def void_holds(tx: asyncpg.Connection, events: list[Envelope[WorkloadCancelled]]) -> list[Envelope[Any]]:
    """A job cancelled before it ran pays nothing: its hold is voided, all of it back to the wallet."""
    out = await _expire(tx, events)
    holds = {k: dict(v) for k, v in (await store.lock_holds(tx, [ev.payload.job_id for ev in events])).items()}
    voiding: dict[UUID, tuple[Envelope[Any], dict[str, Any]]] = {}
    for ev in events:
        h = holds.get(ev.payload.job_id)  # none: the job was cancelled before it was ever held
        if h is not None and h["status"] == "pending" and h["job_id"] not in voiding:
            voiding[h["job_id"]] = (ev, h)
    return out + await _release(tx, list(voiding.values()), "voided")


async def _expire(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """Expire the pending holds whose booking ended (plus grace) before the newest event of the batch:
    what they did not pay returns to the wallet, and no later reading charges them. Only events whose
    time the exchange stamped call this (matches, cancellations, and commands timed by the stream),
    never metering's readings, which carry the vendor's clock. An expiry is a fact of the hold alone:
    its ids and time derive from the hold, whichever event noticed it."""
    newest = max(e.time for e in events)
    return await _release(tx, [(None, dict(h)) for h in await store.lock_expired_holds(tx, newest)], "expired")


async def _release(tx: asyncpg.Connection, closing: list[tuple[Envelope[Any] | None, dict[str, Any]]],
                   reason: str) -> list[Envelope[Any]]:
    """Void (cause: the cancellation) or expire (cause: None) holds: the unspent rest returns to the wallet."""
    kind = {"voided": "void", "expired": "expire"}[reason]
    transfers, out = [], []
    for ev, h in closing:
        rest = h["amount"] - store.paid_of(h).total - h["released_micro_eur"]
        released = HoldReleased(job_id=h["job_id"], tenant=h["tenant"], amount_micro_eur=rest, reason=reason)
        if ev is None:
            event_id, at = derived_id(h["job_id"], "hold/expired"), h["expires_at"]
            out.append(new_envelope(released, source=SOURCE, party=tenant_party(h["tenant"]),
                                    correlation_id=h["job_id"], time=at, id=event_id))
        else:
            event_id, at = ev.id, ev.time
            out.append(derive(ev, released, source=SOURCE, party=tenant_party(h["tenant"]),
                              correlation_id=h["job_id"]))
        transfers.append((derived_id(event_id, f"transfer/{kind}"), escrow_account(h["tenant"]),
                          tenant_account(h["tenant"]), rest, kind, h["job_id"], event_id, at))
        h.update(status=reason, released_micro_eur=h["released_micro_eur"] + rest)
    await store.post(tx, transfers)
    await store.update_holds(tx, [h for _, h in closing])
    return out


async def pay_out(tx: asyncpg.Connection, events: list[Envelope[PayoutRequested]]) -> list[Envelope[Any]]:
    """Pay vendors out of their payable, once per payment reference, never beyond the balance."""
    for ev in events:
        if ev.party != vendor_party(ev.payload.vendor):
            raise PermanentError(f"a payout of {ev.payload.vendor}'s money asked for by {ev.party}")
    out = await _expire(tx, events)
    available = await store.lock_wallets(tx, sorted({vendor_account(ev.payload.vendor) for ev in events}))
    requests = {uuid5(PAYOUTS_NS, f"{ev.payload.vendor}/{ev.payload.reference}"): ev for ev in events}
    paid_before = await store.existing_payouts(tx, list(requests))
    transfers = []
    for tid, ev in requests.items():
        p, account = ev.payload, vendor_account(ev.payload.vendor)
        transfer = (tid, account, PAYOUTS, p.amount_micro_eur, "payout", None, ev.id, ev.time)
        if tid in paid_before:
            transfers.append(transfer)  # a no-op, or a TransferConflict when the amount differs
        elif p.amount_micro_eur > available[account]:
            out.append(derive(ev, PayoutRefused(vendor=p.vendor, amount_micro_eur=p.amount_micro_eur,
                                                available_micro_eur=available[account], reference=p.reference),
                              source=SOURCE))
        else:
            available[account] -= p.amount_micro_eur
            transfers.append(transfer)
            out.append(derive(ev, PayoutPosted(vendor=p.vendor, amount_micro_eur=p.amount_micro_eur,
                                               reference=p.reference), source=SOURCE))
    posted = await store.post(tx, transfers)
    await store.record_payouts(tx, [(requests[t[0]].payload.vendor, requests[t[0]].payload.reference, t[3], t[0], t[7])
                                    for t in transfers if t[0] in posted])
    return out


async def resolve_disputes(tx: asyncpg.Connection,
                           events: list[Envelope[DisputeResolutionRequested]]) -> list[Envelope[Any]]:
    """An operator's decision: the held amount goes to the vendor, or back to the tenant's wallet with the fee
    charged on it (`domain.fee_on_disputed`)."""
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        if ev.party != OPERATOR_PARTY:
            raise PermanentError(f"a dispute decision sent by {ev.party}: only operators decide disputes")
        d = await store.lock_dispute(tx, p.job_id)
        if d is None:
            raise PermanentError(f"no dispute for job {p.job_id}")
        if d["status"] != "open":
            if d["status"] != p.pay:
                raise PermanentError(f"the dispute of job {p.job_id} was decided for the {d['status']} already")
            continue
        h = dict((await store.lock_holds(tx, [p.job_id]))[p.job_id])
        amount = h["disputed_micro_eur"]
        if p.pay == "vendor":
            fee_back = 0
            legs = [(derived_id(ev.id, "transfer/dispute_release"), dispute_account(d["vendor"]),
                     vendor_account(d["vendor"]), amount, "dispute_release", p.job_id, ev.id, ev.time)]
        else:
            fee_back = domain.fee_on_disputed(h["fee_micro_eur"], amount, h["vendor_micro_eur"])
            legs = [(derived_id(ev.id, "transfer/refund"), dispute_account(d["vendor"]), tenant_account(d["tenant"]),
                     amount, "refund", p.job_id, ev.id, ev.time),
                    (derived_id(ev.id, "transfer/fee_refund"), FEES, tenant_account(d["tenant"]), fee_back,
                     "fee_refund", p.job_id, ev.id, ev.time)]
        await store.post(tx, [leg for leg in legs if leg[3]])
        h.update(disputed_micro_eur=0, vendor_micro_eur=h["vendor_micro_eur"] + (amount if p.pay == "vendor" else 0),
                 fee_micro_eur=h["fee_micro_eur"] - fee_back)
        await store.update_holds(tx, [h])
        await store.insert_charges(tx, [(derived_id(ev.id, "charge"), p.job_id,
                                         "dispute_paid" if p.pay == "vendor" else "refund", 0, 0,
                                         amount if p.pay == "vendor" else 0, -amount, -fee_back, 0,
                                         0 if p.pay == "vendor" else -amount - fee_back, ev.id, ev.time)])
        await store.resolve_dispute(tx, p.job_id, p.pay, ev.time, p.note)
        out.append(derive(ev, DisputeResolved(job_id=p.job_id, tenant=d["tenant"], vendor=d["vendor"], paid_to=p.pay,
                                              amount_micro_eur=amount, fee_refunded_micro_eur=fee_back), source=SOURCE,
                          party=tenant_party(d["tenant"]), correlation_id=p.job_id))
    return out
