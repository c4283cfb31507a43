"""Matching's facts: a job got capacity on an offer, or why it cannot (yet), or its deadline passed."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from pydantic import AwareDatetime

from libs.common.envelope import Payload
from libs.common.events import event
from libs.common.manifest import JobRequest


@event("JobMatched", subject="matching.job.matched")
class JobMatched(Payload):
    job_id: UUID
    request: JobRequest
    offer_id: UUID
    vendor: str
    node: str
    region: str
    price_micro_eur_per_dtu_hour: int  # the vendor's ask: what the consumer pays per DTU-hour
    price_micro_eur_per_gpu_hour: int | None = None  # and per GPU-hour, for a job with GPUs
    dtu_rate: Decimal  # DTUs the job occupies
    start_at: AwareDatetime  # booked window: start
    end_at: AwareDatetime  # booked window: start + expected duration


class ConstraintMiss(Payload):
    """Why offers were excluded for one constraint, and how many."""

    constraint: str  # region, vendor, resources, price, availability
    excluded: int
    detail: str


@event("JobUnmatchable", subject="matching.job.unmatchable")
class JobUnmatchable(Payload):
    """No offer fits now; the job waits for new offers until its deadline."""

    job_id: UUID
    tenant: str
    name: str
    offers_considered: int
    reasons: list[ConstraintMiss]


@event("JobExpired", subject="matching.job.expired")
class JobExpired(Payload):
    job_id: UUID
    tenant: str
    name: str
    reason: str
