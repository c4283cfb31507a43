"""Matching's facts: a job got capacity on an offer, or why it cannot (yet), or its deadline passed."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

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
    # 1 for the first match; n + 1 after the n-th never started (PlacementFailed, or its node was lost): each
    # attempt gets its own workload, while the job's one hold moves with it (see services/settlement)
    attempt: int = Field(1, ge=1)


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


@event("OfferLost", subject="matching.offer.lost")
class OfferLost(Payload):
    """A vendor node's offer left the book: its heartbeats (re-publications) stopped for longer than the
    offer TTL (`cause` "silent"), or its vendor withdrew it (OfferWithdrawn; `cause` "withdrawn"). Placement
    fails the node's workloads that have not started (PlacementFailed), so that matching books their jobs
    elsewhere; a later re-publication brings the offer back."""

    offer_id: UUID
    vendor: str
    node: str
    last_published_at: AwareDatetime
    lost_at: AwareDatetime  # silent: last_published_at + the TTL, the same whichever event noticed it; withdrawn: when
    cause: Literal["silent", "withdrawn"] = "silent"
    reason: str = ""  # the vendor's words, when it withdrew the offer
