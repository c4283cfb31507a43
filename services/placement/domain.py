"""The workload state machine: assigned -> running -> succeeded | failed. Repeats are no-ops."""

from __future__ import annotations

from typing import Literal

Status = Literal["assigned", "running", "succeeded", "failed"]
TERMINAL = {"succeeded", "failed"}


def transition(current: Status, reported: Status) -> Status | None:
    """The new status after a vendor report, or None when the report changes nothing.

    A report may skip `running` (a very short job); nothing leaves a terminal state.
    """
    if current in TERMINAL or current == reported:
        return None
    if reported == "assigned":
        return None
    return reported
