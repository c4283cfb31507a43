"""What the benchmarks share: jobs built from the Alibaba trace, vendors built from the price catalogs, a fake
vendor that plays every vendor, the raw-JetStream baseline graph, and small bus helpers.

Used by `bench/pipeline.py` (throughput against raw JetStream) and `bench/chaos.py` (faults under load).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid5

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from clients.agent.catalog import CatalogOffer, load_catalog_offers
from libs.common.envelope import new_envelope, parse_envelope
from libs.common.events.agent import OfferPublished, UsageSampled, WorkloadReported
from libs.common.ids import offer_id
from libs.common.subjects import WORKLOAD_ASSIGNED_ANY, query, subject_for

log = logging.getLogger("bench")

TRACE = "alibaba-gpu-v2023/openb_pod_list_default.csv"
TENANTS = 20
GIB = 2**30
CAP_EUR = "0.05"  # the synthetic offers' price cap: above every one of them
TIMEOUTS = (asyncio.TimeoutError, nats.errors.TimeoutError)


# -- the jobs: CPU tasks of the Alibaba GPU cluster trace ---------------------------------------------------------

@dataclass(frozen=True)
class Task:
    name: str
    cpu_milli: int
    memory_mib: int
    duration_s: int


def trace_tasks(traces: Path) -> list[Task]:
    """Tasks that request no GPU, in trace order; duration = deletion - creation time."""
    out = []
    with open(traces / TRACE, newline="") as f:
        for r in csv.DictReader(f):
            if int(r["num_gpu"]) != 0:
                continue
            duration = int(r["deletion_time"]) - int(r["creation_time"])
            if duration > 0 and int(r["cpu_milli"]) > 0 and int(r["memory_mib"]) > 0:
                out.append(Task(r["name"], int(r["cpu_milli"]), int(r["memory_mib"]), duration))
    if not out:
        raise SystemExit(f"no CPU tasks in {traces / TRACE}")
    return out


def manifest(i: int, task: Task, not_after: datetime, run: str, cap_eur: str = CAP_EUR) -> dict[str, Any]:
    """The i-th job: the i-th CPU task of the trace (cycled), tenant bench00..bench19."""
    return {
        "apiVersion": "strongmoose.dsoderlund.consulting/v1alpha1",
        "kind": "job",
        "metadata": {"name": f"{run}{i:05d}-{task.name}", "namespace": f"bench{i % TENANTS:02d}"},
        "spec": {
            "image": "python:3.11-slim",
            "notAfter": not_after.isoformat(),
            "maxEuroPerDTU": cap_eur,
            "scriptPath": "/bench/task.py",
            "resources": {"cpu": f"{task.cpu_milli}m", "memory": f"{task.memory_mib}Mi"},
            "expectedDuration": task.duration_s,
        },
    }


# -- the vendors: the price catalogs ------------------------------------------------------------------------------

def catalog_offer_events(data_dir: Path, nodes: int, t0: datetime, days: int = 400) -> list[Any]:
    """OfferPublished for every CPU instance type of every vendor in `<data>/prices` (real names, regions and
    prices), `nodes` machines of each type, available from an hour before `t0` for `days` days."""
    out = []
    offers: list[CatalogOffer] = [o for o in load_catalog_offers(data_dir) if o.gpu_count == 0]
    if not offers:
        raise SystemExit(f"no CPU offers in {data_dir / 'prices'}")
    for o in offers:
        for k in range(nodes):
            node = f"{o.node}-{k}" if nodes > 1 else o.node
            oid = offer_id(o.vendor, node)
            out.append(new_envelope(OfferPublished(
                offer_id=oid, vendor=o.vendor, node=node, region=o.region, country=o.country, eu=o.eu, vcpu=o.vcpu,
                memory_gib=o.memory_gib, arch=o.arch, price_micro_eur_per_dtu_hour=o.price_micro_eur_per_dtu_hour,
                available_from=t0 - timedelta(hours=1), available_until=t0 + timedelta(days=days)),
                source="agent", party=f"v-{o.vendor}", correlation_id=oid, time=t0))
    return out


def max_price_eur(offer_events: list[Any]) -> str:
    """A DTU price cap every one of these offers is within, in EUR."""
    top = max(e.payload.price_micro_eur_per_dtu_hour for e in offer_events)
    return str((Decimal(top) / 1_000_000).quantize(Decimal("0.000001")))


# -- measuring -------------------------------------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


async def delete_streams(js: JetStreamContext, names: list[str]) -> None:
    for name in names:
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass


async def stream_counts(js: JetStreamContext, names: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for name in names:
        st = (await js.stream_info(name)).state
        out[name] = (st.messages, st.bytes)
    return out


async def consumer_counts(js: JetStreamContext, names: list[str]) -> dict[str, dict[str, int]]:
    out = {}
    for name in names:
        for c in await js.consumers_info(name):
            out[c.name] = {"delivered": c.delivered.consumer_seq if c.delivered else 0,
                           "redelivered": c.num_redelivered or 0, "pending": c.num_pending or 0,
                           "ack_pending": c.num_ack_pending or 0}
    return out


async def ask(nc: NATS, service: str, what: str, timeout: float = 10.0, **req: Any) -> Any:
    reply = await nc.request(query(service, what), json.dumps(req).encode(), timeout=timeout)
    body = json.loads(reply.data)
    if not body["ok"]:
        raise RuntimeError(f"query {service}.{what} failed: {body}")
    return body["result"]


async def wait_for(check: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")


async def cancel_all(tasks: list[asyncio.Task[Any]], rounds: int = 50) -> list[str]:
    """Cancel until done: a task inside nats-py's fetch can swallow a cancellation (asyncio.wait_for on
    Python 3.11 returns the result when it completes at the moment of the cancel), so cancel again."""
    for _ in range(rounds):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return []
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    return [t.get_name() for t in tasks if not t.done()]


def subject_matches(filter_subject: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, `>` one or more trailing tokens."""
    f, s = filter_subject.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


async def read_stream(js: JetStreamContext, stream: str) -> list[Any]:
    """Every message of a stream, with its metadata (an ephemeral consumer without acks)."""
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    psub = await js.pull_subscribe(">", stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0))
    out: list[Any] = []
    try:
        while len(out) < info.state.messages:
            try:
                msgs = await psub.fetch(1000, timeout=2.0)
            except TIMEOUTS:
                break
            out += msgs
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await psub.unsubscribe()
    return out


# -- the fake vendor -------------------------------------------------------------------------------------------

class FakeVendor:
    """Every vendor at once: for each WorkloadAssigned, a running report, two cumulative usage samples and a
    succeeded report, published pipelined; assignments are pulled in batches and acked after the acks.

    Like the real agent, its reports' ids derive from the workload, so an assignment handled twice (a lost
    ack, a NATS restart) reports the same events again and the stream drops the copies. It outlives NATS
    restarts: a failed fetch or publish is tried again, and nothing is acked before its reports are stored.
    """

    def __init__(self, js: JetStreamContext, batch: int, durable: str = "bench-vendor", ack_wait_s: float = 60.0):
        self.js, self.batch, self.durable, self.ack_wait_s = js, batch, durable, ack_wait_s
        self.handled = 0
        self.cpu_s = 0.0  # time spent building envelopes (harness work, not the exchange's)
        self.stopped = False
        self.workloads: dict[str, set[str]] = {}  # job id -> workload ids assigned to it (one, unless placed twice)
        # jobs whose reports go out end first (succeeded, last sample, first sample, running): a vendor whose
        # running report was overtaken, as a redelivery or a short job's late report does
        self.reversed: set[str] = set()

    def reports(self, assigned: Any) -> list[Any]:
        p = assigned.payload
        party, corr, t0 = f"v-{p.vendor}", p.job_id, p.start_at
        res, d = p.request.resources, p.request.expected_duration_s
        vcpu, mem_bytes = float(res.vcpu), float(res.memory_gib) * GIB

        def ev(payload: Any, key: str) -> Any:
            return new_envelope(payload, source="agent", party=party, correlation_id=corr,
                                id=uuid5(p.workload_id, key), causation_id=assigned.id)

        def sample(seq: int, frac: float, util: float, mem_frac: float) -> Any:
            wall_us = int(d * frac * 1_000_000)
            return ev(UsageSampled(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, tenant=p.request.tenant,
                                   seq=seq, at=t0 + timedelta(microseconds=wall_us), cpu_us=int(vcpu * util * wall_us),
                                   wall_us=wall_us, rss_peak_bytes=int(mem_bytes * mem_frac)), f"usage/{seq}")
        out = [
            ev(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="running", at=t0),
               "status/running"),
            sample(1, 0.5, 0.6, 0.5),
            sample(2, 1.0, 0.6, 0.7),
            ev(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="succeeded",
                                at=t0 + timedelta(seconds=d), exit_code=0, last_usage_seq=2), "status/succeeded"),
        ]
        return out[::-1] if str(p.job_id) in self.reversed else out

    async def run(self) -> None:
        psub = await self.js.pull_subscribe(
            WORKLOAD_ASSIGNED_ANY, durable=self.durable, stream="PLACEMENT",
            config=ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                                  max_ack_pending=20_000, filter_subject=WORKLOAD_ASSIGNED_ANY))
        while not self.stopped:
            try:
                msgs = await psub.fetch(self.batch, timeout=1.0)
            except TIMEOUTS:
                continue
            except nats.errors.Error as e:  # NATS restarting: the client reconnects
                log.debug("fake vendor: fetch failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            t = time.thread_time()
            events = []
            for m in msgs:
                assigned = parse_envelope(m.data)
                self.workloads.setdefault(str(assigned.payload.job_id), set()).add(str(assigned.payload.workload_id))
                events += self.reports(assigned)
            out = [(subject_for(e), e.to_bytes(), {"Nats-Msg-Id": str(e.id)}) for e in events]
            self.cpu_s += time.thread_time() - t
            while not self.stopped:
                try:
                    futures = [await self.js.publish_async(s, data, headers=h) for s, data, h in out]
                    await asyncio.wait_for(asyncio.gather(*futures), timeout=10.0)
                    break
                except (asyncio.TimeoutError, nats.errors.Error) as e:  # again: the stream drops the copies
                    log.debug("fake vendor: publishing reports failed (%s); again", e)
                    await asyncio.sleep(0.5)
            for m in msgs:
                try:
                    await m.ack()
                except nats.errors.Error:
                    pass  # redelivered after ack_wait; its reports are dropped as duplicates
            self.handled += len(msgs)


# -- the raw baseline: the pipeline's message graph, relayed by bare nats-py ---------------------------------------

RAW_STREAMS = {f"BENCHRAW_{s}": [f"rb.{s.lower()}.>"]
               for s in ("SDK", "INTAKE", "MATCHING", "PLACEMENT", "AGENT", "METERING", "SETTLEMENT")}
# (process, durable, stream, filter, {input subject: output subjects}): the pipeline's consumer graph, one raw
# consumer per service consumer, each republishing what that service publishes for the message.
RAW_HOPS: list[tuple[str, str, str, str, dict[str, list[str]]]] = [
    ("intake", "intake-submitted", "BENCHRAW_SDK", "rb.sdk.submitted", {"rb.sdk.submitted": ["rb.intake.accepted"]}),
    ("matching", "matching-accepted", "BENCHRAW_INTAKE", "rb.intake.accepted",
     {"rb.intake.accepted": ["rb.matching.matched"]}),
    ("intake", "intake-matching", "BENCHRAW_MATCHING", "rb.matching.>", {}),
    ("placement", "placement-matched", "BENCHRAW_MATCHING", "rb.matching.matched",
     {"rb.matching.matched": ["rb.placement.assigned"]}),
    ("settlement", "settlement-matched", "BENCHRAW_MATCHING", "rb.matching.matched",
     {"rb.matching.matched": ["rb.settlement.held"]}),
    ("intake", "intake-placement", "BENCHRAW_PLACEMENT", "rb.placement.>", {}),
    ("vendor", "vendor-assigned", "BENCHRAW_PLACEMENT", "rb.placement.assigned",
     {"rb.placement.assigned": ["rb.agent.reported.running", "rb.agent.usage.sampled", "rb.agent.usage.sampled",
                                "rb.agent.reported.succeeded"]}),
    ("placement", "placement-reported", "BENCHRAW_AGENT", "rb.agent.reported.*",
     {"rb.agent.reported.running": ["rb.placement.started"], "rb.agent.reported.succeeded": ["rb.placement.finished"]}),
    ("metering", "metering-usage", "BENCHRAW_AGENT", "rb.agent.usage.sampled", {}),
    ("metering", "metering-started", "BENCHRAW_PLACEMENT", "rb.placement.started", {}),
    ("metering", "metering-finished", "BENCHRAW_PLACEMENT", "rb.placement.finished",
     {"rb.placement.finished": ["rb.metering.closed"]}),
    ("matching", "matching-finished", "BENCHRAW_PLACEMENT", "rb.placement.finished", {}),
    ("intake", "intake-metering", "BENCHRAW_METERING", "rb.metering.closed", {}),
    ("settlement", "settlement-closed", "BENCHRAW_METERING", "rb.metering.closed",
     {"rb.metering.closed": ["rb.settlement.charged", "rb.settlement.released"]}),
    ("intake", "intake-charged", "BENCHRAW_SETTLEMENT", "rb.settlement.charged", {}),
]
RAW_FINAL = "rb.settlement.charged"


async def raw_hop(js: JetStreamContext, psub: Any, routes: dict[str, list[str]], batch: int,
                  stop: asyncio.Event) -> None:
    """Pull a batch, republish each message to its next subjects pipelined, await the acks, ack the batch."""
    while not stop.is_set():
        try:
            msgs = await psub.fetch(batch, timeout=1.0)
        except TIMEOUTS:
            continue
        futures = []
        for m in msgs:
            outs = routes.get(m.subject)
            if outs:
                jid = m.data[:36].decode()
                for k, s in enumerate(outs):
                    futures.append(await js.publish_async(s, m.data, headers={"Nats-Msg-Id": f"{jid}:{s}:{k}"}))
        if futures:
            await asyncio.gather(*futures)
        for m in msgs:
            await m.ack()
