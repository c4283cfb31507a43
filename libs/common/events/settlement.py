"""Settlement's facts: money held, charged, released, disputed and paid out."""

from __future__ import annotations

from typing import Literal
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


class _Charged(Payload):
    job_id: UUID
    tenant: str
    name: str
    vendor: str
    dtu_micro_hours: int  # billable DTU-hours x 1e6 charged so far
    price_micro_eur_per_dtu_hour: int
    vendor_micro_eur: int  # so far, to the vendor's payable
    fee_micro_eur: int  # so far, to the exchange
    total_micro_eur: int  # so far, out of the hold: vendor + disputed + fee + rounding
    disputed_micro_eur: int = 0  # of the vendor's share, held until the dispute is resolved
    rounding_micro_eur: int = 0  # sub-micro-euro remainders, to the rounding account


@event("UsageCharged", subject="settlement.usage.charged")
class UsageCharged(_Charged):
    """A running job paid for its usage so far (cumulative figures): long jobs pay as they go."""


@event("ChargePosted", subject="settlement.charge.posted")
class ChargePosted(_Charged):
    """The consumer paid for a job's whole measured use, from the hold (cumulative, final)."""


@event("HoldReleased", subject="settlement.hold.released")
class HoldReleased(Payload):
    """What is left of a hold returns to the wallet: after the final charge (posted), at once when the
    job was cancelled before it ran (voided), or when the hold outlived its job's booking (expired)."""

    job_id: UUID
    tenant: str
    amount_micro_eur: int
    reason: Literal["posted", "voided", "expired"] = "posted"


@event("DisputeOpened", subject="settlement.dispute.opened")
class DisputeOpened(Payload):
    """Metering's independent measurement does not support part of the vendor's claim: that part of
    the vendor's payout is held in the vendor's dispute account until an operator resolves it."""

    job_id: UUID
    tenant: str
    name: str
    vendor: str
    disputed_dtu_micro_hours: int
    claimed_dtu_micro_hours: int
    witness_dtu_micro_hours: int | None
    held_micro_eur: int


@event("DisputeResolved", subject="settlement.dispute.resolved")
class DisputeResolved(Payload):
    job_id: UUID
    tenant: str
    vendor: str
    paid_to: Literal["vendor", "tenant"]
    amount_micro_eur: int  # the disputed amount, to the vendor or back to the tenant
    fee_refunded_micro_eur: int = 0  # decided for the tenant: the fee charged on the disputed use, back too


@event("PayoutPosted", subject="settlement.payout.posted")
class PayoutPosted(Payload):
    """Money left the exchange: from a vendor's payable to its bank (the only way money leaves)."""

    vendor: str
    amount_micro_eur: int
    reference: str


@event("PayoutRefused", subject="settlement.payout.refused")
class PayoutRefused(Payload):
    vendor: str
    amount_micro_eur: int
    available_micro_eur: int
    reference: str


@event("FundsDeposited", subject="settlement.funds.deposited")
class FundsDeposited(Payload):
    tenant: str
    amount_micro_eur: int
    reference: str
