"""Pure metering rules: integrating cumulative usage samples into DTU-hours, and not trusting them blindly.

Integral. A DTU is one vCPU with up to 4 GiB; a workload's DTU rate over an interval is
max(vCPUs used, memory GiB / 4). Between two samples the vCPUs used are the CPU time spent divided by
the wall time, and the memory is the peak resident size reported, so the interval contributes
max(cpu seconds, peak GiB / 4 x wall seconds) / 3600 DTU-hours. Exact Decimal arithmetic; figures are
rounded (half up) to micro-DTU-hours only when they are reported.

Order. Samples are applied strictly in seq order (1, 2, 3, ...). While the workload runs, a sample
that arrives ahead of a missing one waits (the service keeps it) until the gap is filled, so disorder
on the bus never changes the integral. A repeated seq is a no-op.

Rejected samples are consumed (their seq is passed) but add nothing, and are counted:
- a sample whose cumulative counters (CPU or wall time) go backwards;
- a sample taken outside the workload's running interval: its `at` before placement's start minus
  the clock-skew tolerance, or after the end report's `at` plus that tolerance (metering setting
  `METERING_CLOCK_SKEW_S`, default 5 s). While the workload runs only the lower bound is known.

Closing. Once the workload has ended and its last announced sample (the end report's
`last_usage_seq`; it was published before the end report) is in, the meter is recomputed from every
sample present, across gaps: counters are cumulative, so a lost sample loses nothing but the split of
the memory term (the interval across a gap is charged at the later sample's peak). The missing seqs
are listed on MeterClosed. A sample that arrives after its meter closed changes nothing (it is kept
and counted as late). A workload that ended without placement ever seeing it start, and without any
announced or received sample, closes at zero; one with samples waits for its start (the agent
reports a workload running before its first sample, so placement's WorkloadStarted is on its way).

Clamp. A vendor cannot bill more than it was allocated: the allocation is the DTU rate the workload
was placed with (`dtu_rate(vcpu, memory_gib)` of WorkloadStarted) x its running time (end report's
`at` - start's `at`; while running, the latest accepted sample's `at` - start). The claim is the
integral of the accepted samples; billable = min(claim, allocation).

Witness. A sample may carry an independent measurement of the same workload (the agent's runner
reads the process session's own usage; on Kubernetes, the kubelet's figures). The witness is
integrated in parallel with the same formula over the same wall intervals; counters are cumulative,
so a sample without witness figures is a gap in the witness series, and a witness counter going
backwards is not believed (that sample adds nothing to the witness). No witness on any accepted
sample: no witness, no dispute.

Dispute. billable is disputed when it exceeds the witness by more than the tolerance:
    allowed  = max(witness x relative tolerance, absolute floor)
               (settings: METERING_DISPUTE_TOLERANCE, default 0.05 = 5 %;
                METERING_DISPUTE_FLOOR_MICRO_DTU_HOURS, default 1000 = 0.001 DTU-h, so tiny jobs do not
                dispute on noise)
    disputed = billable - witness   if billable - witness > allowed   else 0
all in micro-DTU-hours after rounding, so every figure on an event can be checked by hand.

Progress. A running workload is charged as it goes: whenever its integrated wall time crosses another
multiple of the charge interval (METERING_CHARGE_INTERVAL_S, default 60 s), the service reports the
cumulative reading (MeterProgressed), at most once per workload per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

GIB = 2**30
US_PER_HOUR = Decimal(3_600_000_000)
FIRST_SEQ = 1
MAX_MISSING_LISTED = 1000  # a vendor announcing seq 10^9 must not make MeterClosed huge


@dataclass(frozen=True)
class Sample:
    seq: int
    cpu_us: int
    wall_us: int
    rss_peak_bytes: int
    at: datetime | None = None  # None only where no running interval is checked
    witness_cpu_us: int | None = None
    witness_rss_peak_bytes: int | None = None

    @property
    def witnessed(self) -> bool:
        return self.witness_cpu_us is not None and self.witness_rss_peak_bytes is not None


@dataclass(frozen=True)
class Witness:
    """The independent measurement's running integral: its last counters and its DTU-hours."""

    cpu_us: int
    wall_us: int
    rss_peak_bytes: int
    dtu_hours: Decimal


@dataclass(frozen=True)
class Meter:
    last_seq: int | None
    cpu_us: int
    wall_us: int
    rss_peak_bytes: int
    dtu_hours: Decimal  # the claim: the exact integral of the accepted samples
    samples: int  # accepted samples
    rejected: int = 0
    last_at: datetime | None = None  # the latest accepted sample's time
    witness: Witness | None = None


EMPTY = Meter(last_seq=None, cpu_us=0, wall_us=0, rss_peak_bytes=0, dtu_hours=Decimal(0), samples=0)


@dataclass(frozen=True)
class Window:
    """The running interval samples must fall in, widened by the clock-skew tolerance.

    `start` None: not known (a meter opened before starts were recorded): no lower bound.
    `end` None: the workload still runs: no upper bound yet.
    """

    start: datetime | None
    end: datetime | None
    skew: timedelta = timedelta(0)

    def admits(self, at: datetime | None) -> bool:
        if at is None:
            return True
        if self.start is not None and at < self.start - self.skew:
            return False
        return self.end is None or at <= self.end + self.skew


@dataclass(frozen=True)
class Tolerance:
    """How far billable may exceed the witness before it is disputed (see the module docstring)."""

    relative: Decimal = Decimal("0.05")
    floor_micro: int = 1_000


@dataclass(frozen=True)
class Reading:
    """A meter's figures as reported, in micro-DTU-hours."""

    claimed: int
    billable: int
    witness: int | None
    disputed: int


@dataclass(frozen=True)
class Closed:
    meter: Meter
    missing_seqs: list[int]


def interval_dtu_hours(d_cpu_us: int, d_wall_us: int, rss_bytes: int) -> Decimal:
    cpu = Decimal(d_cpu_us) / US_PER_HOUR
    mem = Decimal(rss_bytes) / (4 * GIB) * Decimal(d_wall_us) / US_PER_HOUR
    return max(cpu, mem)


def next_seq(m: Meter) -> int:
    return FIRST_SEQ if m.last_seq is None else m.last_seq + 1


def absorb(m: Meter, s: Sample, window: Window | None = None) -> Meter:
    """Consume `s` as the meter's next sample (its seq is passed whatever happens): integrate it, or
    count it rejected when it lies outside the running interval or a counter goes backwards."""
    if (window is not None and not window.admits(s.at)) or s.cpu_us < m.cpu_us or s.wall_us < m.wall_us:
        return replace(m, last_seq=s.seq, rejected=m.rejected + 1)
    add = interval_dtu_hours(s.cpu_us - m.cpu_us, s.wall_us - m.wall_us, s.rss_peak_bytes)
    last_at = s.at if m.last_at is None or (s.at is not None and s.at > m.last_at) else m.last_at
    return replace(m, last_seq=s.seq, cpu_us=s.cpu_us, wall_us=s.wall_us,
                   rss_peak_bytes=max(m.rss_peak_bytes, s.rss_peak_bytes), dtu_hours=m.dtu_hours + add,
                   samples=m.samples + 1, last_at=last_at, witness=_witness(m.witness, s))


def _witness(w: Witness | None, s: Sample) -> Witness | None:
    if not s.witnessed:
        return w  # a gap in the witness series: the next witnessed sample integrates across it
    assert s.witness_cpu_us is not None and s.witness_rss_peak_bytes is not None
    prev = w or Witness(cpu_us=0, wall_us=0, rss_peak_bytes=0, dtu_hours=Decimal(0))
    if s.witness_cpu_us < prev.cpu_us:
        return w  # a witness counter going backwards is not believed either
    add = interval_dtu_hours(s.witness_cpu_us - prev.cpu_us, s.wall_us - prev.wall_us, s.witness_rss_peak_bytes)
    return Witness(cpu_us=s.witness_cpu_us, wall_us=s.wall_us,
                   rss_peak_bytes=max(prev.rss_peak_bytes, s.witness_rss_peak_bytes), dtu_hours=prev.dtu_hours + add)


def apply_sample(m: Meter, s: Sample, window: Window | None = None) -> Meter | None:
    """The meter after the next sample in seq order, or None when `s` is not the next one
    (a repeat, or one that must wait for a missing earlier sample)."""
    if s.seq != next_seq(m):
        return None
    return absorb(m, s, window)


def apply_in_order(m: Meter, samples: Iterable[Sample], window: Window | None = None) -> Meter:
    """Apply the samples that continue the meter's seq without a gap; the rest keep waiting."""
    for s in sorted(samples, key=lambda x: x.seq):
        nxt = apply_sample(m, s, window)
        if nxt is None:
            if s.seq > next_seq(m):
                break
            continue
        m = nxt
    return m


def close(samples: Iterable[Sample], window: Window, final_seq: int | None) -> Closed:
    """The final meter of an ended workload: every sample present, in seq order, across gaps.

    Only the set of samples matters, not the order they came in: the first reading of a seq is kept
    (as the service stores it), which for redeliveries of one event is the same reading.
    """
    by_seq: dict[int, Sample] = {}
    for s in samples:
        if s.seq >= FIRST_SEQ:
            by_seq.setdefault(s.seq, s)
    m = EMPTY
    for seq in sorted(by_seq):
        m = absorb(m, by_seq[seq], window)
    return Closed(meter=m, missing_seqs=missing_seqs(by_seq, final_seq))


def missing_seqs(present: Iterable[int], final_seq: int | None) -> list[int]:
    """Seqs from the first up to the last announced (or highest present) that never came."""
    have = sorted(set(present))
    top = max([final_seq or 0, *have])
    out: list[int] = []
    expect = FIRST_SEQ
    for seq in [*have, top + 1]:
        while expect < seq and len(out) < MAX_MISSING_LISTED:
            out.append(expect)
            expect += 1
        if len(out) >= MAX_MISSING_LISTED:
            break
        expect = max(expect, seq + 1)
    return out


def ready_to_close(*, ended: bool, started: bool, final_seq: int | None, top_seq: int | None) -> bool:
    """Whether an ended workload's usage is all in: its last announced sample (`final_seq`) is present
    (`top_seq`: the highest seq received). Without a known start only a workload with no usage closes."""
    if not ended:
        return False
    announced = final_seq if final_seq is not None and final_seq >= FIRST_SEQ else None
    if not started:
        return announced is None and top_seq is None
    return announced is None or (top_seq is not None and top_seq >= announced)


def micro_dtu_hours(dtu_hours: Decimal) -> int:
    return int((dtu_hours * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


def dtu_micro_hours_allowed(rate: Decimal | None, start: datetime | None, until: datetime | None) -> int | None:
    """The allocation in micro-DTU-hours: rate x (until - start), never negative; None when the rate or
    the start is not known (then nothing is clamped)."""
    if rate is None or start is None:
        return None
    if until is None:
        return 0
    running_us = max(0, (until - start) // timedelta(microseconds=1))
    return micro_dtu_hours(Decimal(rate) * Decimal(running_us) / US_PER_HOUR)


def disputed_micro(billable: int, witness: int | None, tolerance: Tolerance) -> int:
    """The billable part the witness does not support, when beyond the tolerance; else 0."""
    if witness is None:
        return 0
    excess = billable - witness
    allowed = max(Decimal(witness) * tolerance.relative, Decimal(tolerance.floor_micro))
    return excess if excess > allowed else 0


def reading(m: Meter, allowed: int | None, tolerance: Tolerance) -> Reading:
    """Claimed, billable (clamped to `allowed`), witness and disputed micro-DTU-hours of a meter."""
    claimed = micro_dtu_hours(m.dtu_hours)
    billable = claimed if allowed is None else min(claimed, allowed)
    witness = None if m.witness is None else micro_dtu_hours(m.witness.dtu_hours)
    return Reading(claimed=claimed, billable=billable, witness=witness,
                   disputed=disputed_micro(billable, witness, tolerance))


def intervals_due(wall_us: int, charged_intervals: int, interval_us: int) -> int | None:
    """How many whole charge intervals the integrated wall time now covers, when that is more than
    were already reported; None when no new progress is due."""
    n = wall_us // interval_us
    return n if n > charged_intervals else None
