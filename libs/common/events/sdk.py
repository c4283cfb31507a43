"""Commands from consumers (SDK, smctl): the raw manifest, validated by intake; money paid in."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from libs.common.envelope import Payload
from libs.common.events import event


@event("JobSubmitted", subject="sdk.job.submitted")
class JobSubmitted(Payload):
    """A consumer submitted a manifest; intake decides whether it is a valid job."""

    manifest: dict[str, Any]


@event("JobCancelRequested", subject="sdk.job.cancel")
class JobCancelRequested(Payload):
    """A consumer asks to cancel one of its jobs; intake cancels it (JobCancelled) or says why not
    (JobCancelRefused). Asking again for a cancelled job changes nothing."""

    tenant: str
    name: str = Field(min_length=1, max_length=253)
    reason: str = Field("", max_length=500)


@event("DepositRequested", subject="sdk.wallet.deposit")
class DepositRequested(Payload):
    """Money paid into a tenant's wallet (the only way money enters the exchange).

    `reference` is the payment's own id: the same reference deposits once, however often it is sent.
    """

    tenant: str
    amount_micro_eur: int = Field(gt=0, le=10**12)  # at most one million euros at a time
    reference: str = Field(min_length=1, max_length=200)


@event("PayoutRequested", subject="sdk.vendor.payout")
class PayoutRequested(Payload):
    """A vendor asks for (part of) its payable to be paid out to its bank; once per reference."""

    vendor: str
    amount_micro_eur: int = Field(gt=0, le=10**12)
    reference: str = Field(min_length=1, max_length=200)


@event("DisputeResolutionRequested", subject="sdk.dispute.resolve")
class DisputeResolutionRequested(Payload):
    """An operator decides a dispute: the held amount goes to the vendor or back to the tenant."""

    job_id: UUID
    pay: Literal["vendor", "tenant"]
    note: str = Field("", max_length=500)
