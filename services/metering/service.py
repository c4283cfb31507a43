"""Metering use cases: integrate samples; close a meter once its workload ended and all usage is in."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from libs.common.envelope import Envelope, new_envelope
from libs.common.events.agent import UsageSampled
from libs.common.events.metering import MeterClosed
from libs.common.events.placement import WorkloadFailed, WorkloadFinished, WorkloadStarted
from libs.common.ids import derived_id
from services.metering import domain, store

SOURCE = "metering"


async def record_usage(tx: asyncpg.Connection, events: list[Envelope[UsageSampled]]) -> list[Envelope[Any]]:
    """Integrate samples in seq order per workload; repeats and backward counters change nothing."""
    await store.ensure_meters(tx, sorted({(e.payload.workload_id, e.payload.job_id, e.payload.tenant,
                                           e.payload.vendor) for e in events}))
    rows = await store.lock_meters(tx, [e.payload.workload_id for e in events])
    meters = {wid: store.meter_of(r) for wid, r in rows.items()}
    last_event: dict[UUID, Envelope[Any]] = {}
    samples = []
    for ev in sorted(events, key=lambda e: (e.payload.workload_id, e.payload.seq)):
        p = ev.payload
        if rows[p.workload_id]["status"] == "closed":
            continue
        s = domain.Sample(seq=p.seq, cpu_us=p.cpu_us, wall_us=p.wall_us, rss_peak_bytes=p.rss_peak_bytes)
        updated = domain.apply_sample(meters[p.workload_id], s)
        if updated is None:
            continue
        meters[p.workload_id] = updated
        last_event[p.workload_id] = ev
        samples.append((p.workload_id, p.seq, p.at, p.cpu_us, p.wall_us, p.rss_peak_bytes))
    for wid in last_event:
        await store.save_meter(tx, wid, meters[wid])
    await store.insert_samples(tx, samples)
    return await _close_complete(tx, list(last_event.values()))


async def open_meters(tx: asyncpg.Connection, events: list[Envelope[WorkloadStarted]]) -> list[Envelope[Any]]:
    await store.ensure_meters(tx, sorted({(e.payload.workload_id, e.payload.job_id, e.payload.tenant,
                                           e.payload.vendor) for e in events}))
    return []


async def end_meters(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """The workload ended: remember the last sample it announced; close when that sample is in."""
    await store.ensure_meters(tx, sorted({(e.payload.workload_id, e.payload.job_id, e.payload.tenant,
                                           e.payload.vendor) for e in events}))
    for ev in events:
        p: WorkloadFinished | WorkloadFailed = ev.payload
        outcome = "succeeded" if isinstance(p, WorkloadFinished) else "failed"
        await store.mark_ended(tx, p.workload_id, outcome, p.last_usage_seq, p.at)
    return await _close_complete(tx, events)


async def _close_complete(tx: asyncpg.Connection, causes: list[Envelope[Any]]) -> list[Envelope[Any]]:
    rows = await store.lock_meters(tx, [c.payload.workload_id for c in causes])
    out: list[Envelope[Any]] = []
    for cause in causes:
        r = rows[cause.payload.workload_id]
        if r["status"] != "open" or not r["ended"] or not domain.complete(r["final_seq"], r["last_seq"]):
            continue
        await store.close(tx, r["workload_id"])
        rows[r["workload_id"]] = {**r, "status": "closed"}  # type: ignore[assignment]
        closed = MeterClosed(
            workload_id=r["workload_id"], job_id=r["job_id"], tenant=r["tenant"], vendor=r["vendor"],
            outcome=r["outcome"], dtu_micro_hours=domain.micro_dtu_hours(r["dtu_hours"]), cpu_us=r["cpu_us"],
            rss_peak_bytes=r["rss_peak_bytes"], wall_us=r["wall_us"], samples=r["samples"], closed_at=r["ended_at"])
        # one MeterClosed per workload, whichever event completed it: its id derives from the workload
        out.append(new_envelope(closed, source=SOURCE, party=f"t-{r['tenant']}", correlation_id=r["job_id"],
                                time=r["ended_at"], id=derived_id(r["workload_id"], "MeterClosed"),
                                causation_id=cause.id))
    return out
