"""Metering's facts: the measured DTU-hours of a workload, while it runs and when it ends.

Every reading is cumulative, so a duplicate or a stale reading can never add anything twice:
settlement charges only the increase over what it already charged.

- `claimed_dtu_micro_hours`: what the vendor's usage samples add up to;
- `dtu_micro_hours`: the billable figure, the claim clamped to the allocation (the DTU rate the
  workload was placed with x its running time): a vendor cannot bill more than it was allocated;
- `witness_dtu_micro_hours`: an independent measurement of the same workload (the agent's runner
  reads the process's own usage; on Kubernetes, the kubelet), None when there is none;
- `disputed_dtu_micro_hours`: the billable part the witness does not support, when the two differ by
  more than the tolerance (metering's settings); settlement holds that part of the vendor's payout.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime, Field

from libs.common.envelope import Payload
from libs.common.events import event


class _MeterReading(Payload):
    workload_id: UUID
    job_id: UUID
    tenant: str
    vendor: str
    dtu_micro_hours: int = Field(ge=0)  # billable so far: the claim clamped to the allocation (x 1e6)
    claimed_dtu_micro_hours: int = Field(0, ge=0)
    witness_dtu_micro_hours: int | None = Field(None, ge=0)
    disputed_dtu_micro_hours: int = Field(0, ge=0)  # never more than dtu_micro_hours
    wall_us: int = Field(ge=0)


@event("MeterProgressed", subject="metering.meter.progressed")
class MeterProgressed(_MeterReading):
    """A running workload's usage so far (cumulative), at most one per charge interval of its run:
    long jobs are charged as they go, not only at the end."""

    seq: int = Field(ge=1)  # the last usage sample included
    at: AwareDatetime


@event("MeterClosed", subject="metering.meter.closed")
class MeterClosed(_MeterReading):
    """A workload ended and all its usage is in: the final measured quantity."""

    outcome: str  # succeeded / failed
    cpu_us: int
    rss_peak_bytes: int
    samples: int
    closed_at: AwareDatetime
    rejected_samples: int = 0  # counters going backwards, or taken outside the running interval
    missing_seqs: list[int] = Field(default_factory=list)  # gaps in the vendor's sample sequence
