"""Throughput and latency of the whole exchange, against a bare-JetStream baseline run alongside it.

    .venv/bin/python bench/pipeline.py [--jobs 2000] [--single-jobs 300] [--batch 200]

Starts its own NATS + PostgreSQL (or uses NATS_URL / DATABASE_URL), runs the five services in this
event loop on fresh schemas and empty streams (as tests/conftest.py does), plays every vendor with a
fast in-process fake, submits jobs built from the Alibaba GPU trace's CPU tasks, and measures the
time until every job is settled. Phases, all in one run:

  pipeline   J jobs through the five services, batch_size=--batch            (the headline figure)
  raw        the same message graph (14 stream writes, 19 consumer deliveries per job) relayed by
             bare nats-py pull consumers: no database, no parsing, no logic   (the floor)
  small      the pipeline again for --single-jobs jobs, batch_size=--batch    (like-for-like reference)
  single     the pipeline for --single-jobs jobs with batch_size=1            (one message per transaction)

It prints figures and ratios; it never asserts speed. See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import asyncpg  # noqa: E402
import nats  # noqa: E402
import psutil  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from workload import (  # noqa: E402  (bench/workload.py: shared with bench/chaos.py)
    CAP_EUR,
    RAW_FINAL,
    RAW_HOPS,
    RAW_STREAMS,
    TENANTS,
    TRACE,
    FakeVendor,
    Task,
    ask,
    cancel_all,
    consumer_counts,
    delete_streams,
    manifest,
    percentile,
    raw_hop,
    stream_counts,
    trace_tasks,
    wait_for,
)

from clients.agent.catalog import default_data_dir  # noqa: E402
from libs.common.bus import Runtime  # noqa: E402
from libs.common.envelope import new_envelope  # noqa: E402
from libs.common.events.agent import OfferPublished  # noqa: E402
from libs.common.events.sdk import DepositRequested, JobSubmitted  # noqa: E402
from libs.common.ids import job_id, offer_id  # noqa: E402
from libs.common.localinfra import Infra, ensure_infra  # noqa: E402
from libs.common.streams import ALL_STREAMS, DUPLICATE_WINDOW_S, MAX_AGE_S, ensure_streams  # noqa: E402
from libs.common.subjects import CHARGE_POSTED_ANY, subject_for  # noqa: E402

SERVICES = ("intake", "matching", "placement", "metering", "settlement")
PRICE_BASE = 30_000  # micro-EUR per DTU-hour of the cheapest offer; the others are a little dearer
console = Console(width=max(160, shutil.get_terminal_size((160, 24)).columns), highlight=False)


# -- measuring -------------------------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds (user + system) of this process, nats-server and PostgreSQL (postmaster + backends)."""

    def __init__(self, infra: Infra):
        self.roots = {"python": os.getpid()}
        if infra.nats and infra.nats.pid:
            self.roots["nats"] = infra.nats.pid
        if infra.postgres and infra.postgres.pid:
            self.roots["postgres"] = infra.postgres.pid

    def snapshot(self) -> dict[str, dict[int, float]]:
        snap: dict[str, dict[int, float]] = {}
        for name, pid in self.roots.items():
            per: dict[int, float] = {}
            try:
                root = psutil.Process(pid)
                procs = [root] + (root.children(recursive=True) if name == "postgres" else [])
            except psutil.NoSuchProcess:
                procs = []
            for p in procs:
                try:
                    t = p.cpu_times()
                    per[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            snap[name] = per
        t = psutil.cpu_times()
        busy = sum(getattr(t, f) for f in t._fields if f not in ("idle", "iowait", "guest", "guest_nice"))
        snap["machine"] = {0: busy}
        return snap

    @staticmethod
    def delta(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds per group between two snapshots; "others" is everything else on the machine."""
        d = {name: sum(v - a.get(name, {}).get(pid, 0.0) for pid, v in per.items()) for name, per in b.items()}
        machine = d.pop("machine")
        d["others"] = max(0.0, machine - sum(d.values()))
        return d


class LogCounter(logging.Handler):
    """Counts the services' warnings and errors by message template; shows the first few on stderr."""

    def __init__(self, show: int = 5):
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.examples: dict[tuple[str, str, str], str] = {}
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.levelname, record.name, str(record.msg)[:70])
        self.counts[key] += 1
        if key not in self.examples:
            self.examples[key] = record.getMessage()[:300]
        if self.show > 0:
            self.show -= 1
            sys.stderr.write(f"[{record.levelname} {record.name}] {record.getMessage()[:300]}\n")

    def since(self, before: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
        return self.counts - before


@dataclass
class Result:
    phase: str
    jobs: int
    batch: int | str
    done: int = 0
    wall_s: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    intake_lag_ms: float | None = None  # last ChargePosted -> intake's jobs query shows all settled
    drain_lag_ms: float | None = None  # last ChargePosted -> every consumer drained, every outbox published
    probe_ms: list[float] = field(default_factory=list)  # unloaded submit -> ChargePosted, one job at a time
    notes: list[str] = field(default_factory=list)
    msgs_per_job: float | None = None
    deliveries_per_job: float | None = None
    harness_cpu_s: float = 0.0
    mean_msg_bytes: float | None = None
    hops: dict[str, list[float]] = field(default_factory=dict)  # hop -> delays in ms (only with --hops)
    consumers: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s and self.wall_s == self.wall_s else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


class Arrivals:
    """Wall-clock arrival time per job id of a final message, from a plain core NATS subscription."""

    def __init__(self, expected: int, key: Any):
        self.expected, self.key = expected, key
        self.at: dict[str, float] = {}
        self.done = asyncio.Event()
        self.waiting: dict[str, asyncio.Event] = {}

    def expect(self, k: str) -> asyncio.Event:
        return self.waiting.setdefault(k, asyncio.Event())

    async def cb(self, msg: Any) -> None:
        t = time.perf_counter()
        k = self.key(msg.data)
        if k not in self.at:
            self.at[k] = t
            if k in self.waiting:
                self.waiting[k].set()
            if len(self.at) >= self.expected:
                self.done.set()


# (hop, from event, to event, who does the work); an event is "Type" or "WorkloadReported:<status>"
HOPS = [
    ("submit -> accepted", "JobSubmitted", "JobAccepted", "intake"),
    ("accepted -> matched", "JobAccepted", "JobMatched", "matching"),
    ("matched -> assigned", "JobMatched", "WorkloadAssigned", "placement"),
    ("matched -> funds held", "JobMatched", "FundsHeld", "settlement"),
    ("assigned -> running report", "WorkloadAssigned", "WorkloadReported:running", "fake vendor"),
    ("running report -> started", "WorkloadReported:running", "WorkloadStarted", "placement"),
    ("succeeded report -> finished", "WorkloadReported:succeeded", "WorkloadFinished", "placement"),
    ("finished -> meter closed", "WorkloadFinished", "MeterClosed", "metering"),
    ("meter closed -> charge posted", "MeterClosed", "ChargePosted", "settlement"),
    ("submit -> charge posted", "JobSubmitted", "ChargePosted", "all"),
]


class HopTracer:
    """With --hops: every job event's wall-clock arrival, from a core subscription on all service subjects.

    The callback only stores (time, bytes); parsing happens after the run. It still costs client CPU in
    this process (one callback per message), so a run with --hops is a little slower."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bytes]] = []

    async def cb(self, msg: Any) -> None:
        self.seen.append((time.perf_counter(), msg.data))

    def delays(self) -> dict[str, list[float]]:
        first: dict[tuple[str, str], float] = {}
        for t, data in self.seen:
            d = json.loads(data)
            kind = d["type"] + (f":{d['payload']['status']}" if d["type"] == "WorkloadReported" else "")
            first.setdefault((kind, d["correlation_id"]), t)
        out: dict[str, list[float]] = {}
        for hop, a, b, _ in HOPS:
            out[hop] = [(tb - first[(a, cid)]) * 1000 for (kind, cid), tb in first.items()
                        if kind == b and (a, cid) in first]
        return out


# -- phase: the pipeline ---------------------------------------------------------------------------------------

def make_services(schemas: dict[str, str]) -> list[Any]:
    from services.intake.app import create_service as intake
    from services.intake.settings import IntakeSettings
    from services.matching.app import create_service as matching
    from services.matching.settings import MatchingSettings
    from services.metering.app import create_service as metering
    from services.metering.settings import MeteringSettings
    from services.placement.app import create_service as placement
    from services.placement.settings import PlacementSettings
    from services.settlement.app import create_service as settlement
    from services.settlement.settings import SettlementSettings

    return [
        intake(IntakeSettings(intake_schema=schemas["intake"])),
        matching(MatchingSettings(matching_schema=schemas["matching"])),
        placement(PlacementSettings(placement_schema=schemas["placement"])),
        metering(MeteringSettings(metering_schema=schemas["metering"])),
        settlement(SettlementSettings(settlement_schema=schemas["settlement"], settlement_fee_bps=250)),
    ]


async def stop_runtime(rt: Runtime, timeout: float = 15.0) -> str | None:
    """`rt.stop()`, bounded: if it hangs, say so, cancel its tasks until they end and close its connections."""
    try:
        await asyncio.wait_for(rt.stop(), timeout)
        return None
    except asyncio.TimeoutError:
        pass
    tasks = list(getattr(rt, "_tasks", []))
    stuck = [t.get_name() for t in tasks if not t.done()]
    left = await cancel_all(tasks)
    if rt.nc is not None and not rt.nc.is_closed:
        await rt.nc.close()
    if rt.pool is not None:
        rt.pool.terminate()
    return (f"Runtime.stop() of {rt.service.name} did not return within {timeout:.0f} s; tasks still running: "
            f"{stuck}" + (f"; could not cancel {left}" if left else ""))


def offer_events(n_vendors: int, n_nodes: int, tasks: list[Task], t0: datetime) -> list[Any]:
    """n_vendors x n_nodes offers big enough that all the jobs fit at once (capacity never limits)."""
    total_vcpu = sum(Decimal(t.cpu_milli) / 1000 for t in tasks)
    total_gib = sum(Decimal(t.memory_mib) / 1024 for t in tasks)
    n = n_vendors * n_nodes
    biggest_vcpu = max(Decimal(t.cpu_milli) / 1000 for t in tasks)
    biggest_gib = max(Decimal(t.memory_mib) / 1024 for t in tasks)
    vcpu = max(Decimal(64), math.ceil(total_vcpu / n * Decimal("1.25")), biggest_vcpu)
    gib = max(Decimal(256), math.ceil(total_gib / n * Decimal("1.25")), biggest_gib)
    out = []
    for v in range(n_vendors):
        vendor = f"bv{v:02d}"
        for k in range(n_nodes):
            node = f"n{k}"
            oid = offer_id(vendor, node)
            out.append(new_envelope(OfferPublished(
                offer_id=oid, vendor=vendor, node=node, region="eu-north-1", country="Sweden", eu=True,
                vcpu=Decimal(vcpu), memory_gib=Decimal(gib), price_micro_eur_per_dtu_hour=PRICE_BASE + 100 * v + 10 * k,
                available_from=t0 - timedelta(hours=1), available_until=t0 + timedelta(days=400)),
                source="agent", party=f"v-{vendor}", correlation_id=oid, time=t0))
    return out


async def drained(js: JetStreamContext, database_url: str, schemas: dict[str, str]) -> bool:
    """Every consumer has handled and acked everything, and every outbox is published."""
    for c in (await consumer_counts(js, list(ALL_STREAMS))).values():
        if c["pending"] or c["ack_pending"]:
            return False
    con = await asyncpg.connect(database_url)
    try:
        for schema in schemas.values():
            if await con.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"):
                return False
    finally:
        await con.close()
    return True


async def run_pipeline(infra: Infra, args: argparse.Namespace, tasks: list[Task], jobs: int, batch: int,
                       phase: str, logs: LogCounter, cpu: CpuMeter, probes: int = 0) -> Result:
    res = Result(phase=phase, jobs=jobs, batch=batch)
    log_before = Counter(logs.counts)
    nc = await nats.connect(infra.nats_url, name=f"bench-{phase}")
    js = nc.jetstream()
    await delete_streams(js, list(ALL_STREAMS))
    await ensure_streams(js)
    tag = uuid.uuid4().hex[:8]
    schemas = {s: f"bench_{tag}_{s}" for s in SERVICES}
    runtimes: list[Runtime] = []
    tasks_bg: list[asyncio.Task[Any]] = []
    obs: NATS | None = None
    vendor = FakeVendor(nc.jetstream(), batch=200)
    try:
        for svc in make_services(schemas):
            rt = Runtime(svc, infra.nats_url, infra.database_url, batch_size=batch)
            await rt.start()
            runtimes.append(rt)
        tasks_bg.append(asyncio.create_task(vendor.run(), name="fake-vendor"))
        t_start = datetime.now(timezone.utc).replace(microsecond=0)
        chosen = [tasks[i % len(tasks)] for i in range(jobs + probes)]
        offers = offer_events(args.vendors, args.nodes, chosen, t_start)
        futs = [await js.publish_async(subject_for(o), o.to_bytes(), headers={"Nats-Msg-Id": str(o.id)})
                for o in offers]
        await asyncio.gather(*futs)

        async def book_full() -> bool:
            return len(await ask(nc, "matching", "offers")) >= len(offers)
        await wait_for(book_full, 30, "offers in matching's book", every=0.1)

        # every tenant pays in enough for all its jobs' holds (a hold must fit in the wallet)
        tenants = sorted({manifest(i, task, t_start, phase[:2])["metadata"]["namespace"]
                          for i, task in enumerate(chosen)})
        deposits = [new_envelope(DepositRequested(tenant=t, amount_micro_eur=10**12, reference=f"bench-{phase}"),
                                 source="sdk", party=f"t-{t}", correlation_id=uuid.uuid4()) for t in tenants]
        await asyncio.gather(*[await js.publish_async(subject_for(d), d.to_bytes(), headers={"Nats-Msg-Id": str(d.id)})
                               for d in deposits])

        async def funded() -> bool:
            for t in tenants:
                if (await ask(nc, "settlement", "wallet", tenant=t))["balance_micro_eur"] < 10**12:
                    return False
            return True
        await wait_for(funded, 30, "the tenants' deposits", every=0.1)

        # the submissions, built before the clock starts
        not_after = t_start + timedelta(days=200)
        subs = []
        for i, task in enumerate(chosen):
            doc = manifest(i, task, not_after, phase[:2])
            md = doc["metadata"]
            jid = job_id(md["namespace"], md["name"])
            env = new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{md['namespace']}",
                               correlation_id=jid)
            subs.append((str(jid), subject_for(env), env.to_bytes(), {"Nats-Msg-Id": str(env.id)}))
        burst, probe_subs = subs[:jobs], subs[jobs:]

        obs = await nats.connect(infra.nats_url, name=f"bench-{phase}-observer", pending_size=64 * 1024 * 1024)
        arrivals = Arrivals(jobs, lambda data: json.loads(data)["correlation_id"])
        await obs.subscribe(CHARGE_POSTED_ANY, cb=arrivals.cb, pending_msgs_limit=10 * jobs + 1000)
        tracer = HopTracer() if args.hops else None
        if tracer is not None:
            for prefix in ("sdk", "intake", "matching", "placement", "agent", "metering", "settlement"):
                await obs.subscribe(f"{prefix}.>", cb=tracer.cb, pending_msgs_limit=20 * jobs + 1000)
        await obs.flush()

        # the measured window: first submit .. last ChargePosted seen
        submitted: dict[str, float] = {}
        c0 = cpu.snapshot()
        t0 = time.perf_counter()
        futs = []
        for jid, subject, data, headers in burst:
            submitted[jid] = time.perf_counter()
            futs.append(await js.publish_async(subject, data, headers=headers))
        await asyncio.gather(*futs)
        try:
            await asyncio.wait_for(arrivals.done.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            res.notes.append(f"TIMEOUT after {args.timeout:.0f}s: {len(arrivals.at)}/{jobs} ChargePosted seen")
        c1 = cpu.snapshot()
        res.done = len(arrivals.at)
        if arrivals.at:
            res.wall_s = max(arrivals.at.values()) - t0
        res.latencies_ms = [(t - submitted[k]) * 1000 for k, t in arrivals.at.items() if k in submitted]
        res.cpu_s = CpuMeter.delta(c0, c1)
        res.harness_cpu_s = vendor.cpu_s
        backlog = {n: c["pending"] + c["ack_pending"] for n, c in (await consumer_counts(js, list(ALL_STREAMS))).items()
                   if c["pending"] + c["ack_pending"]}
        if backlog:
            res.notes.append("backlog when the last charge was posted (pending + unacked): " + ", ".join(
                f"{n} {v}" for n, v in sorted(backlog.items(), key=lambda kv: -kv[1])))

        # intake's lifecycle view catches up (status is rank-based: "settled" may come before earlier facts)
        async def all_settled() -> Any:
            st = Counter(j["status"] for j in await ask(nc, "intake", "jobs", timeout=15))
            return st if st.get("settled", 0) >= jobs else None
        try:
            await wait_for(all_settled, 30, "intake shows every job settled", every=0.1)
            res.intake_lag_ms = (time.perf_counter() - t0 - res.wall_s) * 1000
        except TimeoutError as e:
            res.notes.append(str(e)[:300])
        try:
            await wait_for(lambda: drained(js, infra.database_url, schemas), 60, "every consumer drained", every=0.1)
            res.drain_lag_ms = (time.perf_counter() - t0 - res.wall_s) * 1000
        except TimeoutError as e:
            res.notes.append(str(e)[:300])

        # unloaded latency: one job at a time through the idle pipeline
        for jid, subject, data, headers in probe_subs:
            got = arrivals.expect(jid)
            t = time.perf_counter()
            await js.publish(subject, data, headers=headers)
            try:
                await asyncio.wait_for(got.wait(), timeout=30)
                res.probe_ms.append((arrivals.at[jid] - t) * 1000)
            except asyncio.TimeoutError:
                res.notes.append(f"probe job {jid} not settled within 30 s")

        if tracer is not None:
            res.hops = tracer.delays()  # burst and probe jobs alike
        ledger = await ask(nc, "settlement", "ledger_check", timeout=30)
        if not ledger["ok"]:
            res.notes.append(f"LEDGER CHECK FAILED: {[c for c in ledger['checks'] if not c['ok']]}")

        # what crossed the bus, per job (after the drain, so every consumer has seen everything)
        streams = await stream_counts(js, list(ALL_STREAMS))
        consumers = await consumer_counts(js, list(ALL_STREAMS))
        res.consumers = consumers
        n_jobs = max(1, res.done + len(res.probe_ms))
        res.msgs_per_job = (sum(m for name, (m, _) in streams.items() if name != "DLQ") - len(offers)) / n_jobs
        res.mean_msg_bytes = (sum(b for n, (_, b) in streams.items() if n != "DLQ")
                              / max(1, sum(m for n, (m, _) in streams.items() if n != "DLQ")))
        res.deliveries_per_job = sum(c["delivered"] for name, c in consumers.items()
                                     if name != "matching-inputs") / n_jobs
        redelivered = {n: c["redelivered"] for n, c in consumers.items() if c["redelivered"]}
        if redelivered:
            res.notes.append(f"redeliveries: {redelivered}")
        if streams["DLQ"][0]:
            res.notes.append(f"{streams['DLQ'][0]} dead letters")
        for key, n in logs.since(log_before).items():
            res.notes.append(f"{n} x {key[0]} {key[1]}: {logs.examples[key][:160]}")
    finally:
        vendor.stopped = True
        await cancel_all(tasks_bg)
        for rt in reversed(runtimes):
            problem = await stop_runtime(rt)
            if problem:
                res.notes.append(problem)
                sys.stderr.write(problem + "\n")
        if obs is not None:
            await obs.close()
        await delete_streams(js, list(ALL_STREAMS))
        await nc.close()
        con = await asyncpg.connect(infra.database_url)
        try:
            for schema in schemas.values():
                await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await con.close()
    return res


# -- phase: raw JetStream ------------------------------------------------------------------------------------------

async def run_raw(infra: Infra, args: argparse.Namespace, jobs: int, batch: int, msg_bytes: int,
                  cpu: CpuMeter) -> Result:
    res = Result(phase="raw", jobs=jobs, batch=batch)
    conns: dict[str, NATS] = {}
    tasks_bg: list[asyncio.Task[Any]] = []
    stop = asyncio.Event()
    admin = await nats.connect(infra.nats_url, name="bench-raw-admin")
    ajs = admin.jetstream()
    try:
        await delete_streams(ajs, list(RAW_STREAMS))
        for name, subjects in RAW_STREAMS.items():
            await ajs.add_stream(StreamConfig(name=name, subjects=subjects, retention=RetentionPolicy.LIMITS,
                                              storage=StorageType.FILE, max_age=MAX_AGE_S,
                                              duplicate_window=DUPLICATE_WINDOW_S))
        for proc, durable, stream, filt, routes in RAW_HOPS:
            if proc not in conns:
                conns[proc] = await nats.connect(infra.nats_url, name=f"bench-raw-{proc}")
            js = conns[proc].jetstream()
            psub = await js.pull_subscribe(filt, durable=durable, stream=stream, config=ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                filter_subject=filt, max_deliver=8, ack_wait=30, max_ack_pending=2000))
            tasks_bg.append(asyncio.create_task(raw_hop(js, psub, routes, batch, stop), name=f"raw-{durable}"))
        arrivals = Arrivals(jobs, lambda data: data[:36].decode())
        await admin.subscribe(RAW_FINAL, cb=arrivals.cb, pending_msgs_limit=10 * jobs + 1000)
        await admin.flush()
        pad = b" " * max(0, msg_bytes - 36)
        subs = [(str(uuid.uuid4()),) for _ in range(jobs)]
        submitted: dict[str, float] = {}
        c0 = cpu.snapshot()
        t0 = time.perf_counter()
        futs = []
        for (jid,) in subs:
            submitted[jid] = time.perf_counter()
            futs.append(await ajs.publish_async("rb.sdk.submitted", jid.encode() + pad,
                                                headers={"Nats-Msg-Id": f"{jid}:submitted"}))
        await asyncio.gather(*futs)
        try:
            await asyncio.wait_for(arrivals.done.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            res.notes.append(f"TIMEOUT: {len(arrivals.at)}/{jobs}")
        c1 = cpu.snapshot()
        res.done = len(arrivals.at)
        if arrivals.at:
            res.wall_s = max(arrivals.at.values()) - t0
        res.latencies_ms = [(t - submitted[k]) * 1000 for k, t in arrivals.at.items()]
        res.cpu_s = CpuMeter.delta(c0, c1)
        async def raw_drained() -> bool:  # the hops after the last charge (intake-charged, ...) finish too
            return all(not c["pending"] and not c["ack_pending"]
                       for c in (await consumer_counts(ajs, list(RAW_STREAMS))).values())
        try:
            await wait_for(raw_drained, 30, "every raw consumer drained", every=0.05)
        except TimeoutError as e:
            res.notes.append(str(e)[:300])
        streams = await stream_counts(ajs, list(RAW_STREAMS))
        consumers = await consumer_counts(ajs, list(RAW_STREAMS))
        res.msgs_per_job = sum(m for m, _ in streams.values()) / max(1, res.done)
        res.deliveries_per_job = sum(c["delivered"] for c in consumers.values()) / max(1, res.done)
        res.mean_msg_bytes = sum(b for _, b in streams.values()) / max(1, sum(m for m, _ in streams.values()))
    finally:
        stop.set()
        await cancel_all(tasks_bg)
        for c in conns.values():
            await c.close()
        await delete_streams(ajs, list(RAW_STREAMS))
        await admin.close()
    return res


# -- report ----------------------------------------------------------------------------------------------------

def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{nd}f}"


def report(results: dict[str, Result], env: dict[str, str], logs: LogCounter, args: argparse.Namespace) -> str:
    info = Table(title="what was run", show_header=False, title_justify="left")
    for k, v in env.items():
        info.add_row(k, v)
    console.print(info)

    t = Table(title="results (latency = submit -> ChargePosted seen, wall clock; CPU = seconds used in the measured "
                    "window by this process (services + fake vendor), nats-server, PostgreSQL, and everything else "
                    "on the machine)", title_justify="left")
    for col in ("phase", "jobs", "batch", "wall s", "jobs/s", "p50 ms", "p99 ms", "msgs/job", "deliv/job",
                "stream msgs/s", "CPU py s", "CPU nats s", "CPU pg s", "CPU other s", "py ms/job"):
        t.add_column(col, justify="right" if col != "phase" else "left")
    for r in results.values():
        py = r.cpu_s.get("python")
        py_per_job = py * 1000 / r.done if py is not None and r.done else None
        t.add_row(r.phase, f"{r.done}/{r.jobs}", str(r.batch), fmt(r.wall_s, 2), fmt(r.jobs_per_s), fmt(r.p50, 0),
                  fmt(r.p99, 0), fmt(r.msgs_per_job), fmt(r.deliveries_per_job),
                  fmt((r.msgs_per_job or 0) * r.jobs_per_s, 0), fmt(py, 2), fmt(r.cpu_s.get("nats"), 2),
                  fmt(r.cpu_s.get("postgres"), 2), fmt(r.cpu_s.get("others"), 2), fmt(py_per_job, 2))
    console.print(t)

    main, raw, small, single = (results.get(k) for k in ("pipeline", "raw", "small", "single"))
    ratios = Table(title="ratios (same run)", show_header=False, title_justify="left")
    raw_ratio = main.jobs_per_s / raw.jobs_per_s if main and raw else float("nan")
    bvs = small.jobs_per_s / single.jobs_per_s if small and single else float("nan")
    if main and raw:
        ratios.add_row("pipeline / raw JetStream (jobs/s, same jobs, same message graph)", fmt(raw_ratio, 3))
    if small and single:
        ratios.add_row(f"batch {small.batch} / batch 1 (jobs/s, {small.jobs} jobs each) = batch_vs_single",
                       fmt(bvs, 2))
    if main and single:
        ratios.add_row(f"batch {main.batch} at {main.jobs} jobs / batch 1 at {single.jobs} jobs",
                       fmt(main.jobs_per_s / single.jobs_per_s, 2))
    for r in (main, small, single):
        if r and r.probe_ms:
            ratios.add_row(f"{r.phase}: unloaded latency, {len(r.probe_ms)} jobs one at a time (median / max)",
                           f"{fmt(statistics.median(r.probe_ms), 0)} / {fmt(max(r.probe_ms), 0)} ms")
        if r and r.intake_lag_ms is not None:
            ratios.add_row(f"{r.phase}: intake shows all settled, after the last ChargePosted",
                           fmt(r.intake_lag_ms, 0) + " ms")
        if r and r.drain_lag_ms is not None:
            ratios.add_row(f"{r.phase}: every consumer drained, after the last ChargePosted",
                           fmt(r.drain_lag_ms, 0) + " ms")
        if r and r.harness_cpu_s:
            ratios.add_row(f"{r.phase}: fake vendor's envelope building (harness, in the python CPU)",
                           fmt(r.harness_cpu_s, 2) + " s")
    console.print(ratios)

    traced = [r for r in results.values() if r.hops]
    if traced:
        ht = Table(title="per hop (--hops): delay from the cause's arrival to the effect's, ms, p50 / p99",
                   title_justify="left")
        ht.add_column("hop")
        ht.add_column("done by")
        for r in traced:
            ht.add_column(f"{r.phase} (batch {r.batch})", justify="right")
        for hop, _, _, who in HOPS:
            ht.add_row(hop, who, *[f"{fmt(percentile(r.hops.get(hop, []), 50), 0)} / "
                                   f"{fmt(percentile(r.hops.get(hop, []), 99), 0)}" for r in traced])
        console.print(ht)

    notes = [(r.phase, n) for r in results.values() for n in r.notes]
    if notes:
        nt = Table(title="things to look at (warnings, redeliveries, timeouts)", title_justify="left")
        nt.add_column("phase")
        nt.add_column("note")
        for phase, n in notes:
            nt.add_row(phase, n)
        console.print(nt)

    nan = float("nan")
    return (f"jobs={main.done if main else 0} jobs_per_s={main.jobs_per_s if main else nan:.1f} "
            f"p50_ms={main.p50 if main else nan:.0f} p99_ms={main.p99 if main else nan:.0f} "
            f"raw_jobs_per_s={raw.jobs_per_s if raw else nan:.1f} raw_ratio={raw_ratio:.3f} "
            f"batch_vs_single={bvs:.2f}")


async def versions(infra: Infra) -> tuple[str, str]:
    nc = await nats.connect(infra.nats_url, name="bench-version")
    try:
        nats_v = nc.connected_server_version
        nats_s = f"{nats_v.major}.{nats_v.minor}.{nats_v.patch}"
    finally:
        await nc.close()
    con = await asyncpg.connect(infra.database_url)
    try:
        pg = await con.fetchval("SHOW server_version")
    finally:
        await con.close()
    return nats_s, pg


async def main_async(infra: Infra, args: argparse.Namespace) -> str:
    logs = LogCounter()
    logging.basicConfig(level=logging.WARNING, handlers=[logs])
    traces = default_data_dir() / "traces"
    tasks = trace_tasks(traces)
    cpu = CpuMeter(infra)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    nats_v, pg_v = await versions(infra)
    env = {
        "jobs": f"{args.jobs} (pipeline, raw); {args.single_jobs} (small, single)",
        "batch sizes": f"pipeline/small/raw: {args.batch}; single: 1; fake vendor: 200",
        "workload": f"{len(tasks)} CPU tasks of {traces / TRACE} (cpu, memory, duration), cycled; "
                    f"{TENANTS} tenants; cap EUR {CAP_EUR}/DTU-h",
        "offers": f"{args.vendors} vendors x {args.nodes} nodes, sized so that capacity never limits",
        "cpu count": f"{os.cpu_count()} ({platform.processor() or platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nats-server": nats_v, "postgresql": pg_v,
        "infra": ", ".join(f"{k} started here" for k in infra.started) or "external (NATS_URL / DATABASE_URL)",
    }
    results: dict[str, Result] = {}
    t_all = time.perf_counter()
    for phase in phases:
        t = time.perf_counter()
        if phase == "pipeline":
            results[phase] = await run_pipeline(infra, args, tasks, args.jobs, args.batch, phase, logs, cpu,
                                                probes=args.probes)
        elif phase == "raw":
            size = int(results["pipeline"].mean_msg_bytes or 1000) if "pipeline" in results else 1000
            results[phase] = await run_raw(infra, args, args.jobs, args.batch, size, cpu)
        elif phase == "small":
            results[phase] = await run_pipeline(infra, args, tasks, args.single_jobs, args.batch, phase, logs, cpu)
        elif phase == "single":
            results[phase] = await run_pipeline(infra, args, tasks, args.single_jobs, 1, phase, logs, cpu)
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        r = results[phase]
        console.print(f"[dim]{phase}: {r.done}/{r.jobs} jobs in {fmt(r.wall_s, 2)} s "
                      f"({fmt(r.jobs_per_s)} jobs/s); phase took {time.perf_counter() - t:.1f} s[/dim]")
    env["bench time"] = f"{time.perf_counter() - t_all:.1f} s for the phases ({', '.join(phases)})"
    return report(results, env, logs, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000, help="jobs in the pipeline and raw phases (default 2000)")
    ap.add_argument("--single-jobs", type=int, default=300, help="jobs in the small and single phases (default 300)")
    ap.add_argument("--batch", type=int, default=200, help="services' batch_size in the batched phases (default 200, "
                                                          "the services' default)")
    ap.add_argument("--vendors", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=4, help="nodes (offers) per vendor")
    ap.add_argument("--timeout", type=float, default=150.0, help="give up on a phase after this many seconds")
    ap.add_argument("--probes", type=int, default=5,
                    help="after the pipeline phase, jobs sent one at a time to measure unloaded latency")
    ap.add_argument("--hops", action="store_true",
                    help="also time every hop (subscribes to all subjects: costs some client CPU)")
    ap.add_argument("--phases", default="pipeline,raw,small,single",
                    help="comma-separated subset of pipeline,raw,small,single")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="strongmoose-bench-"))
    t = time.perf_counter()
    infra = ensure_infra(state, nats_url=os.environ.get("NATS_URL"), database_url=os.environ.get("DATABASE_URL"))
    line = ""
    try:
        console.print(f"[dim]infra ready in {time.perf_counter() - t:.1f} s: "
                      f"{infra.nats_url} {infra.database_url}[/dim]")
        line = asyncio.run(main_async(infra, args))
    finally:
        infra.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(line, flush=True)


if __name__ == "__main__":
    main()
