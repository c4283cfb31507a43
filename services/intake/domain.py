"""Pure rules of the lifecycle view: which status an event means and a human line about it; whether a
job can still be cancelled."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from libs.common.envelope import Envelope
from libs.common.events.intake import JobAccepted, JobCancelled, JobCancelRefused, JobRejected
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable
from libs.common.events.metering import MeterClosed
from libs.common.events.placement import (
    PlacementFailed,
    WorkloadAssigned,
    WorkloadCancelled,
    WorkloadCancelRequested,
    WorkloadFailed,
    WorkloadFinished,
    WorkloadStarted,
)
from libs.common.events.settlement import (
    ChargePosted,
    DisputeOpened,
    DisputeResolved,
    FundsHeld,
    HoldReleased,
    InsufficientFunds,
    UsageCharged,
)

# a status only moves forward: facts from different streams may be handled in any order
RANK = {"accepted": 1, "waiting": 2, "matched": 3, "placed": 4, "running": 5, "finished": 6, "failed": 6,
        "metered": 7, "settled": 8, "expired": 9, "refused": 9, "cancelled": 9}
# a job in one of these has ended (or will end without running more): it can no longer be cancelled
ENDED = frozenset({"finished", "failed", "metered", "settled", "expired", "refused", "cancelled"})


def eur(micro: int) -> str:
    return f"€{Decimal(micro) / 1_000_000:.6f}"


def status_of(env: Envelope[Any]) -> str | None:
    p = env.payload
    return {
        JobAccepted: "accepted", JobUnmatchable: "waiting", JobMatched: "matched", JobExpired: "expired",
        WorkloadAssigned: "placed", WorkloadStarted: "running", WorkloadFinished: "finished",
        WorkloadFailed: "failed", MeterClosed: "metered", ChargePosted: "settled", InsufficientFunds: "refused",
        JobCancelled: "cancelled", WorkloadCancelled: "cancelled",
    }.get(type(p))


def cancel_verdict(tenant: str, name: str, status: str | None) -> tuple[Literal["cancel", "already", "refuse"], str]:
    """What a cancel request does to a job in `status` (None: the tenant has no such job), with the
    line the consumer reads. Cancelling twice changes nothing; a job that has ended cannot be cancelled."""
    if status is None:
        return "refuse", f"no job {tenant}/{name}"
    if status == "cancelled":
        return "already", f"job {tenant}/{name} is cancelled already; nothing changed"
    if status in ENDED:
        return "refuse", (f"job {tenant}/{name} has ended (status {status}); "
                          "only a job that has not ended can be cancelled")
    return "cancel", f"job {tenant}/{name} cancelled (it was {status})"


def facts_of(env: Envelope[Any]) -> dict[str, Any]:
    """What an event adds to the job's row besides its status: where it runs, how it ended, what it cost."""
    p = env.payload
    if isinstance(p, JobMatched):
        return {"vendor": p.vendor, "node": p.node}
    if isinstance(p, WorkloadFinished):
        return {"outcome": "finished"}
    if isinstance(p, WorkloadFailed):
        return {"outcome": "failed"}
    if isinstance(p, JobExpired):
        return {"outcome": "expired"}
    if isinstance(p, InsufficientFunds):
        return {"outcome": "refused"}
    if isinstance(p, (JobCancelled, WorkloadCancelled)):
        return {"outcome": "cancelled"}
    if isinstance(p, (ChargePosted, UsageCharged)):
        return {"total_micro_eur": p.total_micro_eur}
    return {}


def describe(env: Envelope[Any]) -> str:
    """One line a consumer can read in `smctl describe job`: what happened and why."""
    p = env.payload
    if isinstance(p, JobAccepted):
        r = p.request
        return (f"accepted: {r.resources.vcpu} vCPU, {r.resources.memory_gib} GiB for {r.expected_duration_s} s, "
                f"cap {eur(r.max_micro_eur_per_dtu_hour)}/DTU-h, deadline {r.not_after.isoformat()}")
    if isinstance(p, JobRejected):
        return "rejected: " + "; ".join(str(e) for e in p.errors)
    if isinstance(p, JobUnmatchable):
        why = "; ".join(f"{m.constraint} excluded {m.excluded}: {m.detail}" for m in p.reasons)
        return f"no offer fits yet ({p.offers_considered} offers): {why}"
    if isinstance(p, JobMatched):
        again = f"matched again (attempt {p.attempt})" if p.attempt > 1 else "matched"
        return (f"{again} to {p.vendor}/{p.node} in {p.region} at {eur(p.price_micro_eur_per_dtu_hour)}/DTU-h, "
                f"booked {p.start_at.isoformat()} to {p.end_at.isoformat()}")
    if isinstance(p, JobExpired):
        return f"expired: {p.reason}"
    if isinstance(p, JobCancelled):
        why = f": {p.reason}" if p.reason else ""
        if p.previous_status == "running":
            return f"cancelled while running{why}; the vendor stops it and only what it used is charged"
        return f"cancelled (it was {p.previous_status}){why}"
    if isinstance(p, JobCancelRefused):
        return f"cancel refused: {p.reason}"
    if isinstance(p, WorkloadCancelled):
        where = f" at {p.vendor}" if p.vendor else ""
        return f"cancelled before it ran{where}: nothing to pay, the hold is voided ({p.reason})"
    if isinstance(p, WorkloadCancelRequested):
        return f"vendor {p.vendor} told to stop workload {p.workload_id} on {p.node}: {p.reason}"
    if isinstance(p, WorkloadAssigned):
        return f"assigned to vendor {p.vendor} node {p.node} (workload {p.workload_id})"
    if isinstance(p, WorkloadStarted):
        return f"running on {p.vendor}/{p.node}"
    if isinstance(p, WorkloadFinished):
        return f"finished with exit code {p.exit_code}"
    if isinstance(p, WorkloadFailed):
        return f"failed: {p.reason}"
    if isinstance(p, PlacementFailed):
        return (f"not started on {p.vendor}/{p.node} (attempt {p.attempt}): {p.reason}; nothing ran, nothing is "
                "charged; it is booked again on another node")
    if isinstance(p, MeterClosed):
        return (f"metered: {Decimal(p.dtu_micro_hours) / 1_000_000:.6f} DTU-h "
                f"(cpu {p.cpu_us / 1e6:.3f} s, peak {p.rss_peak_bytes // 2**20} MiB, {p.samples} samples)")
    if isinstance(p, FundsHeld):
        return f"funds held in escrow: {eur(p.amount_micro_eur)}"
    if isinstance(p, InsufficientFunds):
        return (f"refused: the hold of {eur(p.needed_micro_eur)} exceeds the wallet's {eur(p.available_micro_eur)}; "
                f"deposit with `smctl wallet deposit {p.tenant} AMOUNT`")
    if isinstance(p, HoldReleased):
        why = {"posted": "after the final charge", "voided": "the job was cancelled before it ran",
               "expired": "the hold outlived the job's booking"}[p.reason]
        return f"hold released ({why}): {eur(p.amount_micro_eur)} back to the wallet"
    if isinstance(p, UsageCharged):
        return (f"charged so far: {eur(p.total_micro_eur)} for {Decimal(p.dtu_micro_hours) / 1_000_000:.6f} DTU-h "
                f"(vendor {eur(p.vendor_micro_eur)}, fee {eur(p.fee_micro_eur)})")
    if isinstance(p, ChargePosted):
        extra = "".join(f" + {what} {eur(v)}" for what, v in (("in dispute", p.disputed_micro_eur),
                                                               ("rounding", p.rounding_micro_eur)) if v)
        return (f"settled: {eur(p.total_micro_eur)} = vendor {eur(p.vendor_micro_eur)} + fee {eur(p.fee_micro_eur)}"
                + extra)
    if isinstance(p, DisputeOpened):
        witness = "none" if p.witness_dtu_micro_hours is None else \
            f"{Decimal(p.witness_dtu_micro_hours) / 1_000_000:.6f}"
        return (f"disputed: {p.vendor} claimed {Decimal(p.claimed_dtu_micro_hours) / 1_000_000:.6f} DTU-h, "
                f"metering measured {witness}; {eur(p.held_micro_eur)} of its pay held until an operator decides")
    if isinstance(p, DisputeResolved):
        fee = f" and its fee {eur(p.fee_refunded_micro_eur)}" if p.fee_refunded_micro_eur else ""
        return f"dispute decided: {eur(p.amount_micro_eur)}{fee} paid to the {p.paid_to}"
    return env.type
