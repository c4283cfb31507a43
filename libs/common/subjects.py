"""Subjects: `<source>.<entity>.<verb>.<party>`; the party token lets NATS permissions confine a
tenant or vendor to its own subjects. Prefixes live with each event's registration in `events`."""

from __future__ import annotations

from typing import Any

from libs.common.envelope import Envelope
from libs.common.events import subject_prefix
from libs.common.events.agent import OfferPublished, OfferWithdrawn, UsageSampled, WorkloadReported
from libs.common.events.intake import JobAccepted, JobCancelled, JobCancelRefused, JobRejected
from libs.common.events.matching import JobExpired, JobMatched, JobUnmatchable, OfferLost
from libs.common.events.metering import MeterClosed, MeterProgressed
from libs.common.events.placement import (
    PlacementFailed,
    WorkloadAssigned,
    WorkloadCancelled,
    WorkloadCancelRequested,
    WorkloadFailed,
    WorkloadFinished,
    WorkloadStarted,
)
from libs.common.events.sdk import (
    DepositRequested,
    DisputeResolutionRequested,
    JobCancelRequested,
    JobSubmitted,
    PayoutRequested,
)
from libs.common.events.settlement import ChargePosted, FundsHeld, HoldReleased, InsufficientFunds


def subject_for(env: Envelope[Any]) -> str:
    """The subject an event is published on: its type's prefix plus the party it concerns."""
    return f"{subject_prefix(type(env.payload))}.{env.party}"


def any_party(cls: type) -> str:
    return f"{subject_prefix(cls)}.*"


def tenant_party(tenant: str) -> str:
    return f"t-{tenant}"


def vendor_party(vendor: str) -> str:
    return f"v-{vendor}"


OPERATOR_PARTY = "ops"  # the exchange's operators: dispute decisions


JOB_SUBMITTED_ANY = any_party(JobSubmitted)
DEPOSIT_REQUESTED_ANY = any_party(DepositRequested)
OFFER_PUBLISHED_ANY = any_party(OfferPublished)
OFFER_CHANGES_ANY = "agent.offer.>"  # published and withdrawn, in one order
WORKLOAD_REPORTED_ANY = any_party(WorkloadReported)
USAGE_SAMPLED_ANY = any_party(UsageSampled)
JOB_ACCEPTED_ANY = any_party(JobAccepted)
JOB_REJECTED_ANY = any_party(JobRejected)
JOB_MATCHED_ANY = any_party(JobMatched)
JOB_UNMATCHABLE_ANY = any_party(JobUnmatchable)
JOB_EXPIRED_ANY = any_party(JobExpired)
WORKLOAD_ASSIGNED_ANY = any_party(WorkloadAssigned)
WORKLOAD_STARTED_ANY = any_party(WorkloadStarted)
WORKLOAD_FINISHED_ANY = any_party(WorkloadFinished)
WORKLOAD_FAILED_ANY = any_party(WorkloadFailed)
METER_CLOSED_ANY = any_party(MeterClosed)
METER_PROGRESSED_ANY = any_party(MeterProgressed)
WORKLOAD_CANCELLED_ANY = any_party(WorkloadCancelled)
PAYOUT_REQUESTED_ANY = any_party(PayoutRequested)
DISPUTE_RESOLUTION_ANY = any_party(DisputeResolutionRequested)
FUNDS_HELD_ANY = any_party(FundsHeld)
INSUFFICIENT_FUNDS_ANY = any_party(InsufficientFunds)
CHARGE_POSTED_ANY = any_party(ChargePosted)
HOLD_RELEASED_ANY = any_party(HoldReleased)
# life after the match: a node whose heartbeats stopped, a workload that never started
OFFER_LOST_ANY = any_party(OfferLost)
PLACEMENT_FAILED_ANY = any_party(PlacementFailed)


def offer_withdrawn_by(vendor: str) -> str:
    return f"{subject_prefix(OfferWithdrawn)}.{vendor_party(vendor)}"


def workload_assigned_to(vendor: str) -> str:
    return f"{subject_prefix(WorkloadAssigned)}.{vendor_party(vendor)}"


# cancelling a job: the consumer's request, intake's answer, placement's order to the vendor
JOB_CANCEL_REQUESTED_ANY = any_party(JobCancelRequested)
JOB_CANCELLED_ANY = any_party(JobCancelled)
JOB_CANCEL_REFUSED_ANY = any_party(JobCancelRefused)
WORKLOAD_CANCEL_REQUESTED_ANY = any_party(WorkloadCancelRequested)


def workload_cancel_to(vendor: str) -> str:
    return f"{subject_prefix(WorkloadCancelRequested)}.{vendor_party(vendor)}"


def dead_letter(consumer: str, subject: str) -> str:
    return f"dlq.{consumer}.{subject}"


def query(service: str, name: str) -> str:
    """Request-reply read endpoints a service answers (smctl reads through these, never the database)."""
    return f"query.{service}.{name}"
