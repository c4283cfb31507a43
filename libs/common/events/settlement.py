"""Settlement's facts: money held, charged, released."""

from __future__ import annotations

from uuid import UUID

from libs.common.envelope import Payload
from libs.common.events import event
from libs.common.events.matching import JobMatched


@event("FundsHeld", subject="settlement.funds.held")
class FundsHeld(Payload):
    """The job's money is in escrow: placement may now run it (the match travels along)."""

    job_id: UUID
    tenant: str
    amount_micro_eur: int  # (caps x DTUs and GPUs) x expected hours
    match: JobMatched | None = None


@event("InsufficientFunds", subject="settlement.funds.insufficient")
class InsufficientFunds(Payload):
    """The wallet cannot cover the job's hold: the job is refused before it is placed."""

    job_id: UUID
    tenant: str
    name: str
    needed_micro_eur: int
    available_micro_eur: int


@event("ChargePosted", subject="settlement.charge.posted")
class ChargePosted(Payload):
    """The consumer paid for a job: vendor amount + exchange fee, from the hold."""

    job_id: UUID
    tenant: str
    name: str
    vendor: str
    dtu_micro_hours: int
    price_micro_eur_per_dtu_hour: int
    vendor_micro_eur: int
    fee_micro_eur: int
    total_micro_eur: int


@event("HoldReleased", subject="settlement.hold.released")
class HoldReleased(Payload):
    job_id: UUID
    tenant: str
    amount_micro_eur: int


@event("FundsDeposited", subject="settlement.funds.deposited")
class FundsDeposited(Payload):
    tenant: str
    amount_micro_eur: int
    reference: str
