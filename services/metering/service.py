"""Metering use cases: integrate samples; close a meter once its workload ended and all usage is in."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, new_envelope
from libs.common.events.agent import UsageSampled
from libs.common.events.metering import MeterClosed
from libs.common.events.placement import WorkloadFailed, WorkloadFinished, WorkloadStarted
from libs.common.ids import derived_id
from libs.common.subjects import vendor_party
from services.metering import domain, store

SOURCE = "metering"


async def record_usage(tx: asyncpg.Connection, events: list[Envelope[UsageSampled]]) -> list[Envelope[Any]]:
    """Keep every sample, then integrate each known meter's samples in seq order up to the first gap.

    Repeats change nothing; a sample that overtook an earlier one, or arrived before placement's
    WorkloadStarted, waits in `usage_samples`; only the vendor the workload runs at is believed.
    """
    for ev in events:
        if ev.party != vendor_party(ev.payload.vendor):
            raise PermanentError(f"usage of {ev.payload.vendor} reported by {ev.party}")
    known = await store.lock_meters(tx, [e.payload.workload_id for e in events])
    for ev in events:
        m = known.get(ev.payload.workload_id)
        if m is not None and m["vendor"] != ev.payload.vendor:
            raise PermanentError(f"workload {ev.payload.workload_id} does not run at {ev.payload.vendor}")
    await store.insert_samples(tx, [(e.payload.workload_id, e.payload.vendor, e.payload.seq, e.payload.at,
                                     e.payload.cpu_us, e.payload.wall_us, e.payload.rss_peak_bytes) for e in events])
    return await _integrate(tx, events)


async def open_meters(tx: asyncpg.Connection, events: list[Envelope[WorkloadStarted]]) -> list[Envelope[Any]]:
    """Placement says where a workload runs: open its meter and take in samples that came first."""
    await _ensure(tx, events)
    return await _integrate(tx, events)


async def end_meters(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """The workload ended: remember the last sample it announced; close when that sample is in."""
    await _ensure(tx, events)
    for ev in events:
        p: WorkloadFinished | WorkloadFailed = ev.payload
        outcome = "succeeded" if isinstance(p, WorkloadFinished) else "failed"
        await store.mark_ended(tx, p.workload_id, outcome, p.last_usage_seq, p.at)
    return await _integrate(tx, events)


async def _ensure(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> None:
    await store.ensure_meters(tx, sorted({(e.payload.workload_id, e.payload.job_id, e.payload.tenant,
                                           e.payload.vendor) for e in events}))


async def _integrate(tx: asyncpg.Connection, causes: list[Envelope[Any]]) -> list[Envelope[Any]]:
    rows = await store.lock_meters(tx, [c.payload.workload_id for c in causes])
    touched: dict[UUID, Envelope[Any]] = {}
    for cause in causes:
        wid = cause.payload.workload_id
        r = rows.get(wid)
        if r is None or r["status"] == "closed" or wid in touched:
            continue
        touched[wid] = cause
        before = store.meter_of(r)
        after = domain.apply_in_order(before, await store.pending_samples(tx, wid, r["vendor"], before.last_seq))
        if after != before:
            await store.save_meter(tx, wid, after)
    return await _close_complete(tx, list(touched.values()))


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
