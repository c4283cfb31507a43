"""Facts vendor agents report: offers, workload status, usage samples."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.common.envelope import Payload
from libs.common.events import event


class AvailabilityWindow(BaseModel):
    """Whole hours of a node's availability in which every hour has the same free capacity and price.

    A field left out takes the offer's value: its resources (all of them free), its prices.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")
    start: AwareDatetime  # on the hour
    end: AwareDatetime  # on the hour, after start
    vcpu: Decimal | None = Field(None, ge=0)  # free in each of these hours
    memory_gib: Decimal | None = Field(None, ge=0)
    gpu_count: int | None = Field(None, ge=0)
    price_micro_eur_per_dtu_hour: int | None = Field(None, gt=0)
    price_micro_eur_per_gpu_hour: int | None = Field(None, gt=0)


@event("OfferPublished", subject="agent.offer.published")
class OfferPublished(Payload):
    """A vendor node's capacity and price over an availability window (replaces its previous offer).

    Without a `calendar` the node is free, whole and at one price, from `available_from` to
    `available_until`. With one, it is free only in the calendar's hours, each with its own free capacity
    and price, all inside that window; the hours between windows are not offered. `attributes` are the
    compliance attributes a job may require (`gdpr`, `iso27001`, `sovereign-eu`, ...).
    """

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
    calendar: list[AvailabilityWindow] | None = None
    attributes: list[str] = []

    @model_validator(mode="after")
    def _calendar_fits_the_offer(self) -> OfferPublished:
        previous_end = None
        for i, w in enumerate(self.calendar or []):
            where = f"calendar[{i}]"
            for name, t in (("start", w.start), ("end", w.end)):
                if (t.minute, t.second, t.microsecond) != (0, 0, 0):
                    raise ValueError(f"{where}.{name}: {t.isoformat()} is not on the hour")
            if w.end <= w.start:
                raise ValueError(f"{where}: end {w.end.isoformat()} is not after start {w.start.isoformat()}")
            if w.start < self.available_from or w.end > self.available_until:
                raise ValueError(f"{where}: outside available_from..available_until")
            if previous_end is not None and w.start < previous_end:
                raise ValueError(f"{where}: overlaps or precedes the window before it (windows go in time order)")
            previous_end = w.end
            if (w.vcpu is not None and w.vcpu > self.vcpu) or (
                    w.memory_gib is not None and w.memory_gib > self.memory_gib) or (
                    w.gpu_count is not None and w.gpu_count > self.gpu_count):
                raise ValueError(f"{where}: more free than the node has")
            if self.gpu_count and (w.price_micro_eur_per_gpu_hour or self.price_micro_eur_per_gpu_hour) is None:
                raise ValueError(f"{where}: a node with GPUs needs a price per GPU-hour")
        return self


@event("OfferWithdrawn", subject="agent.offer.withdrawn")
class OfferWithdrawn(Payload):
    """A vendor takes a node's offer off the market before its window ends: its capacity leaves the book at
    once, and the jobs booked on it that have not started are booked elsewhere (matching says OfferLost,
    with `reason` "withdrawn"). A later publication of the node brings the offer back."""

    offer_id: UUID
    vendor: str
    node: str
    reason: str = Field("", max_length=500)


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
    """Cumulative usage of a running workload, measured by the agent; seq increases per workload.

    The `witness_*` figures are a second, independent measurement of the same workload, which metering
    integrates alongside the vendor's figures and compares with them (a claim the witness does not
    support is disputed). In the embedded default the agent's runner reads the workload's own resource
    usage separately from the figure it reports: the CPU time and resident memory of every process in
    the workload's session (psutil), and at exit the kernel's figure for the process (wait4). On
    Kubernetes it is what the kubelet reports for the pod. None when there is no such measurement.
    """

    workload_id: UUID
    job_id: UUID
    vendor: str
    tenant: str
    seq: int = Field(ge=1)  # 1, 2, 3, ... per workload
    at: AwareDatetime  # a time without a zone is refused at the edge
    cpu_us: int = Field(ge=0)  # cumulative CPU time (user + system), microseconds
    wall_us: int = Field(ge=0)  # time since the workload started, microseconds
    rss_peak_bytes: int = Field(ge=0)  # peak resident memory so far
    witness_cpu_us: int | None = Field(None, ge=0)  # cumulative CPU time, independently measured
    witness_rss_peak_bytes: int | None = Field(None, ge=0)  # peak resident memory, independently measured
