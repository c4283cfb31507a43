"""The workload state machine: assigned -> running -> succeeded | failed; repeats and regressions are no-ops."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.placement.domain import TERMINAL, Status, on_cancel, transition

STATUSES: tuple[str, ...] = get_args(Status)

# (current, reported) -> new status, or None when the report changes nothing; every pair is listed
TABLE: dict[tuple[str, str], str | None] = {
    ("assigned", "assigned"): None,
    ("assigned", "running"): "running",
    ("assigned", "succeeded"): "succeeded",  # a very short job may end before its start is reported
    ("assigned", "failed"): "failed",
    ("running", "assigned"): None,  # never back
    ("running", "running"): None,
    ("running", "succeeded"): "succeeded",
    ("running", "failed"): "failed",
    ("succeeded", "assigned"): None,
    ("succeeded", "running"): None,
    ("succeeded", "succeeded"): None,
    ("succeeded", "failed"): None,  # nothing leaves a terminal state
    ("failed", "assigned"): None,
    ("failed", "running"): None,
    ("failed", "succeeded"): None,
    ("failed", "failed"): None,
}


def test_the_table_covers_every_pair_of_statuses() -> None:
    assert set(TABLE) == {(c, r) for c in STATUSES for r in STATUSES}


@pytest.mark.parametrize(("current", "reported"), sorted(TABLE))
def test_the_transition_table(current: str, reported: str) -> None:
    assert transition(current, reported) == TABLE[(current, reported)]  # type: ignore[arg-type]


def test_the_happy_path_is_assigned_running_succeeded() -> None:
    s = "assigned"
    for reported in ("running", "succeeded"):
        nxt = transition(s, reported)  # type: ignore[arg-type]
        assert nxt == reported
        s = nxt
    assert s in TERMINAL


def test_an_assigned_workload_can_fail_before_it_runs() -> None:
    assert transition("assigned", "failed") == "failed"


@pytest.mark.parametrize("status", STATUSES)
def test_a_repeated_report_changes_nothing(status: str) -> None:
    assert transition(status, status) is None  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(STATUSES), max_size=20))
def test_any_sequence_of_reports_only_moves_forward_and_stops_at_the_first_end(reports: list[str]) -> None:
    order = {"assigned": 0, "running": 1, "succeeded": 2, "failed": 2}
    s = "assigned"
    for r in reports:
        nxt = transition(s, r)  # type: ignore[arg-type]
        if nxt is None:
            continue
        assert order[nxt] > order[s]  # strictly forward, so at most two changes ever
        s = nxt
    ends = [r for r in reports if r in TERMINAL]
    assert s == (ends[0] if ends else "running" if "running" in reports else "assigned")


# --- cancelling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reported", STATUSES)
def test_a_vendors_late_report_about_a_workload_cancelled_before_it_ran_changes_nothing(reported: str) -> None:
    assert transition("cancelled", reported) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("current", "stop_requested", "action"), [
    (None, False, "tombstone"),  # FundsHeld not here yet: a later one is cancelled instead of assigned
    ("assigned", False, "drop"),  # nothing ran: WorkloadCancelled, and the vendor drops it
    ("running", False, "stop"),  # the vendor kills it and reports it failed
    ("running", True, "none"),  # asked to stop before
    ("succeeded", False, "none"),
    ("failed", False, "none"),
    ("cancelled", True, "none"),
])
def test_what_cancelling_a_job_does_to_its_workload(current: str | None, stop_requested: bool, action: str) -> None:
    assert on_cancel(current, stop_requested) == action  # type: ignore[arg-type]


@pytest.mark.parametrize("current", [*STATUSES, "cancelled", None])
def test_cancelling_twice_never_acts_twice(current: str | None) -> None:
    first = on_cancel(current, False)  # type: ignore[arg-type]
    after = {"drop": ("cancelled", True), "stop": (current, True), "none": (current, False)}.get(first)
    if after is not None:
        assert on_cancel(*after) == "none"  # type: ignore[arg-type]
