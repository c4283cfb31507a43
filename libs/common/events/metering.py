"""Metering's facts: the measured DTU-hours of a workload."""

from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime

from libs.common.envelope import Payload
from libs.common.events import event


@event("MeterClosed", subject="metering.meter.closed")
class MeterClosed(Payload):
    """A workload ended and all its usage is in: the final measured quantity."""

    workload_id: UUID
    job_id: UUID
    tenant: str
    vendor: str
    outcome: str  # succeeded / failed
    dtu_micro_hours: int  # measured DTU-hours x 1e6
    cpu_us: int
    rss_peak_bytes: int
    wall_us: int
    samples: int
    closed_at: AwareDatetime
