"""Placement use cases: assign matched jobs to their vendors; follow the vendors' reports."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, derive
from libs.common.events.agent import WorkloadReported
from libs.common.events.placement import WorkloadAssigned, WorkloadFailed, WorkloadFinished, WorkloadStarted
from libs.common.events.settlement import FundsHeld
from libs.common.ids import derived_id
from libs.common.subjects import vendor_party
from services.placement import domain, store

SOURCE = "placement"


async def place_jobs(tx: asyncpg.Connection, events: list[Envelope[FundsHeld]]) -> list[Envelope[Any]]:
    """Record a workload per matched job whose money is held, and send the assignment to the vendor."""
    for ev in events:
        if ev.payload.match is None:
            raise PermanentError(f"FundsHeld of job {ev.payload.job_id} carries no match to place")
    matches = [ev.payload.match for ev in events]
    rows = [(derived_id(ev.id, "workload"), m.job_id, m.request.tenant, m.request.name, m.vendor, m.node,
             m.request.resources.vcpu, m.request.resources.memory_gib, ev.time)
            for ev, m in zip(events, matches, strict=True)]
    created = await store.insert_workloads(tx, rows)
    out: list[Envelope[Any]] = []
    for ev, p, row in zip(events, matches, rows, strict=True):
        if row[0] not in created:
            continue  # this job already has a workload
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
        new = domain.transition(status[p.workload_id], p.status)
        if new is None:
            continue
        status[p.workload_id] = new
        reason = p.message or (f"exit code {p.exit_code}" if new == "failed" else None)
        await store.set_status(tx, p.workload_id, new, p.at, p.exit_code, reason if new == "failed" else None)
        common = dict(workload_id=w["workload_id"], job_id=w["job_id"], tenant=w["tenant"], name=w["name"],
                      vendor=w["vendor"], node=w["node"], at=p.at)
        party, corr = f"t-{w['tenant']}", w["job_id"]
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
