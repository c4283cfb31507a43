"""Facts vendor agents report: offers, workload status, usage samples."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from libs.common.envelope import Payload
from libs.common.events import event


@event("OfferPublished", subject="agent.offer.published")
class OfferPublished(Payload):
    """A vendor node's capacity and price over an availability window (replaces its previous offer)."""

    offer_id: UUID
    vendor: str
    node: str
    region: str
    country: str
    eu: bool
    vcpu: Decimal = Field(gt=0)
    memory_gib: Decimal = Field(gt=0)
    gpu_count: int = Field(0, ge=0)
    gpu_model: str | None = None
    arch: str = "x86_64"
    price_micro_eur_per_dtu_hour: int = Field(gt=0)
    price_micro_eur_per_gpu_hour: int | None = None
    available_from: AwareDatetime
    available_until: AwareDatetime
    illustrative: bool = False


@event("WorkloadReported", subject="agent.workload.reported")
class WorkloadReported(Payload):
    """The agent's view of a workload it runs: started, or ended with an exit code."""

    workload_id: UUID
    job_id: UUID
    vendor: str
    status: Literal["running", "succeeded", "failed"]
    at: AwareDatetime
    exit_code: int | None = None
    message: str = ""
    last_usage_seq: int | None = None  # on an end report: the last usage sample's seq


@event("UsageSampled", subject="agent.usage.sampled")
class UsageSampled(Payload):
    """Cumulative usage of a running workload, measured by the agent; seq increases per workload."""

    workload_id: UUID
    job_id: UUID
    vendor: str
    tenant: str
    seq: int = Field(ge=1)  # 1, 2, 3, ... per workload
    at: datetime
    cpu_us: int = Field(ge=0)  # cumulative CPU time (user + system), microseconds
    wall_us: int = Field(ge=0)  # time since the workload started, microseconds
    rss_peak_bytes: int = Field(ge=0)  # peak resident memory so far
