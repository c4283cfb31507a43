"""Intake's facts: a submission became a job, or was refused with reasons; a job was cancelled, or
its cancellation refused."""

from __future__ import annotations

from uuid import UUID

from libs.common.envelope import Payload
from libs.common.events import event
from libs.common.manifest import FieldError, JobRequest


@event("JobAccepted", subject="intake.job.accepted")
class JobAccepted(Payload):
    job_id: UUID
    request: JobRequest


@event("JobRejected", subject="intake.job.rejected")
class JobRejected(Payload):
    tenant: str
    name: str
    errors: list[FieldError]


@event("JobCancelled", subject="intake.job.cancelled")
class JobCancelled(Payload):
    """The consumer cancelled a job that had not ended. What follows depends on how far it got: a
    waiting job leaves the order book; a placed one is dropped (WorkloadCancelled, nothing to pay);
    a running one is stopped by its vendor and ends as WorkloadFailed, paid for what it used."""

    job_id: UUID
    tenant: str
    name: str
    previous_status: str  # intake's view of the job when it was cancelled
    reason: str = ""


@event("JobCancelRefused", subject="intake.cancel.refused")
class JobCancelRefused(Payload):
    """A cancel request intake refused: no such job of the tenant, or the job has ended already."""

    tenant: str
    name: str
    reason: str
