"""The workload state machine: assigned -> running -> succeeded | failed, or assigned -> cancelled when
its job is cancelled before it runs. Repeats are no-ops."""

from __future__ import annotations

from typing import Literal

Status = Literal["assigned", "running", "succeeded", "failed"]  # what a vendor reports
State = Literal["assigned", "running", "succeeded", "failed", "cancelled"]  # what a workload can be in
TERMINAL = {"succeeded", "failed", "cancelled"}
CancelAction = Literal["tombstone", "drop", "stop", "none"]


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


def on_cancel(current: State | None, stop_requested: bool) -> CancelAction:
    """What cancelling a job does to its workload (None: there is none yet).

    - no workload: the job's money is not held yet (or it was never matched); remember the cancel
      (`tombstone`) so that a later FundsHeld is cancelled instead of assigned;
    - assigned: `drop` it; nothing ran, so nothing is paid, and the vendor is told to drop it too;
    - running: `stop` it; the vendor kills it and reports it failed, and what it used is paid;
    - asked to stop before, or ended: `none`.
    """
    if current is None:
        return "tombstone"
    if current == "assigned":
        return "drop"
    if current == "running" and not stop_requested:
        return "stop"
    return "none"
