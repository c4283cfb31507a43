"""The workload state machine: assigned -> running -> succeeded | failed, or assigned -> cancelled when
its job is cancelled before it runs, or assigned -> unplaced when it ends before it ever started (the
vendor gave it up, or its node was lost): then its job is booked again, as a new attempt. Repeats are
no-ops."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

Status = Literal["assigned", "running", "succeeded", "failed"]  # what a vendor reports
State = Literal["assigned", "running", "succeeded", "failed", "cancelled", "unplaced"]  # what a workload can be in
TERMINAL = {"succeeded", "failed", "cancelled", "unplaced"}
CancelAction = Literal["tombstone", "drop", "stop", "void", "none"]


def transition(current: State, reported: Status) -> Status | None:
    """The new status after a vendor report, or None when the report changes nothing.

    A report may skip `running` (a very short job); nothing leaves a terminal state, so a vendor's
    late word about a workload cancelled before it ran changes nothing.
    """
    if current in TERMINAL or current == reported:
        return None
    if reported == "assigned":
        return None
    return reported


def never_started(current: State, reported: Status, last_usage_seq: int | None) -> bool:
    """Whether a failure report ends a workload that never started: it was assigned, never reported
    running and used nothing. Nothing ran and nothing is paid, so its job is booked again elsewhere; a
    workload that ran (even for a moment) and failed stays failed and pays what it used."""
    return current == "assigned" and reported == "failed" and not last_usage_seq


def lost_with_node(current: State, assigned_at: datetime, lost_at: datetime) -> bool:
    """Whether a workload is lost with its node: it was assigned on a match made before the node was
    lost and has not started. A running one keeps running (its vendor still reports its end)."""
    return current == "assigned" and assigned_at <= lost_at


def on_cancel(current: State | None, stop_requested: bool) -> CancelAction:
    """What cancelling a job does to its workload (None: there is none yet).

    - no workload: the job's money is not held yet (or it was never matched); remember the cancel
      (`tombstone`) so that a later FundsHeld is cancelled instead of assigned;
    - assigned: `drop` it; nothing ran, so nothing is paid, and the vendor is told to drop it too;
    - running: `stop` it; the vendor kills it and reports it failed, and what it used is paid;
    - unplaced (it never started, and the job waits to be booked again): `void` it: the job's hold is
      voided and its reservation released now, and, as with a tombstone, a later attempt is cancelled;
    - asked to stop before, or ended: `none`.
    """
    if current is None:
        return "tombstone"
    if current == "unplaced":
        return "void"
    if current == "assigned":
        return "drop"
    if current == "running" and not stop_requested:
        return "stop"
    return "none"
