"""Metering use cases: integrate samples, report progress, close a meter once its workload ended and its
usage is in. The rules themselves (order, rejection, clamp, witness, dispute) live in `domain`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg

from libs.common.bus import PermanentError
from libs.common.envelope import Envelope, new_envelope
from libs.common.events.agent import UsageSampled
from libs.common.events.metering import MeterClosed, MeterProgressed
from libs.common.events.placement import WorkloadFailed, WorkloadFinished, WorkloadStarted
from libs.common.ids import derived_id
from libs.common.manifest import dtu_rate
from libs.common.subjects import tenant_party, vendor_party
from services.metering import domain, store

SOURCE = "metering"


@dataclass(frozen=True)
class Rules:
    """Metering's settings as the use cases need them."""

    skew: timedelta  # clock-skew tolerance around the running interval
    charge_interval_us: int  # MeterProgressed each time the integrated wall time covers another one
    tolerance: domain.Tolerance


async def record_usage(tx: asyncpg.Connection, events: list[Envelope[UsageSampled]],
                       rules: Rules) -> list[Envelope[Any]]:
    """Keep every sample, then integrate each known meter's samples in seq order up to the first gap.

    Repeats change nothing; a sample that overtook an earlier one, or arrived before placement's
    WorkloadStarted, waits in `usage_samples`; only the vendor the workload runs at is believed; a
    sample that arrives after its meter closed is kept and counted late.
    """
    for ev in events:
        if ev.party != vendor_party(ev.payload.vendor):
            raise PermanentError(f"usage of {ev.payload.vendor} reported by {ev.party}")
    await store.lock_workloads(tx, [e.payload.workload_id for e in events])
    known = await store.lock_meters(tx, [e.payload.workload_id for e in events])
    for ev in events:
        m = known.get(ev.payload.workload_id)
        if m is not None and m["vendor"] != ev.payload.vendor:
            raise PermanentError(f"workload {ev.payload.workload_id} does not run at {ev.payload.vendor}")
    new = await store.insert_samples(tx, [
        (p.workload_id, p.vendor, p.seq, p.at, p.cpu_us, p.wall_us, p.rss_peak_bytes, p.witness_cpu_us,
         p.witness_rss_peak_bytes) for p in (e.payload for e in events)])
    await store.count_late(tx, new)
    return await _integrate(tx, events, rules)


async def open_meters(tx: asyncpg.Connection, events: list[Envelope[WorkloadStarted]],
                      rules: Rules) -> list[Envelope[Any]]:
    """Placement says where a workload runs, since when and with what allocation: open its meter and
    take in the samples that came first."""
    await _ensure(tx, events)
    await store.mark_started(tx, [(e.payload.workload_id, e.payload.at, dtu_rate(e.payload.vcpu, e.payload.memory_gib))
                                  for e in events])
    return await _integrate(tx, events, rules)


async def end_meters(tx: asyncpg.Connection, events: list[Envelope[Any]], rules: Rules) -> list[Envelope[Any]]:
    """The workload ended: remember when, and the last sample it announced; close once that one is in."""
    await _ensure(tx, events)
    for ev in events:
        p: WorkloadFinished | WorkloadFailed = ev.payload
        outcome = "succeeded" if isinstance(p, WorkloadFinished) else "failed"
        await store.mark_ended(tx, p.workload_id, outcome, p.last_usage_seq, p.at)
    return await _integrate(tx, events, rules)


async def _ensure(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> None:
    await store.lock_workloads(tx, [e.payload.workload_id for e in events])
    await store.ensure_meters(tx, sorted({(e.payload.workload_id, e.payload.job_id, e.payload.tenant,
                                           e.payload.vendor) for e in events}))


async def _integrate(tx: asyncpg.Connection, causes: list[Envelope[Any]], rules: Rules) -> list[Envelope[Any]]:
    """Bring each touched meter up to date; then close it if its usage is all in, else report progress
    when another charge interval is covered (at most one event per workload per batch)."""
    rows = await store.lock_meters(tx, [c.payload.workload_id for c in causes])
    out: list[Envelope[Any]] = []
    done: set[UUID] = set()
    for cause in causes:
        wid = cause.payload.workload_id
        r = rows.get(wid)
        if r is None or r["status"] == "closed" or wid in done:
            continue
        done.add(wid)
        m = store.meter_of(r)
        if r["started"]:  # before placement's start is known there is no interval to judge samples by
            window = domain.Window(r["started_at"], None, rules.skew)
            after = domain.apply_in_order(m, await store.pending_samples(tx, wid, r["vendor"], m.last_seq), window)
            if after != m:
                await store.save_meter(tx, wid, after)
            m = after
        top = await store.top_seq(tx, wid, r["vendor"])
        if domain.ready_to_close(ended=r["ended"], started=r["started"], final_seq=r["final_seq"], top_seq=top):
            out.append(await _close(tx, r, cause, rules))
        elif r["started"]:
            n = domain.intervals_due(m.wall_us, r["charged_intervals"], rules.charge_interval_us)
            if n is not None and m.last_seq is not None and m.last_at is not None:
                await store.set_charged_intervals(tx, wid, n)
                out.append(_progressed(r, m, cause, rules))
    return out


def _progressed(r: asyncpg.Record, m: domain.Meter, cause: Envelope[Any], rules: Rules) -> Envelope[Any]:
    allowed = domain.dtu_micro_hours_allowed(r["dtu_rate"], r["started_at"], m.last_at)
    rd = domain.reading(m, allowed, rules.tolerance)
    assert m.last_seq is not None and m.last_at is not None
    progressed = MeterProgressed(
        workload_id=r["workload_id"], job_id=r["job_id"], tenant=r["tenant"], vendor=r["vendor"],
        dtu_micro_hours=rd.billable, claimed_dtu_micro_hours=rd.claimed, witness_dtu_micro_hours=rd.witness,
        disputed_dtu_micro_hours=rd.disputed, wall_us=m.wall_us, seq=m.last_seq, at=m.last_at)
    # the reading up to a given sample is the same whichever event brought it in: a redelivery dedupes
    return new_envelope(progressed, source=SOURCE, party=tenant_party(r["tenant"]), correlation_id=r["job_id"],
                        time=m.last_at, id=derived_id(r["workload_id"], "MeterProgressed", m.last_seq),
                        causation_id=cause.id)


async def _close(tx: asyncpg.Connection, r: asyncpg.Record, cause: Envelope[Any], rules: Rules) -> Envelope[Any]:
    wid = r["workload_id"]
    window = domain.Window(r["started_at"], r["ended_at"], rules.skew)
    closed = domain.close(await store.all_samples(tx, wid, r["vendor"]), window, r["final_seq"])
    m = closed.meter
    allowed = domain.dtu_micro_hours_allowed(r["dtu_rate"], r["started_at"], r["ended_at"])
    rd = domain.reading(m, allowed, rules.tolerance)
    await store.close(tx, wid, m, rd, closed.missing_seqs)
    meter = MeterClosed(
        workload_id=wid, job_id=r["job_id"], tenant=r["tenant"], vendor=r["vendor"], outcome=r["outcome"],
        dtu_micro_hours=rd.billable, claimed_dtu_micro_hours=rd.claimed, witness_dtu_micro_hours=rd.witness,
        disputed_dtu_micro_hours=rd.disputed, cpu_us=m.cpu_us, rss_peak_bytes=m.rss_peak_bytes, wall_us=m.wall_us,
        samples=m.samples, closed_at=r["ended_at"], rejected_samples=m.rejected, missing_seqs=closed.missing_seqs)
    # one MeterClosed per workload, whichever event completed it: its id derives from the workload
    return new_envelope(meter, source=SOURCE, party=tenant_party(r["tenant"]), correlation_id=r["job_id"],
                        time=r["ended_at"], id=derived_id(wid, "MeterClosed"), causation_id=cause.id)
