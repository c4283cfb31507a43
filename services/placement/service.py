"""Placement use cases: assign matched jobs to their vendors; follow the vendors' reports; cancel; give
up workloads that never started (their vendor failed them, or their node was lost)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.agent import WorkloadReported
from libs.common.events.intake import JobCancelled
from libs.common.events.matching import OfferLost
from libs.common.events.placement import (
    PlacementFailed,
    WorkloadAssigned,
    WorkloadCancelled,
    WorkloadCancelRequested,
    WorkloadFailed,
    WorkloadFinished,
    WorkloadStarted,
)
from libs.common.events.settlement import FundsHeld
from libs.common.ids import derived_id, offer_id
from libs.common.subjects import tenant_party, vendor_party
from services.placement import domain, store

SOURCE = "placement"


async def place_jobs(tx: asyncpg.Connection, events: list[Envelope[FundsHeld]]) -> list[Envelope[Any]]:
    """Record a workload per matched job (per attempt) whose money is held, and send the assignment to the
    vendor; a job cancelled before its money was held is cancelled now instead (nothing ran: nothing to
    pay); a match on a node lost since is given up at once (PlacementFailed: matching books it again)."""
    for ev in events:
        if ev.payload.match is None:
            raise PermanentError(f"FundsHeld of job {ev.payload.job_id} carries no match to place")
    matches = [ev.payload.match for ev in events]
    await store.lock_nodes(tx, [offer_id(m.vendor, m.node) for m in matches])  # a loss now waits, or is seen
    await store.lock_jobs(tx, [m.job_id for m in matches])
    cancelled = await store.cancellations(tx, [m.job_id for m in matches])
    rows = [(derived_id(ev.id, "workload"), m.job_id, m.request.tenant, m.request.name, m.vendor, m.node,
             m.request.resources.vcpu, m.request.resources.memory_gib, ev.time, m.attempt, m.request.not_after)
            for ev, m in zip(events, matches, strict=True)]
    created = await store.insert_workloads(tx, rows)
    losses = await store.last_losses(tx, sorted({offer_id(m.vendor, m.node) for m in matches}))
    out: list[Envelope[Any]] = []
    for ev, p, row in zip(events, matches, rows, strict=True):
        if row[0] not in created:
            continue  # this job already has a workload
        c = cancelled.get(p.job_id)
        if c is not None:
            await store.cancel(tx, row[0], ev.time, c["reason"])
            out.append(derive(ev, WorkloadCancelled(job_id=p.job_id, tenant=p.request.tenant, name=p.request.name,
                                                    vendor=p.vendor, reason=c["reason"], at=ev.time),
                              source=SOURCE, party=tenant_party(p.request.tenant), correlation_id=p.job_id))
            continue
        lost_at, cause, words = losses.get(offer_id(p.vendor, p.node), (None, "", ""))
        if lost_at is not None and ev.time <= lost_at:  # matched while the node was alive, lost before placed
            reason = _lost(p.vendor, p.node, lost_at, cause, words)
            await store.unplace(tx, row[0], lost_at, reason)
            w = dict(zip(("workload_id", "job_id", "tenant", "name", "vendor", "node"), row, strict=False))
            out.append(_unplaced(ev, {**w, "attempt": p.attempt, "deadline": p.request.not_after}, reason, lost_at))
            continue
        out.append(derive(ev, WorkloadAssigned(
            workload_id=row[0], job_id=p.job_id, vendor=p.vendor, node=p.node, request=p.request,
            start_at=p.start_at, deadline=p.request.not_after), source=SOURCE, party=vendor_party(p.vendor)))
    return out


async def follow_reports(tx: asyncpg.Connection, events: list[Envelope[WorkloadReported]]) -> list[Envelope[Any]]:
    """Apply vendors' status reports through the state machine; emit the lifecycle facts."""
    workloads = await store.lock_workloads(tx, [ev.payload.workload_id for ev in events])
    status = {wid: w["status"] for wid, w in workloads.items()}
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        w = workloads.get(p.workload_id)
        if w is None:
            raise PermanentError(f"unknown workload {p.workload_id}")
        if w["vendor"] != p.vendor or ev.party != vendor_party(w["vendor"]):
            raise PermanentError(f"workload {p.workload_id} is not assigned to vendor {p.vendor}")
        old, new = status[p.workload_id], domain.transition(status[p.workload_id], p.status)
        if new is None:
            continue
        if domain.never_started(old, p.status, p.last_usage_seq):
            status[p.workload_id] = "unplaced"
            why = p.message or (f"exit code {p.exit_code}" if p.exit_code is not None else "failed")
            await store.unplace(tx, p.workload_id, p.at, why)
            out.append(_unplaced(ev, w, f"the vendor gave it up before it started: {why}", p.at))
            continue
        status[p.workload_id] = new
        reason = p.message or (f"exit code {p.exit_code}" if new == "failed" else None)
        await store.set_status(tx, p.workload_id, new, p.at, p.exit_code, reason if new == "failed" else None)
        common = dict(workload_id=w["workload_id"], job_id=w["job_id"], tenant=w["tenant"], name=w["name"],
                      vendor=w["vendor"], node=w["node"], at=p.at)
        party, corr = f"t-{w['tenant']}", w["job_id"]
        if old == "assigned" and new != "running" and p.last_usage_seq:
            # it ran (it reported usage) but its running report never came, or came last: metering
            # needs the start, and the earliest it can have started is when it was assigned
            out.append(derive(ev, WorkloadStarted(**{**common, "at": w["assigned_at"]}, vcpu=w["vcpu"],
                                                  memory_gib=w["memory_gib"]),
                              source=SOURCE, party=party, correlation_id=corr, time=w["assigned_at"]))
        fact: Any
        if new == "running":
            fact = WorkloadStarted(**common, vcpu=w["vcpu"], memory_gib=w["memory_gib"])
        elif new == "succeeded":
            fact = WorkloadFinished(**common, exit_code=p.exit_code or 0, last_usage_seq=p.last_usage_seq)
        else:
            fact = WorkloadFailed(**common, reason=reason or "failed", exit_code=p.exit_code,
                                  last_usage_seq=p.last_usage_seq)
        out.append(derive(ev, fact, source=SOURCE, party=party, correlation_id=corr, time=p.at))
    return out


async def cancel_jobs(tx: asyncpg.Connection, events: list[Envelope[JobCancelled]]) -> list[Envelope[Any]]:
    """Cancel cancelled jobs' workloads as far as they got (see `domain.on_cancel`): remember a cancel
    that came before the job's FundsHeld; drop an assigned workload (WorkloadCancelled, and the vendor
    is told to drop it); ask the vendor to stop a running one, whose end it then reports as usual."""
    job_ids = [ev.payload.job_id for ev in events]
    await store.lock_jobs(tx, job_ids)
    workloads = await store.workloads_of_jobs(tx, job_ids)
    state = {jid: (w["status"], w["cancel_requested_at"] is not None) for jid, w in workloads.items()}
    out: list[Envelope[Any]] = []
    tombstones: list[tuple[Any, ...]] = []
    for ev in events:
        p = ev.payload
        reason = p.reason or "cancelled by the consumer"
        action = domain.on_cancel(*state.get(p.job_id, (None, False)))
        if action in ("tombstone", "void"):
            tombstones.append((p.job_id, p.tenant, p.name, reason, ev.time, ev.id))
        if action == "void":  # it waits to be booked again: nothing ran, so the hold is voided now
            out.append(derive(ev, WorkloadCancelled(job_id=p.job_id, tenant=p.tenant, name=p.name, reason=reason,
                                                    at=ev.time),
                              source=SOURCE, party=tenant_party(p.tenant), correlation_id=p.job_id))
        if action in ("tombstone", "void"):
            continue
        if action == "none":
            continue
        w = workloads[p.job_id]
        stop = derive(ev, WorkloadCancelRequested(workload_id=w["workload_id"], job_id=p.job_id, vendor=w["vendor"],
                                                  node=w["node"], reason=reason, at=ev.time),
                      source=SOURCE, party=vendor_party(w["vendor"]), correlation_id=p.job_id)
        if action == "drop":
            await store.cancel(tx, w["workload_id"], ev.time, reason)
            state[p.job_id] = ("cancelled", True)
            out.append(derive(ev, WorkloadCancelled(job_id=p.job_id, tenant=p.tenant, name=p.name, vendor=w["vendor"],
                                                    reason=reason, at=ev.time),
                              source=SOURCE, party=tenant_party(p.tenant), correlation_id=p.job_id))
        else:
            await store.request_stop(tx, w["workload_id"], ev.time)
            state[p.job_id] = (w["status"], True)
        out.append(stop)
    await store.add_cancellations(tx, tombstones)
    return out


async def lose_nodes(tx: asyncpg.Connection, events: list[Envelope[OfferLost]]) -> list[Envelope[Any]]:
    """Matching lost a node (its heartbeats stopped, or its vendor withdrew it): its workloads that have not
    started are given up (PlacementFailed, so that their jobs are booked elsewhere) and the vendor is told to
    drop them, should it come back; running ones go on. A match on the node that comes later is given up too
    (`place_jobs`)."""
    await store.lock_nodes(tx, [ev.payload.offer_id for ev in events])  # a placement on them now waits, or is seen
    await store.add_lost_offers(tx, [(ev.payload.offer_id, ev.payload.lost_at, ev.payload.vendor, ev.payload.node,
                                      ev.id, ev.payload.cause, ev.payload.reason) for ev in events])
    on_node = {ev.id: await store.assigned_on(tx, ev.payload.vendor, ev.payload.node) for ev in events}
    jobs = sorted({j for js in on_node.values() for j in js})
    await store.lock_jobs(tx, jobs)
    workloads = await store.workloads_of_jobs(tx, jobs)
    out: list[Envelope[Any]] = []
    for ev in events:
        p = ev.payload
        for jid in on_node[ev.id]:
            w = workloads[jid]
            if (w["vendor"], w["node"]) != (p.vendor, p.node) or not domain.lost_with_node(
                    w["status"], w["assigned_at"], p.lost_at):
                continue
            # the same reason and time as when the match reaches placement after the loss (`place_jobs`):
            # whichever comes first, the workload ends the same (a replay's order may differ from live's)
            reason = _lost(p.vendor, p.node, p.lost_at, p.cause, p.reason)
            await store.unplace(tx, w["workload_id"], p.lost_at, reason)
            workloads[jid] = {**w, "status": "unplaced"}
            out.append(_unplaced(ev, w, reason, p.lost_at, n=str(w["workload_id"])))
            out.append(derive(ev, WorkloadCancelRequested(workload_id=w["workload_id"], job_id=jid, vendor=p.vendor,
                                                          node=p.node, reason=reason, at=p.lost_at),
                              source=SOURCE, party=vendor_party(p.vendor), correlation_id=jid, n=str(w["workload_id"])))
    return out


def _lost(vendor: str, node: str, lost_at: datetime, cause: str, words: str = "") -> str:
    why = "withdrawn by its vendor" if cause == "withdrawn" else "lost (no heartbeat)"
    return f"its node {vendor}/{node} was {why} at {lost_at.isoformat()}" + (f": {words}" if words else "")


def _unplaced(cause: Envelope[Any], w: Any, reason: str, at: Any, n: str = "0") -> Envelope[Any]:
    """PlacementFailed for workload `w` (a row or a dict of one): matching books its job again."""
    fact = PlacementFailed(workload_id=w["workload_id"], job_id=w["job_id"], tenant=w["tenant"], name=w["name"],
                           vendor=w["vendor"], node=w["node"], at=at, attempt=w["attempt"],
                           offer_id=offer_id(w["vendor"], w["node"]), deadline=w["deadline"] or at, reason=reason)
    return derive(cause, fact, source=SOURCE, party=tenant_party(w["tenant"]), correlation_id=w["job_id"], n=n,
                  time=at)
