"""Metering rules: cumulative usage samples integrated into DTU-hours, repeats and regressions ignored."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.metering.domain import (
    GIB,
    Meter,
    Sample,
    apply_in_order,
    apply_sample,
    interval_dtu_hours,
    micro_dtu_hours,
)

S = 1_000_000  # microseconds per second
EMPTY = Meter(last_seq=None, cpu_us=0, wall_us=0, rss_peak_bytes=0, dtu_hours=Decimal(0), samples=0)


def apply_all(samples: list[Sample], meter: Meter = EMPTY) -> Meter:
    """Apply samples in the order given; a sample the meter refuses changes nothing."""
    for s in samples:
        meter = apply_sample(meter, s) or meter
    return meter


def test_the_hand_computed_integral_of_two_samples() -> None:
    # interval 1: 1800 cpu-s over 3600 s at 1 GiB: max(1800/3600, 1/4 x 3600/3600) = max(0.5, 0.25) = 0.5
    # interval 2: 3600 cpu-s over 3600 s at 2 GiB: max(3600/3600, 2/4 x 3600/3600) = max(1, 0.5)    = 1.0
    # total 1.5 DTU-h = 1_500_000 micro-DTU-h
    m = apply_all([Sample(seq=1, cpu_us=1800 * S, wall_us=3600 * S, rss_peak_bytes=GIB),
                   Sample(seq=2, cpu_us=5400 * S, wall_us=7200 * S, rss_peak_bytes=2 * GIB)])
    assert m.dtu_hours == Decimal("1.5")
    assert micro_dtu_hours(m.dtu_hours) == 1_500_000
    assert (m.last_seq, m.cpu_us, m.wall_us, m.rss_peak_bytes, m.samples) == (2, 5400 * S, 7200 * S, 2 * GIB, 2)


def test_a_memory_bound_interval_is_charged_for_memory() -> None:
    # 600 cpu-s over 3600 s at 8 GiB: max(600/3600, 8/4 x 1) = max(0.1666..., 2) = 2 DTU-h
    m = apply_all([Sample(seq=1, cpu_us=600 * S, wall_us=3600 * S, rss_peak_bytes=8 * GIB)])
    assert m.dtu_hours == Decimal(2)
    assert micro_dtu_hours(m.dtu_hours) == 2_000_000


def test_a_cpu_bound_interval_is_charged_for_cpu() -> None:
    # 4 vCPUs busy for 30 min with 1 GiB: max(7200/3600, 1/4 x 0.5) = 2 DTU-h
    assert interval_dtu_hours(7200 * S, 1800 * S, GIB) == Decimal(2)


def test_an_interval_at_exactly_4_gib_per_busy_vcpu_is_the_same_either_way() -> None:
    # 1 vCPU, 4 GiB, 1 h: max(1, 4/4 x 1) = 1 DTU-h
    assert interval_dtu_hours(3600 * S, 3600 * S, 4 * GIB) == Decimal(1)


def test_a_third_of_a_dtu_hour_rounds_to_micro_dtu_hours_half_up() -> None:
    # 1200 cpu-s = 1/3 DTU-h = 333_333.33... micro-DTU-h -> 333_333
    m = apply_all([Sample(seq=1, cpu_us=1200 * S, wall_us=1200 * S, rss_peak_bytes=0)])
    assert micro_dtu_hours(m.dtu_hours) == 333_333


@pytest.mark.parametrize(
    ("dtu_hours", "micro"),
    [("0.0000005", 1), ("0.0000004999", 0), ("0.0000015", 2), ("2.5000005", 2_500_001), ("0", 0)],
)
def test_micro_dtu_hours_round_half_up(dtu_hours: str, micro: int) -> None:
    assert micro_dtu_hours(Decimal(dtu_hours)) == micro


def test_a_repeated_seq_is_ignored() -> None:
    s = Sample(seq=1, cpu_us=1800 * S, wall_us=3600 * S, rss_peak_bytes=GIB)
    once = apply_all([s])
    assert apply_sample(once, s) is None
    assert apply_all([s, s, s]) == once


def test_an_older_seq_arriving_late_is_ignored() -> None:
    m = apply_all([Sample(seq=1, cpu_us=100 * S, wall_us=100 * S, rss_peak_bytes=0),
                   Sample(seq=2, cpu_us=200 * S, wall_us=200 * S, rss_peak_bytes=0)])
    assert apply_sample(m, Sample(seq=1, cpu_us=150 * S, wall_us=150 * S, rss_peak_bytes=0)) is None


def test_a_counter_that_goes_backwards_is_not_believed_and_adds_nothing() -> None:
    m = apply_all([Sample(seq=1, cpu_us=1800 * S, wall_us=3600 * S, rss_peak_bytes=GIB)])
    for bad in (Sample(seq=2, cpu_us=1000 * S, wall_us=4000 * S, rss_peak_bytes=GIB),  # cpu went back
                Sample(seq=2, cpu_us=2000 * S, wall_us=3000 * S, rss_peak_bytes=GIB)):  # wall went back
        after = apply_sample(m, bad)
        assert after is not None and after.last_seq == 2  # consumed, so the next sample can follow
        assert (after.cpu_us, after.wall_us, after.dtu_hours, after.samples) == (
            m.cpu_us, m.wall_us, m.dtu_hours, m.samples)
        assert after.rejected == 1


def test_after_a_disbelieved_sample_the_next_good_one_integrates_from_the_last_good_one() -> None:
    # seq 2 went backwards; seq 3 integrates from seq 1: 1800 cpu-s over 3600 s at 1 GiB -> 0.5 DTU-h more
    m = apply_all([Sample(seq=1, cpu_us=1800 * S, wall_us=3600 * S, rss_peak_bytes=GIB),
                   Sample(seq=2, cpu_us=0, wall_us=0, rss_peak_bytes=GIB),
                   Sample(seq=3, cpu_us=3600 * S, wall_us=7200 * S, rss_peak_bytes=GIB)])
    assert m.dtu_hours == Decimal(1)
    assert (m.last_seq, m.samples) == (3, 2)


def test_an_unchanged_sample_with_a_new_seq_adds_nothing_but_counts() -> None:
    s1 = Sample(seq=1, cpu_us=60 * S, wall_us=60 * S, rss_peak_bytes=GIB)
    m = apply_all([s1, Sample(seq=2, cpu_us=60 * S, wall_us=60 * S, rss_peak_bytes=GIB)])
    assert m.dtu_hours == apply_all([s1]).dtu_hours
    assert (m.last_seq, m.samples) == (2, 2)


def test_the_meter_keeps_the_highest_memory_peak_reported() -> None:
    m = apply_all([Sample(seq=1, cpu_us=S, wall_us=S, rss_peak_bytes=3 * GIB),
                   Sample(seq=2, cpu_us=2 * S, wall_us=2 * S, rss_peak_bytes=GIB)])
    assert m.rss_peak_bytes == 3 * GIB


def test_the_first_sample_has_seq_one() -> None:
    assert apply_sample(EMPTY, Sample(seq=1, cpu_us=S, wall_us=S, rss_peak_bytes=0)) is not None
    assert apply_sample(EMPTY, Sample(seq=0, cpu_us=S, wall_us=S, rss_peak_bytes=0)) is None
    assert apply_sample(EMPTY, Sample(seq=2, cpu_us=S, wall_us=S, rss_peak_bytes=0)) is None  # waits for seq 1


def test_a_later_sample_arriving_before_an_earlier_one_does_not_bill_more_than_in_order() -> None:
    # In order:  seq 1 (360 cpu-s, 3600 s, 1 GiB): max(0.1, 1/4 x 1) = 0.25
    #            seq 2 (720 cpu-s, 7200 s, 8 GiB): max(0.1, 8/4 x 1) = 2     -> 2.25 DTU-h
    # Integrating seq 2 first as one interval 0..7200 s at seq 2's peak would bill max(0.2, 8/4 x 2) = 4 DTU-h
    # (a bug once): seq 2 now waits for seq 1, and the service applies both in order once seq 1 is in.
    s1 = Sample(seq=1, cpu_us=360 * S, wall_us=3600 * S, rss_peak_bytes=GIB)
    s2 = Sample(seq=2, cpu_us=720 * S, wall_us=7200 * S, rss_peak_bytes=8 * GIB)
    assert apply_all([s1, s2]).dtu_hours == Decimal("2.25")
    assert apply_all([s2, s1]).dtu_hours <= Decimal("2.25")
    assert apply_in_order(EMPTY, [s2, s1]).dtu_hours == Decimal("2.25")


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def usage_series(draw: st.DrawFn) -> list[Sample]:
    """A plausible workload's samples: seq 1, 2, ...; cumulative counters and the peak never decrease."""
    n = draw(st.integers(min_value=1, max_value=8))
    cpu = wall = rss = 0
    out = []
    for seq in range(1, n + 1):
        d_wall = draw(st.integers(min_value=0, max_value=3600 * S))
        wall += d_wall
        cpu += draw(st.integers(min_value=0, max_value=4 * d_wall))  # at most 4 vCPUs busy
        rss = max(rss, draw(st.integers(min_value=0, max_value=64 * 1024)) * 2**20)  # MiB granularity
        out.append(Sample(seq=seq, cpu_us=cpu, wall_us=wall, rss_peak_bytes=rss))
    return out


def exact_integral(samples: list[Sample]) -> Fraction:
    total, prev = Fraction(0), Sample(seq=0, cpu_us=0, wall_us=0, rss_peak_bytes=0)
    for s in samples:
        cpu_h = Fraction(s.cpu_us - prev.cpu_us, 3600 * S)
        mem_h = Fraction(s.rss_peak_bytes, 4 * GIB) * Fraction(s.wall_us - prev.wall_us, 3600 * S)
        total += max(cpu_h, mem_h)
        prev = s
    return total


@given(usage_series())
def test_applying_the_samples_once_in_order_is_the_sum_of_their_intervals(samples: list[Sample]) -> None:
    m = apply_all(samples)
    prev = EMPTY
    by_interval = Decimal(0)
    for s in samples:
        by_interval += interval_dtu_hours(s.cpu_us - prev.cpu_us, s.wall_us - prev.wall_us, s.rss_peak_bytes)
        prev = Meter(s.seq, s.cpu_us, s.wall_us, s.rss_peak_bytes, Decimal(0), 0)
    assert m.dtu_hours == by_interval
    assert m.samples == len(samples) and m.last_seq == samples[-1].seq
    # and within Decimal's 28 digits of the exact rational integral
    assert abs(Fraction(m.dtu_hours) - exact_integral(samples)) < Fraction(1, 10**18)


@given(usage_series(), st.data())
def test_samples_in_any_order_with_duplicates_never_bill_more_than_in_order_once(samples: list[Sample],
                                                                                 data: st.DataObject) -> None:
    delivered = data.draw(st.lists(st.sampled_from(samples), min_size=1, max_size=3 * len(samples)))
    disordered = apply_all(delivered)
    in_order = apply_all(sorted(set(delivered), key=lambda s: s.seq))
    assert disordered.dtu_hours <= in_order.dtu_hours


@given(usage_series(), st.data())
def test_duplicates_of_in_order_samples_change_nothing(samples: list[Sample], data: st.DataObject) -> None:
    repeats = [data.draw(st.integers(min_value=1, max_value=3)) for _ in samples]
    with_duplicates = [s for s, k in zip(samples, repeats, strict=True) for _ in range(k)]
    assert apply_all(with_duplicates) == apply_all(samples)


@given(usage_series())
def test_the_integral_never_decreases_as_samples_arrive(samples: list[Sample]) -> None:
    m = EMPTY
    for s in samples:
        nxt = apply_sample(m, s)
        assert nxt is not None and nxt.dtu_hours >= m.dtu_hours
        m = nxt
