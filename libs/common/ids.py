"""Deterministic ids, so that a replay of the streams yields the same ids again."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

STRONGMOOSE_NS = uuid5(NAMESPACE_URL, "https://strongmoose.dsoderlund.consulting/")


def derived_id(cause_id: UUID, type_: str, n: int | str = 0) -> UUID:
    """Id of the n-th event of type `type_` caused by the event `cause_id` (`n` may be a key such as a job id)."""
    return uuid5(cause_id, f"{type_}/{n}")


def job_id(tenant: str, name: str) -> UUID:
    """A job is identified by tenant and name: resubmitting the same manifest names the same job."""
    return uuid5(STRONGMOOSE_NS, f"job/{tenant}/{name}")


def offer_id(vendor: str, node: str) -> UUID:
    """One offer per vendor node; a re-published offer replaces the previous one."""
    return uuid5(STRONGMOOSE_NS, f"offer/{vendor}/{node}")
