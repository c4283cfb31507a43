"""Pure metering rules: integrating cumulative usage samples into DTU-hours.

A DTU is one vCPU with up to 4 GiB; a workload's DTU rate over an interval is
max(vCPUs used, memory GiB / 4). Between two samples the vCPUs used are the CPU time spent divided by
the wall time, and the memory is the peak resident size reported, so the interval contributes
max(cpu seconds, peak GiB / 4 x wall seconds) / 3600 DTU-hours. Exact Decimal arithmetic; the
integral is rounded (half up) to micro-DTU-hours once, when the meter closes.

Samples are applied strictly in seq order (1, 2, 3, ...): a sample that arrives ahead of a missing
one waits (the service keeps it) until the gap is filled, so disorder on the bus never changes the
integral. A sample whose cumulative counters go backwards is not believed: it is consumed (its seq
is passed) but adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

GIB = 2**30
US_PER_HOUR = Decimal(3_600_000_000)


@dataclass(frozen=True)
class Meter:
    last_seq: int | None
    cpu_us: int
    wall_us: int
    rss_peak_bytes: int
    dtu_hours: Decimal
    samples: int


@dataclass(frozen=True)
class Sample:
    seq: int
    cpu_us: int
    wall_us: int
    rss_peak_bytes: int


def interval_dtu_hours(d_cpu_us: int, d_wall_us: int, rss_bytes: int) -> Decimal:
    cpu = Decimal(d_cpu_us) / US_PER_HOUR
    mem = Decimal(rss_bytes) / (4 * GIB) * Decimal(d_wall_us) / US_PER_HOUR
    return max(cpu, mem)


FIRST_SEQ = 1


def next_seq(m: Meter) -> int:
    return FIRST_SEQ if m.last_seq is None else m.last_seq + 1


def apply_sample(m: Meter, s: Sample) -> Meter | None:
    """The meter after the next sample in seq order, or None when `s` is not the next one
    (a repeat, or one that must wait for a missing earlier sample)."""
    if s.seq != next_seq(m):
        return None
    if s.cpu_us < m.cpu_us or s.wall_us < m.wall_us:
        return replace(m, last_seq=s.seq)  # a counter that goes backwards is not believed
    add = interval_dtu_hours(s.cpu_us - m.cpu_us, s.wall_us - m.wall_us, s.rss_peak_bytes)
    return replace(m, last_seq=s.seq, cpu_us=s.cpu_us, wall_us=s.wall_us,
                   rss_peak_bytes=max(m.rss_peak_bytes, s.rss_peak_bytes), dtu_hours=m.dtu_hours + add,
                   samples=m.samples + 1)


def apply_in_order(m: Meter, samples: list[Sample]) -> Meter:
    """Apply the samples that continue the meter's seq without a gap; the rest keep waiting."""
    for s in sorted(samples, key=lambda x: x.seq):
        nxt = apply_sample(m, s)
        if nxt is None:
            if s.seq > next_seq(m):
                break
            continue
        m = nxt
    return m


def micro_dtu_hours(dtu_hours: Decimal) -> int:
    return int((dtu_hours * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


def complete(final_seq: int | None, last_seq: int | None) -> bool:
    """All announced usage is in: the end report's last seq has been seen (or none was announced)."""
    return final_seq is None or (last_seq is not None and last_seq >= final_seq)
