"""Placement's facts: where a workload runs and how it ended."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from pydantic import AwareDatetime

from libs.common.envelope import Payload
from libs.common.events import event
from libs.common.manifest import JobRequest


@event("WorkloadAssigned", subject="placement.workload.assigned")
class WorkloadAssigned(Payload):
    """The assignment, on the vendor's subject: what the vendor agent must run."""

    workload_id: UUID
    job_id: UUID
    vendor: str
    node: str
    request: JobRequest
    start_at: AwareDatetime
    deadline: AwareDatetime


class _WorkloadFact(Payload):
    workload_id: UUID
    job_id: UUID
    tenant: str
    name: str
    vendor: str
    node: str
    at: AwareDatetime


@event("WorkloadStarted", subject="placement.workload.started")
class WorkloadStarted(_WorkloadFact):
    vcpu: Decimal
    memory_gib: Decimal


@event("WorkloadFinished", subject="placement.workload.finished")
class WorkloadFinished(_WorkloadFact):
    exit_code: int
    last_usage_seq: int | None = None


@event("WorkloadFailed", subject="placement.workload.failed")
class WorkloadFailed(_WorkloadFact):
    reason: str
    exit_code: int | None = None
    last_usage_seq: int | None = None


@event("PlacementFailed", subject="placement.workload.unplaced")
class PlacementFailed(_WorkloadFact):
    """The workload ended before it ever started (the vendor gave it up, or its node was lost): nothing
    ran and nothing is charged. Matching books the job again without this node (attempt + 1), unless
    its deadline can no longer be met (JobExpired); the job's hold waits for that."""

    attempt: int = 1
    offer_id: UUID
    deadline: AwareDatetime
    reason: str


@event("WorkloadCancelled", subject="placement.workload.cancelled")
class WorkloadCancelled(Payload):
    """The job was cancelled before anything ran: no usage, so settlement voids its hold and matching
    frees its reservation. (A running workload that is cancelled ends as WorkloadFailed instead.)"""

    job_id: UUID
    tenant: str
    name: str
    vendor: str | None = None  # None when the job was never placed
    reason: str
    at: AwareDatetime


@event("WorkloadCancelRequested", subject="placement.workload.cancel")
class WorkloadCancelRequested(Payload):
    """On the vendor's subject: the job was cancelled, stop its workload. The agent kills it and reports
    it failed with the message "cancelled" (so it is paid for what it used); an assignment it has not
    started it drops."""

    workload_id: UUID
    job_id: UUID
    vendor: str
    node: str
    reason: str
    at: AwareDatetime
