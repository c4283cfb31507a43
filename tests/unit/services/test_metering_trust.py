"""Metering that does not trust blindly: the running interval, gaps, the clamp to the allocation, the
witness and disputes, and when a running workload's progress is reported. Expectations by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.manifest import dtu_rate
from services.metering.domain import (
    EMPTY,
    GIB,
    MAX_MISSING_LISTED,
    Meter,
    Sample,
    Tolerance,
    Window,
    apply_in_order,
    close,
    disputed_micro,
    dtu_micro_hours_allowed,
    intervals_due,
    missing_seqs,
    reading,
    ready_to_close,
)

S = 1_000_000  # microseconds per second
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
SKEW = timedelta(seconds=5)
TOL = Tolerance(relative=Decimal("0.05"), floor_micro=1_000)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sample(seq: int, cpu_s: float, wall_s: float, gib: float, when: float | None = None,
           witness_cpu_s: float | None = None, witness_gib: float | None = None) -> Sample:
    """A sample taken `wall_s` into a run started at T0 (or at `when`), with optional witness figures."""
    return Sample(seq=seq, cpu_us=int(cpu_s * S), wall_us=int(wall_s * S), rss_peak_bytes=int(gib * GIB),
                  at=at(wall_s if when is None else when),
                  witness_cpu_us=None if witness_cpu_s is None else int(witness_cpu_s * S),
                  witness_rss_peak_bytes=None if witness_gib is None else int(witness_gib * GIB))


def closed_reading(samples: list[Sample], end_s: float, vcpu: int = 1, memory_gib: int = 4,
                   final_seq: int | None = None) -> tuple[Meter, list[int], int, int, int | None, int]:
    """(meter, missing, claimed, billable, witness, disputed) of a workload run from T0 to T0 + end_s."""
    c = close(samples, Window(T0, at(end_s), SKEW), final_seq)
    allowed = dtu_micro_hours_allowed(dtu_rate(Decimal(vcpu), Decimal(memory_gib)), T0, at(end_s))
    r = reading(c.meter, allowed, TOL)
    return c.meter, c.missing_seqs, r.claimed, r.billable, r.witness, r.disputed


# --- the running interval ----------------------------------------------------------------------------------


def test_a_sample_taken_before_the_start_beyond_the_skew_is_rejected() -> None:
    # seq 1 claims to be from 10 s before the start: rejected (consumed, counted, adds nothing);
    # seq 2 (1800 cpu-s over 3600 s at 1 GiB) integrates from zero: 0.5 DTU-h
    running = Window(T0, None, SKEW)
    m = apply_in_order(EMPTY, [sample(1, 600, 600, 1, when=-10), sample(2, 1800, 3600, 1)], running)
    assert (m.last_seq, m.samples, m.rejected, m.dtu_hours) == (2, 1, 1, Decimal("0.5"))


def test_a_sample_within_the_skew_around_the_interval_is_accepted() -> None:
    window = Window(T0, at(3600), SKEW)
    assert window.admits(at(-5)) and window.admits(at(3605))
    assert not window.admits(at(-5.000001)) and not window.admits(at(3605.000001))
    assert Window(T0, None, SKEW).admits(at(10**6))  # while running there is no upper bound yet


def test_a_sample_taken_after_the_end_beyond_the_skew_is_rejected_at_close() -> None:
    # the workload ran 1 h; seq 2 says it was taken 2 h in: rejected; the meter is seq 1's 0.5 DTU-h
    samples = [sample(1, 1800, 3600, 1), sample(2, 7200, 7200, 1)]
    m, missing, claimed, billable, _, _ = closed_reading(samples, end_s=3600, final_seq=2)
    assert (m.samples, m.rejected, missing) == (1, 1, [])
    assert (claimed, billable) == (500_000, 500_000)


# --- gaps --------------------------------------------------------------------------------------------------


def test_while_running_a_gap_holds_back_the_samples_behind_it() -> None:
    m = apply_in_order(EMPTY, [sample(1, 1800, 3600, 1), sample(3, 5400, 10800, 2)], Window(T0, None, SKEW))
    assert (m.last_seq, m.dtu_hours) == (1, Decimal("0.5"))


def test_at_close_a_lost_sample_is_integrated_across_and_listed_missing() -> None:
    # seq 2 never came. seq 1: max(1800/3600, 1/4 x 1) = 0.5; seq 1 -> 3 across the gap:
    # 3600 cpu-s over 7200 s at 2 GiB: max(3600/3600, 2/4 x 7200/3600) = max(1, 1) = 1; total 1.5 DTU-h
    # (allocation 1 DTU x 3 h = 3 DTU-h: not clamped)
    samples = [sample(1, 1800, 3600, 1), sample(3, 5400, 10800, 2)]
    m, missing, claimed, billable, witness, disputed = closed_reading(samples, end_s=10800, final_seq=3)
    assert missing == [2]
    assert (m.samples, m.rejected, m.cpu_us, m.wall_us) == (2, 0, 5400 * S, 10800 * S)
    assert (claimed, billable, witness, disputed) == (1_500_000, 1_500_000, None, 0)


def test_seqs_announced_by_the_end_report_but_never_received_are_missing() -> None:
    assert missing_seqs([1, 2, 4], final_seq=6) == [3, 5, 6]
    assert missing_seqs([1, 2, 3], final_seq=3) == []
    assert missing_seqs([2, 3], final_seq=None) == [1]
    assert missing_seqs([], final_seq=None) == []


def test_a_huge_announced_seq_lists_only_the_first_missing_ones() -> None:
    assert missing_seqs([1], final_seq=10**9) == list(range(2, 2 + MAX_MISSING_LISTED))


@pytest.mark.parametrize(
    ("ended", "started", "final_seq", "top_seq", "ready"),
    [
        (False, True, None, 5, False),  # still running
        (True, True, None, None, True),  # ended, no samples announced
        (True, True, 3, 2, False),  # the last announced sample is still on its way
        (True, True, 3, 3, True),  # ... it is in: close, across any gap before it
        (True, True, 3, 4, True),
        (True, True, 0, None, True),  # 0 announces no sample
        (True, False, None, None, True),  # never started, nothing measured: closes at zero
        (True, False, 2, 2, False),  # samples without a known start wait for placement's start
        (True, False, None, 1, False),
    ],
)
def test_a_meter_closes_once_its_workload_ended_and_its_last_announced_sample_is_in(
        ended: bool, started: bool, final_seq: int | None, top_seq: int | None, ready: bool) -> None:
    assert ready_to_close(ended=ended, started=started, final_seq=final_seq, top_seq=top_seq) is ready


# --- the clamp ---------------------------------------------------------------------------------------------


def test_an_over_reporting_vendor_is_clamped_to_the_allocation() -> None:
    # 1 vCPU / 4 GiB (rate 1) for 1 h is at most 1 DTU-h; the vendor claims 7200 cpu-s in that hour = 2 DTU-h
    samples = [sample(1, 3600, 1800, 1), sample(2, 7200, 3600, 1)]
    _, _, claimed, billable, _, _ = closed_reading(samples, end_s=3600, final_seq=2)
    assert (claimed, billable) == (2_000_000, 1_000_000)


def test_memory_beyond_the_allocation_is_clamped_too() -> None:
    # 12 GiB peak for 1 h = 3 DTU-h claimed; 1 vCPU / 8 GiB is rate 2: at most 2 DTU-h
    _, _, claimed, billable, _, _ = closed_reading([sample(1, 60, 3600, 12)], end_s=3600, memory_gib=8)
    assert (claimed, billable) == (3_000_000, 2_000_000)


@pytest.mark.parametrize(
    ("rate", "start", "until", "allowed"),
    [
        (dtu_rate(Decimal(1), Decimal(4)), T0, at(3600), 1_000_000),
        (dtu_rate(Decimal(2), Decimal(16)), T0, at(1800), 2_000_000),  # rate 4 for half an hour
        (dtu_rate(Decimal("0.5"), Decimal(1)), T0, at(60), 8_333),  # 0.5 x 60/3600 = 0.008333.. DTU-h
        (Decimal(1), T0, at(-60), 0),  # an end before the start allows nothing
        (Decimal(1), T0, None, 0),  # running, no accepted sample yet
        (None, T0, at(3600), None),  # rate not known (a meter from before starts were recorded): no clamp
        (Decimal(1), None, at(3600), None),
    ],
)
def test_the_allocation_is_the_dtu_rate_times_the_running_time(
        rate: Decimal | None, start: datetime | None, until: datetime | None, allowed: int | None) -> None:
    assert dtu_micro_hours_allowed(rate, start, until) == allowed


def test_while_running_the_allocation_runs_up_to_the_latest_accepted_sample() -> None:
    # 2 vCPU busy for 30 min claims 1 DTU-h; a rate-1 workload 30 min in may bill 0.5
    m = apply_in_order(EMPTY, [sample(1, 3600, 1800, 1)], Window(T0, None, SKEW))
    assert m.last_at == at(1800)
    r = reading(m, dtu_micro_hours_allowed(Decimal(1), T0, m.last_at), TOL)
    assert (r.claimed, r.billable) == (1_000_000, 500_000)


# --- the witness and disputes -------------------------------------------------------------------------------


def test_a_claim_the_witness_does_not_support_is_disputed() -> None:
    # vendor: 3600 cpu-s in 1 h = 1 DTU-h (within the allocation of 1); witness: 1800 cpu-s = 0.5 DTU-h.
    # allowed excess max(5 % x 500_000, 1_000) = 25_000 < 500_000: disputed 1 - 0.5 = 0.5 DTU-h
    samples = [sample(1, 3600, 3600, 1, witness_cpu_s=1800, witness_gib=1)]
    _, _, claimed, billable, witness, disputed = closed_reading(samples, end_s=3600)
    assert (claimed, billable, witness, disputed) == (1_000_000, 1_000_000, 500_000, 500_000)


def test_an_over_reporting_vendor_is_clamped_and_the_rest_disputed() -> None:
    # claims 2 DTU-h in 1 h at rate 1: billable 1; the witness saw 0.5: disputed 0.5 of the billable 1
    samples = [sample(1, 3600, 1800, 1, witness_cpu_s=900, witness_gib=1),
               sample(2, 7200, 3600, 1, witness_cpu_s=1800, witness_gib=1)]
    _, _, claimed, billable, witness, disputed = closed_reading(samples, end_s=3600, final_seq=2)
    assert (claimed, billable, witness, disputed) == (2_000_000, 1_000_000, 500_000, 500_000)


def test_a_difference_within_the_relative_tolerance_is_not_disputed() -> None:
    # witness 3456 cpu-s = 0.96 DTU-h; 1 - 0.96 = 0.04 <= 5 % of 0.96 = 0.048: no dispute
    samples = [sample(1, 3600, 3600, 1, witness_cpu_s=3456, witness_gib=1)]
    assert closed_reading(samples, end_s=3600)[4:] == (960_000, 0)
    # witness 3420 cpu-s = 0.95; 0.05 > 0.0475: disputed 0.05 DTU-h
    samples = [sample(1, 3600, 3600, 1, witness_cpu_s=3420, witness_gib=1)]
    assert closed_reading(samples, end_s=3600)[4:] == (950_000, 50_000)


def test_a_tiny_job_does_not_dispute_on_noise() -> None:
    # 3.24 cpu-s = 900 micro-DTU-h claimed, the witness saw nothing: 900 <= the 1_000 floor
    samples = [sample(1, 3.24, 10, 0, witness_cpu_s=0, witness_gib=0)]
    assert closed_reading(samples, end_s=10)[3:] == (900, 0, 0)
    assert disputed_micro(1_001, 0, TOL) == 1_001  # just beyond the floor
    assert disputed_micro(1_000, 0, TOL) == 0


def test_no_witness_means_no_dispute() -> None:
    assert closed_reading([sample(1, 3600, 3600, 1)], end_s=3600)[4:] == (None, 0)
    assert disputed_micro(10**9, None, TOL) == 0


def test_a_witness_above_the_claim_is_no_dispute() -> None:
    samples = [sample(1, 1800, 3600, 1, witness_cpu_s=3600, witness_gib=1)]
    assert closed_reading(samples, end_s=3600)[3:] == (500_000, 1_000_000, 0)


def test_a_sample_without_witness_figures_is_a_gap_in_the_witness_series() -> None:
    # witness at seq 1 (900 cpu-s, 1800 s) and seq 3 (2700 cpu-s, 5400 s), none at seq 2:
    # 900/3600 + (2700 - 900)/3600 = 0.25 + 0.5 = 0.75 DTU-h (memory 1 GiB: 1/4 x 1.5 h = 0.375 < 0.5)
    samples = [sample(1, 900, 1800, 1, witness_cpu_s=900, witness_gib=1), sample(2, 1800, 3600, 1),
               sample(3, 2700, 5400, 1, witness_cpu_s=2700, witness_gib=1)]
    m = close(samples, Window(T0, at(5400), SKEW), 3).meter
    assert m.witness is not None and m.witness.dtu_hours == Decimal("0.75")
    assert m.dtu_hours == Decimal("0.75")


def test_a_witness_counter_going_backwards_is_not_believed() -> None:
    samples = [sample(1, 900, 1800, 1, witness_cpu_s=900, witness_gib=1),
               sample(2, 1800, 3600, 1, witness_cpu_s=100, witness_gib=1)]
    m = close(samples, Window(T0, at(3600), SKEW), 2).meter
    assert m.witness is not None and (m.witness.cpu_us, m.witness.dtu_hours) == (900 * S, Decimal("0.25"))
    assert m.samples == 2  # the vendor's own figures of seq 2 still count


def test_the_witness_memory_term_uses_the_witnessed_peak() -> None:
    # vendor: 8 GiB for 1 h = 2 DTU-h (rate 2 allocation: billable 2); witness saw 2 GiB: 0.5 DTU-h
    samples = [sample(1, 60, 3600, 8, witness_cpu_s=60, witness_gib=2)]
    assert closed_reading(samples, end_s=3600, memory_gib=8)[2:] == (2_000_000, 2_000_000, 500_000, 1_500_000)


# --- progress ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall_s", "charged", "due"),
    [(59, 0, None), (60, 0, 1), (185, 1, 3), (185, 3, None), (0, 0, None), (7200, 0, 120)],
)
def test_progress_is_due_each_time_the_wall_time_covers_another_charge_interval(
        wall_s: int, charged: int, due: int | None) -> None:
    assert intervals_due(wall_s * S, charged, 60 * S) == due


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def a_run(draw: st.DrawFn) -> tuple[list[Sample], int]:
    """A workload's samples (seq 1..n, plausible, some with a witness, some taken out of the running
    interval or with a counter going backwards) and its end, in seconds after T0."""
    n = draw(st.integers(min_value=1, max_value=8))
    cpu = wall = rss = 0
    out = []
    for seq in range(1, n + 1):
        d_wall = draw(st.integers(min_value=0, max_value=1800))
        wall += d_wall
        cpu += draw(st.integers(min_value=0, max_value=6 * d_wall))  # may claim more than the allocation
        rss = max(rss, draw(st.integers(min_value=0, max_value=16 * 1024)) * 2**20)
        back = draw(st.booleans()) and draw(st.booleans()) and cpu > 0  # now and then a counter goes back
        when = wall + draw(st.sampled_from([0, 0, 0, -4000, 10**5]))  # now and then outside the interval
        witness = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=max(cpu, 1))))
        out.append(Sample(seq=seq, cpu_us=(cpu // 2 if back else cpu) * S, wall_us=wall * S, rss_peak_bytes=rss,
                          at=at(when), witness_cpu_us=None if witness is None else witness * S,
                          witness_rss_peak_bytes=None if witness is None else rss // 2))
    return out, wall + draw(st.integers(min_value=0, max_value=60))


def as_delivered(samples: list[Sample], delivered: list[Sample], cuts: list[int], end_s: int,
                 lost: set[int]) -> tuple[Meter, Meter, list[int]]:
    """What the service does with `delivered` (batches cut at `cuts`, the first reading of a seq kept),
    the end report last: (running meter before the end, closed meter, missing seqs)."""
    store: dict[int, Sample] = {}
    running = EMPTY
    bounds = [0, *sorted(set(cuts)), len(delivered)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        for s in delivered[lo:hi]:
            if s.seq not in lost:
                store.setdefault(s.seq, s)
        waiting = [s for s in store.values() if running.last_seq is None or s.seq > running.last_seq]
        running = apply_in_order(running, waiting, Window(T0, None, SKEW))
    c = close(store.values(), Window(T0, at(end_s), SKEW), final_seq=len(samples))
    return running, c.meter, c.missing_seqs


@given(a_run(), st.data())
def test_any_permutation_or_duplication_of_the_samples_gives_the_same_meters(
        run: tuple[list[Sample], int], data: st.DataObject) -> None:
    samples, end_s = run
    delivered = data.draw(st.permutations(samples + data.draw(st.lists(st.sampled_from(samples), max_size=8))))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(delivered)), max_size=4))
    running, closed, missing = as_delivered(samples, delivered, cuts, end_s, lost=set())
    in_order_running, in_order_closed, _ = as_delivered(samples, samples, [], end_s, lost=set())
    assert (running, closed, missing) == (in_order_running, in_order_closed, [])


@given(a_run(), st.data())
def test_a_lost_sample_never_blocks_the_close_and_is_the_same_in_any_order(
        run: tuple[list[Sample], int], data: st.DataObject) -> None:
    samples, end_s = run
    lost = set(data.draw(st.lists(st.sampled_from([s.seq for s in samples[:-1]] or [0]), max_size=3)))
    delivered = data.draw(st.permutations(samples))
    _, closed, missing = as_delivered(samples, delivered, [], end_s, lost)
    _, in_order, in_order_missing = as_delivered(samples, samples, [], end_s, lost)
    assert (closed, missing) == (in_order, in_order_missing) and missing == sorted(lost - {0})
    assert closed.samples + closed.rejected == len(samples) - len(lost - {0})


@given(a_run(), st.sampled_from([(1, 4), (2, 4), (1, 16)]))
def test_billable_never_exceeds_the_claim_or_the_allocation_and_a_dispute_never_the_billable(
        run: tuple[list[Sample], int], resources: tuple[int, int]) -> None:
    samples, end_s = run
    m, _, claimed, billable, witness, disputed = closed_reading(samples, end_s, *resources, final_seq=len(samples))
    allowed = dtu_micro_hours_allowed(dtu_rate(Decimal(resources[0]), Decimal(resources[1])), T0, at(end_s))
    assert allowed is not None and billable <= min(claimed, allowed)
    assert 0 <= disputed <= billable
    assert witness is not None or disputed == 0
    if disputed:
        assert witness is not None and disputed == billable - witness
