"""Intake's lifecycle rules for cancelling: which jobs can be cancelled, and what the view shows."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest

from libs.common.envelope import new_envelope
from libs.common.events.intake import JobCancelled, JobCancelRefused
from libs.common.events.placement import WorkloadCancelled, WorkloadFailed
from services.intake.domain import ENDED, RANK, cancel_verdict, describe, facts_of, status_of

T = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
NOT_ENDED = ("accepted", "waiting", "matched", "placed", "running")


@pytest.mark.parametrize("status", NOT_ENDED)
def test_a_job_that_has_not_ended_can_be_cancelled(status: str) -> None:
    verdict, line = cancel_verdict("xyz", "j", status)
    assert verdict == "cancel" and f"it was {status}" in line


@pytest.mark.parametrize("status", sorted(ENDED - {"cancelled"}))
def test_a_job_that_has_ended_cannot_be_cancelled_and_the_refusal_says_so(status: str) -> None:
    verdict, line = cancel_verdict("xyz", "j", status)
    assert verdict == "refuse"
    assert line == f"job xyz/j has ended (status {status}); only a job that has not ended can be cancelled"


def test_cancelling_a_cancelled_job_changes_nothing() -> None:
    assert cancel_verdict("xyz", "j", "cancelled") == ("already", "job xyz/j is cancelled already; nothing changed")


def test_cancelling_a_job_the_tenant_does_not_have_is_refused() -> None:
    assert cancel_verdict("xyz", "nope", None) == ("refuse", "no job xyz/nope")


def test_every_status_the_view_knows_is_either_ended_or_cancellable() -> None:
    assert set(RANK) == ENDED | set(NOT_ENDED)


def test_cancelled_outranks_every_status_of_a_job_that_had_not_ended() -> None:
    # the workload of a job cancelled while running still fails, is metered and settled: it stays cancelled
    assert all(RANK["cancelled"] > RANK[s] for s in (*NOT_ENDED, "failed", "metered", "settled"))


def envelope(payload: object) -> object:
    return new_envelope(payload, source="test", party="t-xyz", correlation_id=uuid4(), time=T)  # type: ignore[arg-type]


def test_a_cancel_and_a_workload_cancelled_before_it_ran_mean_cancelled() -> None:
    jid = uuid4()
    cancelled = envelope(JobCancelled(job_id=jid, tenant="xyz", name="j", previous_status="placed"))
    dropped = envelope(WorkloadCancelled(job_id=jid, tenant="xyz", name="j", vendor="safespring",
                                         reason="cancelled by the consumer", at=T))
    for env in (cancelled, dropped):
        assert status_of(env) == "cancelled"  # type: ignore[arg-type]
        assert facts_of(env) == {"outcome": "cancelled"}  # type: ignore[arg-type]
    assert describe(cancelled) == "cancelled (it was placed)"  # type: ignore[arg-type]
    assert "nothing to pay" in describe(dropped)  # type: ignore[arg-type]


def test_the_timeline_says_a_running_job_is_stopped_and_charged_for_what_it_used() -> None:
    env = envelope(JobCancelled(job_id=uuid4(), tenant="xyz", name="j", previous_status="running", reason="oops"))
    assert describe(env) == (  # type: ignore[arg-type]
        "cancelled while running: oops; the vendor stops it and only what it used is charged")


def test_a_refusal_and_a_failed_cancelled_workload_read_as_such() -> None:
    refused = envelope(JobCancelRefused(tenant="xyz", name="j", reason="no job xyz/j"))
    assert describe(refused) == "cancel refused: no job xyz/j"  # type: ignore[arg-type]
    failed = envelope(WorkloadFailed(workload_id=uuid4(), job_id=uuid4(), tenant="xyz", name="j", vendor="v",
                                     node="n", at=T, reason="cancelled", exit_code=-9))
    assert status_of(failed) == "failed" and describe(failed) == "failed: cancelled"  # type: ignore[arg-type]
