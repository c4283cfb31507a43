"""Pure rules of the lifecycle view: which status an event means and a human line about it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from libs.common.envelope import Envelope
from libs.common.events.intake import JobAccepted, JobRejected
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable
from libs.common.events.metering import MeterClosed
from libs.common.events.placement import WorkloadAssigned, WorkloadFailed, WorkloadFinished, WorkloadStarted
from libs.common.events.settlement import ChargePosted, FundsHeld, HoldReleased, InsufficientFunds

# a status only moves forward: facts from different streams may be handled in any order
RANK = {"accepted": 1, "waiting": 2, "matched": 3, "placed": 4, "running": 5, "finished": 6, "failed": 6,
        "metered": 7, "settled": 8, "expired": 9, "refused": 9}


def eur(micro: int) -> str:
    return f"€{Decimal(micro) / 1_000_000:.6f}"


def status_of(env: Envelope[Any]) -> str | None:
    p = env.payload
    return {
        JobAccepted: "accepted", JobUnmatchable: "waiting", JobMatched: "matched", JobExpired: "expired",
        WorkloadAssigned: "placed", WorkloadStarted: "running", WorkloadFinished: "finished",
        WorkloadFailed: "failed", MeterClosed: "metered", ChargePosted: "settled", InsufficientFunds: "refused",
    }.get(type(p))


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
    if isinstance(p, ChargePosted):
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
        return (f"matched to {p.vendor}/{p.node} in {p.region} at {eur(p.price_micro_eur_per_dtu_hour)}/DTU-h, "
                f"booked {p.start_at.isoformat()} to {p.end_at.isoformat()}")
    if isinstance(p, JobExpired):
        return f"expired: {p.reason}"
    if isinstance(p, WorkloadAssigned):
        return f"assigned to vendor {p.vendor} node {p.node} (workload {p.workload_id})"
    if isinstance(p, WorkloadStarted):
        return f"running on {p.vendor}/{p.node}"
    if isinstance(p, WorkloadFinished):
        return f"finished with exit code {p.exit_code}"
    if isinstance(p, WorkloadFailed):
        return f"failed: {p.reason}"
    if isinstance(p, MeterClosed):
        return (f"metered: {Decimal(p.dtu_micro_hours) / 1_000_000:.6f} DTU-h "
                f"(cpu {p.cpu_us / 1e6:.3f} s, peak {p.rss_peak_bytes // 2**20} MiB, {p.samples} samples)")
    if isinstance(p, FundsHeld):
        return f"funds held in escrow: {eur(p.amount_micro_eur)}"
    if isinstance(p, InsufficientFunds):
        return (f"refused: the hold of {eur(p.needed_micro_eur)} exceeds the wallet's {eur(p.available_micro_eur)}; "
                f"deposit with `smctl wallet deposit {p.tenant} AMOUNT`")
    if isinstance(p, HoldReleased):
        return f"hold released: {eur(p.amount_micro_eur)} back to the wallet"
    if isinstance(p, ChargePosted):
        return (f"settled: {eur(p.total_micro_eur)} = vendor {eur(p.vendor_micro_eur)} + fee {eur(p.fee_micro_eur)}")
    return env.type
