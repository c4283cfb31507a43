"""Intake's facts: a submission became a job, or was refused with reasons."""

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
