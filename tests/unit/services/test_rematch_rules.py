"""Life after the match, as pure rules: an offer whose heartbeats stop is lost (the same way in a replay),
a workload that never started is given up and its job booked again, one that ran stays failed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from services.matching.domain import lost_offers, status_on_placement_failed
from services.placement.domain import lost_with_node, never_started, on_cancel

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
S = timedelta(seconds=1)
TTL = 300 * S
A, B, C = uuid4(), uuid4(), uuid4()


def test_an_offer_silent_for_longer_than_the_ttl_is_lost_when_another_heartbeat_comes() -> None:
    losses, live = lost_offers({A: T0, B: T0}, [(B, T0 + 200 * S), (B, T0 + 301 * S)], TTL)
    assert losses == [(A, T0)]  # lost at T0 + TTL, noticed by B's heartbeat at T0 + 301 s
    assert live == {B: T0 + 301 * S}


def test_an_offer_republished_within_the_ttl_is_not_lost() -> None:
    losses, live = lost_offers({A: T0, B: T0}, [(B, T0 + 299 * S), (A, T0 + 300 * S)], TTL)
    assert losses == [] and live == {A: T0 + 300 * S, B: T0 + 299 * S}


def test_an_offer_whose_own_late_heartbeat_notices_its_loss_is_lost_then_back() -> None:
    losses, live = lost_offers({A: T0}, [(A, T0 + 400 * S)], TTL)
    assert losses == [(A, T0)] and live == {A: T0 + 400 * S}


def test_without_heartbeats_nothing_is_lost() -> None:
    assert lost_offers({A: T0}, [], TTL) == ([], {A: T0})


def test_losses_do_not_depend_on_how_the_heartbeats_are_batched() -> None:
    beats = [(B, T0 + 100 * S), (C, T0 + 250 * S), (B, T0 + 350 * S), (A, T0 + 360 * S), (C, T0 + 700 * S)]
    whole, live = lost_offers({A: T0, B: T0, C: T0}, beats, TTL)
    state, parts = {A: T0, B: T0, C: T0}, []
    for i in range(0, len(beats), 2):  # a replay's batches differ from live's
        got, state = lost_offers(state, beats[i:i + 2], TTL)
        parts += got
    # A is lost, comes back and is lost again; C's own late heartbeat notices its loss and brings it back
    assert parts == whole == [(A, T0), (C, T0 + 250 * S), (B, T0 + 350 * S), (A, T0 + 360 * S)]
    assert state == live == {C: T0 + 700 * S}


@pytest.mark.parametrize(("status", "attempt", "failed", "after"), [
    ("matched", 1, 1, "waiting"),  # the current attempt never started: booked again
    ("matched", 2, 1, None),  # a stale report about an earlier attempt
    ("waiting", 2, 1, None),  # a repeated report: already waiting for attempt 2
    ("cancelled", 1, 1, None),  # cancelled meanwhile: not booked again
    ("expired", 1, 1, None),
    ("refused", 1, 1, None),
])
def test_a_placement_failure_books_only_the_current_attempt_again(status: str, attempt: int, failed: int,
                                                                  after: str | None) -> None:
    assert status_on_placement_failed(status, attempt, failed) == after


def test_a_workload_that_fails_before_it_starts_never_started_but_one_that_ran_stays_failed() -> None:
    assert never_started("assigned", "failed", None)
    assert not never_started("assigned", "failed", 3)  # it reported usage: it ran, it pays
    assert not never_started("running", "failed", None)  # it started: stays failed
    assert not never_started("assigned", "succeeded", None)


def test_a_lost_node_takes_only_its_workloads_assigned_before_the_loss_that_have_not_started() -> None:
    assert lost_with_node("assigned", T0, T0 + S)
    assert not lost_with_node("assigned", T0 + 2 * S, T0 + S)  # matched after the node came back
    assert not lost_with_node("running", T0, T0 + S)


def test_cancelling_a_job_that_waits_to_be_booked_again_voids_it_and_cancels_later_attempts() -> None:
    assert on_cancel("unplaced", False) == "void"
