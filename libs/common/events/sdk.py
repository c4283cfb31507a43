"""Commands from consumers (SDK, smctl): the raw manifest, validated by intake; money paid in."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from libs.common.envelope import Payload
from libs.common.events import event


@event("JobSubmitted", subject="sdk.job.submitted")
class JobSubmitted(Payload):
    """A consumer submitted a manifest; intake decides whether it is a valid job."""

    manifest: dict[str, Any]


@event("DepositRequested", subject="sdk.wallet.deposit")
class DepositRequested(Payload):
    """Money paid into a tenant's wallet (the only way money enters the exchange).

    `reference` is the payment's own id: the same reference deposits once, however often it is sent.
    """

    tenant: str
    amount_micro_eur: int = Field(gt=0, le=10**12)  # at most one million euros at a time
    reference: str = Field(min_length=1, max_length=200)
