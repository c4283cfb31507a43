"""Chaos + load: the five services as processes, thousands of jobs, and faults while they run.

    make chaos                                        # = .venv/bin/python bench/chaos.py
    .venv/bin/python bench/chaos.py --jobs 500 --window 45 --seed 7

Starts its own NATS (JetStream) and PostgreSQL (libs.common.localinfra, in a temporary directory) and runs the
five services as processes (`python -m services.<name>`, as `smctl up` does), against vendors built from the price
catalogs in `<data>/prices` (every CPU instance type of every vendor, `--nodes` machines each) played by the fake
vendor of bench/workload.py, with jobs built from the Alibaba trace in `<data>/traces` (also bench/workload.py).
Three phases, each on empty streams and fresh schemas:

  fault-free  --jobs jobs submitted in one burst: the exchange's throughput on this machine
  raw         the same message graph relayed by bare nats-py processes (no database, no logic): the floor
  chaos       --jobs jobs submitted in waves over --window seconds while, at seeded random moments:
              services are killed with SIGKILL and started again (at least 20 kills over all five), NATS is
              restarted twice (once gracefully, once by SIGKILL) and PostgreSQL twice (fast shutdown, SIGKILL),
              internal events are published again with fresh Nats-Msg-Ids (duplicates, often out of order),
              poison messages (garbage, a non-envelope, an envelope on another party's subject) are injected, and
              the vendor reports some jobs end first (--reversed: succeeded before running, samples backwards).
              A supervisor starts again any service that exits on its own (and counts it).

Then it waits for quiescence (every job in a final state, every consumer drained, every outbox published) and
checks, without reading settlement's tables: intake's lifecycle view (every submitted job accepted and final),
the facts on the streams (no job matched, held, placed, started, finished, metered or charged twice), what the
fake vendor was asked to run (no job placed twice), settlement's invoices and wallets against the charges and
the deposits (money per job and per tenant), its ledger_check query (sum, negative balances, stored versus
recomputed balances, open holds), and the dead-letter stream against the poison injected (nothing else in it).

The last line is `jobs=… nonterminal=… lost=… double=… ledger_sum=… dlq_ok=… jobs_per_s=… raw_ratio=…` (chaos
phase; raw_ratio is the fault-free jobs/s over the raw jobs/s); the exit status is 1 when nonterminal, lost,
double or ledger_sum is not 0, or when the fault-free phase fails its own checks. `--seed` fixes the workload
and the fault schedule (what happens when); timing on a loaded machine still varies between runs. Every process
it starts is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import asyncpg  # noqa: E402
import nats  # noqa: E402
import psutil  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig  # noqa: E402
from workload import (  # noqa: E402  (bench/workload.py: shared with bench/pipeline.py)
    RAW_FINAL,
    RAW_HOPS,
    RAW_STREAMS,
    TENANTS,
    FakeVendor,
    ask,
    cancel_all,
    catalog_offer_events,
    consumer_counts,
    delete_streams,
    manifest,
    max_price_eur,
    percentile,
    raw_hop,
    read_stream,
    subject_matches,
    trace_tasks,
)

from clients.agent.catalog import default_data_dir  # noqa: E402
from clients.smctl import stack  # noqa: E402
from libs.common import subjects  # noqa: E402
from libs.common.envelope import new_envelope  # noqa: E402
from libs.common.events.agent import WorkloadReported  # noqa: E402
from libs.common.events.sdk import DepositRequested, JobSubmitted  # noqa: E402
from libs.common.ids import job_id  # noqa: E402
from libs.common.localinfra import Infra, NatsServer, PostgresServer  # noqa: E402
from libs.common.streams import ALL_STREAMS, DUPLICATE_WINDOW_S, MAX_AGE_S, STREAMS, ensure_streams  # noqa: E402

SERVICES = ("intake", "matching", "placement", "metering", "settlement")
SERVICE_STREAMS = ("INTAKE", "MATCHING", "PLACEMENT", "METERING", "SETTLEMENT")  # "internal events"
# a job in one of these states has ended for good (the lifecycle view's ranks 8-9, and a refused submission)
TERMINAL = frozenset({"settled", "expired", "refused", "cancelled", "rejected"})
# facts that happen once in a job's life when its vendor never fails it: a second id means applied twice
ONCE_PER_JOB = ("JobAccepted", "JobMatched", "FundsHeld", "WorkloadAssigned", "WorkloadStarted", "WorkloadFinished",
                "MeterClosed", "ChargePosted")
DEPOSIT = 10**12  # micro-EUR per tenant: EUR 1,000,000, more than its jobs' holds
VENDOR_DURABLE = "chaos-vendor"
CHAOS_HEADER = "Chaos-Kind"  # marks what the harness injected, so it never duplicates its own poison
log = logging.getLogger("chaos")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------------------------

class Processes:
    """The service (and raw worker) processes of the run: started, killed and stopped by name; every one that
    was started is stopped by `stop_all`, whatever happened."""

    def __init__(self, state_dir: Path, infra: Infra):
        self.state_dir, self.infra = state_dir, infra
        self.env = stack._child_env(infra, state_dir, "none")
        self.procs: dict[str, stack.Proc] = {}
        self.killed: set[str] = set()  # killed by the harness and not yet started again
        self.starts: Counter[str] = Counter()

    def start(self, name: str) -> stack.Proc:
        self.procs[name] = p = stack._spawn(name, f"services.{name}", self.state_dir, self.env)
        self.killed.discard(name)
        self.starts[name] += 1
        return p

    def start_script(self, name: str, args: list[str]) -> stack.Proc:
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True)
        self.procs[name] = p = stack.Proc(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log_path))
        return p

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        p = self.procs.get(name)
        self.killed.add(name)
        if p is not None and p.alive():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while p is not None and p.alive() and time.monotonic() < deadline:
            stack._reap([p])
            time.sleep(0.02)
        if p is not None:
            stack._reap([p])

    def exited(self) -> list[str]:
        """Services that are gone although the harness did not kill them."""
        gone = [n for n, p in self.procs.items() if n in SERVICES and n not in self.killed and not p.alive()]
        stack._reap([self.procs[n] for n in gone])
        return gone

    def stop(self, names: list[str]) -> list[str]:
        procs = [self.procs.pop(n) for n in names if n in self.procs]
        return stack._stop_procs(procs)

    def stop_all(self) -> list[str]:
        return self.stop(list(self.procs))


# -- the bus, as the harness uses it ------------------------------------------------------------------------------

async def connect(url: str, name: str) -> NATS:
    async def quiet(_e: Exception) -> None:
        pass
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                              connect_timeout=2, error_cb=quiet, pending_size=64 * 1024 * 1024)


async def publish(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str],
                  timeout: float = 180.0) -> Any:
    """Publish until the stream acks (NATS may be restarting); the same Nats-Msg-Id makes a retry harmless."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await js.publish(subject, data, headers=headers, timeout=5)
        except (nats.errors.Error, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def publish_many(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Pipelined, in chunks; a chunk that fails is published again (the stream drops the copies)."""
    for i in range(0, len(items), 500):
        chunk = items[i:i + 500]
        while True:
            try:
                futures = [await js.publish_async(s, d, headers=h) for s, d, h in chunk]
                await asyncio.wait_for(asyncio.gather(*futures), timeout=15)
                break
            except (nats.errors.Error, asyncio.TimeoutError):
                await asyncio.sleep(0.5)


async def ask_retrying(nc: NATS, service: str, what: str, timeout: float = 60.0, **req: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ask(nc, service, what, timeout=15, **req)
        except (nats.errors.Error, asyncio.TimeoutError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def service_consumers(js: JetStreamContext, stream: str) -> list[tuple[str, list[str]]]:
    """(durable, filter subjects) of the services' consumers on a stream."""
    out = []
    for c in await js.consumers_info(stream):
        if c.name.split("-", 1)[0] in SERVICES:
            cfg = c.config
            out.append((c.name, list(cfg.filter_subjects or []) or [cfg.filter_subject or ">"]))
    return out


# -- the servers and the phases' set-up ----------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    state_dir: Path
    infra: Infra
    procs: Processes
    tasks: list[Any]
    offers: list[Any]
    cap_eur: str
    nc: NATS | None = None
    js: JetStreamContext | None = None

    @property
    def nats(self) -> NatsServer:
        assert self.infra.nats is not None
        return self.infra.nats

    @property
    def postgres(self) -> PostgresServer:
        assert self.infra.postgres is not None
        return self.infra.postgres


async def fresh_bus_and_schemas(run: Run) -> None:
    """Empty streams and no service schemas: every phase starts from nothing."""
    assert run.js is not None
    await delete_streams(run.js, list(ALL_STREAMS))
    con = await asyncpg.connect(run.infra.database_url)
    try:
        for s in SERVICES:
            await con.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    finally:
        await con.close()
    for attempt in range(50):  # the server may still be removing a just-deleted stream's store
        try:
            await ensure_streams(run.js)
            return
        except nats.js.errors.ServerError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)


async def wait_ready(run: Run, names: tuple[str, ...] | list[str], timeout: float = 90.0) -> None:
    assert run.nc is not None
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            p = run.procs.procs.get(name)
            if p is not None and not p.alive():
                raise RuntimeError(f"{name} exited at start-up: {stack.last_line(Path(p.log))}")
            try:
                if (await ask(run.nc, name, "health", timeout=2)).get("ready", True):
                    pending.discard(name)
            except (nats.errors.Error, asyncio.TimeoutError, RuntimeError):
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(sorted(pending))} not ready within {timeout:g} s")
        await asyncio.sleep(0.2)


async def open_market(run: Run, phase: str) -> None:
    """The vendors' offers in matching's book and every tenant's wallet paid into."""
    assert run.nc is not None and run.js is not None
    await publish_many(run.js, [(subjects.subject_for(o), o.to_bytes(), {"Nats-Msg-Id": str(o.id)})
                                for o in run.offers])

    async def book_full() -> bool:
        return len(await ask_retrying(run.nc, "matching", "offers")) >= len(run.offers)
    await wait_until(book_full, 120, "every offer in matching's book", every=0.5)
    deposits = [new_envelope(DepositRequested(tenant=t, amount_micro_eur=DEPOSIT, reference=f"{phase}-{t}"),
                             source="sdk", party=f"t-{t}", correlation_id=uuid.uuid4()) for t in tenants()]
    await publish_many(run.js, [(subjects.subject_for(d), d.to_bytes(), {"Nats-Msg-Id": str(d.id)})
                                for d in deposits])

    async def funded() -> bool:
        for t in tenants():
            if (await ask_retrying(run.nc, "settlement", "wallet", tenant=t))["balance_micro_eur"] < DEPOSIT:
                return False
        return True
    await wait_until(funded, 120, "the tenants' deposits", every=0.5)


def tenants() -> list[str]:
    return [f"bench{i:02d}" for i in range(TENANTS)]


async def wait_until(check: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (nats.errors.Error, asyncio.TimeoutError, RuntimeError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Job:
    key: tuple[str, str]  # (tenant, name)
    job_id: str
    subject: str
    data: bytes
    headers: dict[str, str]
    submitted_at: float = 0.0  # wall clock (time.time), comparable with the streams' timestamps


def build_jobs(run: Run, phase: str, n: int, t0: datetime) -> list[Job]:
    not_after = t0 + timedelta(days=360)  # the trace's longest task is 117 days; deadlines are at most 366 ahead
    out = []
    for i in range(n):
        doc = manifest(i, run.tasks[i % len(run.tasks)], not_after, phase[:2], cap_eur=run.cap_eur)
        md = doc["metadata"]
        jid = job_id(md["namespace"], md["name"])
        env = new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{md['namespace']}", correlation_id=jid)
        out.append(Job((md["namespace"], md["name"]), str(jid), subjects.subject_for(env), env.to_bytes(),
                       {"Nats-Msg-Id": str(env.id)}))
    return out


# -- faults ------------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    at: float  # seconds after the phase started
    kind: str  # kill, nats, postgres, duplicates, poison
    target: str = ""
    mode: str = ""
    down_s: float = 0.0
    count: int = 0


def schedule(rng: random.Random, window: float, kills: int, duplicates: int, poison: int) -> list[Fault]:
    """The faults of a chaos phase, in time order, all decided by the seed up front."""
    out: list[Fault] = []
    victims = [SERVICES[i % len(SERVICES)] for i in range(kills)]  # every service is killed about as often
    rng.shuffle(victims)
    for v in victims:
        out.append(Fault(rng.uniform(0.03, 0.92) * window, "kill", v, down_s=rng.uniform(0.0, 1.5)))
    # server restarts apart from each other, so that each one is its own outage
    for frac, kind, mode in ((0.22, "nats", "graceful"), (0.40, "postgres", "fast"), (0.60, "nats", "sigkill"),
                             (0.78, "postgres", "sigkill")):
        out.append(Fault((frac + rng.uniform(-0.05, 0.05)) * window, kind, mode=mode, down_s=rng.uniform(0.5, 3.0)))
    bursts = max(1, int(window))
    for b in range(bursts):
        n = duplicates // bursts + (1 if b < duplicates % bursts else 0)
        if n:
            out.append(Fault((b + rng.random()) * window / bursts, "duplicates", count=n))
    for k in range(poison):
        out.append(Fault(rng.uniform(0.05, 0.9) * window, "poison", mode=("garbage", "not-envelope",
                                                                          "party-mismatch")[k % 3]))
    return sorted(out, key=lambda f: f.at)


POISON_SUBJECTS = [  # subjects the services consume; `*` becomes a party that never existed
    subjects.JOB_SUBMITTED_ANY, subjects.WORKLOAD_REPORTED_ANY, subjects.USAGE_SAMPLED_ANY, subjects.JOB_MATCHED_ANY,
    subjects.WORKLOAD_FINISHED_ANY, subjects.METER_CLOSED_ANY,
]


@dataclass
class Injector:
    run: Run
    rng: random.Random
    faults: list[Fault]
    t0: float = 0.0
    done: Counter[str] = field(default_factory=Counter)
    poison: list[tuple[str, int, str]] = field(default_factory=list)  # (stream, seq, subject)
    notes: list[str] = field(default_factory=list)
    restarting: set[str] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_all(self) -> None:
        try:
            for f in self.faults:
                delay = self.t0 + f.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await self.inject(f)
                except Exception as e:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                    self.notes.append(f"{f.kind} {f.target or f.mode} at {f.at:.1f}s failed: {type(e).__name__}: {e}")
        finally:
            self.finished.set()

    async def inject(self, f: Fault) -> None:
        procs = self.run.procs
        if f.kind == "kill":
            self.restarting.add(f.target)
            try:
                procs.kill(f.target)
                self.done["kill"] += 1
                self.done[f"kill:{f.target}"] += 1
                await asyncio.sleep(f.down_s)
                procs.start(f.target)
            finally:
                self.restarting.discard(f.target)
        elif f.kind in ("nats", "postgres"):
            server = self.run.nats if f.kind == "nats" else self.run.postgres

            def bounce() -> None:
                if f.mode == "sigkill":
                    server.kill()
                else:
                    server.stop()
                time.sleep(f.down_s)
                server.start()
            t = time.monotonic()
            await asyncio.to_thread(bounce)
            self.done[f"{f.kind}_restart"] += 1
            self.notes.append(f"{f.kind} {f.mode} restart at {f.at:.1f}s, down {time.monotonic() - t:.1f}s")
        elif f.kind == "duplicates":
            self.done["duplicate"] += await self.duplicate(f.count)
        elif f.kind == "poison":
            await self.inject_poison(f.mode)
            self.done["poison"] += 1
            self.done[f"poison:{f.mode}"] += 1

    async def duplicate(self, n: int) -> int:
        """Publish `n` stored internal events again, unchanged but with fresh Nats-Msg-Ids, so the streams keep
        them: consumers see them again, usually after later facts of the same job (out of order)."""
        js = self.run.js
        assert js is not None
        sent = 0
        for _ in range(n * 3):
            if sent >= n:
                break
            stream = self.rng.choice(SERVICE_STREAMS)
            try:
                st = (await js.stream_info(stream)).state
                if not st.messages:
                    continue
                msg = await js.get_msg(stream, self.rng.randint(st.first_seq, st.last_seq))
            except (nats.errors.Error, asyncio.TimeoutError):
                continue
            headers = dict(msg.headers or {})
            if CHAOS_HEADER in headers or msg.data is None:
                continue
            headers.update({"Nats-Msg-Id": f"chaos-dup:{uuid.uuid4()}", CHAOS_HEADER: "duplicate"})
            await publish(js, msg.subject, msg.data, headers)
            sent += 1
        return sent

    async def inject_poison(self, mode: str) -> None:
        js = self.run.js
        assert js is not None
        prefix = self.rng.choice(POISON_SUBJECTS)
        party = "v-chaos" if prefix.startswith("agent.") else "t-chaos"
        subject = prefix.replace("*", party)
        if mode == "garbage":
            data = bytes(self.rng.getrandbits(8) for _ in range(64))
        elif mode == "not-envelope":
            data = json.dumps({"hello": "strongmoose", "n": self.rng.random()}).encode()
        else:  # a well-formed event, but for another party than its subject names
            if prefix.startswith("agent."):
                subject = subjects.WORKLOAD_REPORTED_ANY.replace("*", "v-chaos")
                wid = uuid.uuid4()
                env = new_envelope(WorkloadReported(workload_id=wid, job_id=uuid.uuid4(), vendor="someoneelse",
                                                    status="running", at=datetime.now(timezone.utc)),
                                   source="agent", party="v-someoneelse", correlation_id=wid)
            else:
                subject = subjects.JOB_SUBMITTED_ANY.replace("*", "t-chaos")
                t = self.run.tasks[0]
                doc = manifest(0, t, datetime.now(timezone.utc) + timedelta(days=30), "px", cap_eur=self.run.cap_eur)
                env = new_envelope(JobSubmitted(manifest=doc), source="sdk", party="t-bench00",
                                   correlation_id=uuid.uuid4())
            data = env.to_bytes()
        ack = await publish(js, subject, data, {"Nats-Msg-Id": f"chaos-poison:{uuid.uuid4()}", CHAOS_HEADER: "poison"})
        self.poison.append((ack.stream, ack.seq, subject))


async def supervise(run: Run, injector: Injector | None, stop: asyncio.Event, exits: list[str]) -> None:
    """Start again a service that exited on its own (a supervisor's job), and remember that it did."""
    while not stop.is_set():
        busy = injector.restarting if injector is not None else set()
        for name in run.procs.exited():
            if name in busy:
                continue
            exits.append(f"{name}: {stack.last_line(Path(run.procs.procs[name].log))}")
            run.procs.start(name)
        await asyncio.sleep(0.5)


# -- a phase through the five services -------------------------------------------------------------------------------

@dataclass
class Figures:
    phase: str
    jobs: int = 0
    accepted: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    nonterminal: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    double: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    ledger_sum: int | None = None
    negative_balances: int | None = None
    open_holds_micro_eur: int | None = None
    balance_diff_micro_eur: int | None = None
    dlq: int = 0
    dlq_expected: int = 0
    dlq_ok: bool = True
    dlq_unexpected: list[str] = field(default_factory=list)
    settled: int = 0
    wall_s: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    redelivered: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    mean_msg_bytes: float | None = None

    @property
    def jobs_per_s(self) -> float:
        return self.settled / self.wall_s if self.wall_s == self.wall_s and self.wall_s > 0 else float("nan")

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def double_total(self) -> int:
        return sum(self.double.values())


async def run_exchange(run: Run, phase: str, chaos: bool) -> Figures:
    args = run.args
    assert run.nc is not None and run.js is not None
    fig = Figures(phase=phase, jobs=args.jobs)
    await fresh_bus_and_schemas(run)
    for name in SERVICES:
        run.procs.start(name)
    await wait_ready(run, SERVICES)
    await open_market(run, phase)
    vendor = FakeVendor(run.js, batch=200, durable=VENDOR_DURABLE, ack_wait_s=30.0)
    vendor_task = asyncio.create_task(vendor.run(), name="fake-vendor")
    jobs = build_jobs(run, phase, args.jobs, datetime.now(timezone.utc).replace(microsecond=0))
    if chaos and args.reversed:
        picked = random.Random(f"{args.seed}/reversed").sample(jobs, round(args.reversed * len(jobs)))
        vendor.reversed = {j.job_id for j in picked}
    injector: Injector | None = None
    stop_supervisor = asyncio.Event()
    exits: list[str] = []
    background: list[asyncio.Task[Any]] = [vendor_task]
    try:
        if chaos:
            rng = random.Random(args.seed)
            injector = Injector(run, rng, schedule(rng, args.window, args.kills, args.duplicates, args.poison))
        background.append(asyncio.create_task(supervise(run, injector, stop_supervisor, exits), name="supervisor"))
        t0 = time.monotonic()
        if injector is not None:
            injector.t0 = t0
            background.append(asyncio.create_task(injector.run_all(), name="injector"))
            await submit_in_waves(run, jobs, args.window * 0.75)
            await injector.finished.wait()
        else:
            await submit_burst(run, jobs)
        say(f"[{phase}] all {len(jobs)} jobs submitted after {time.monotonic() - t0:.1f} s; waiting for quiescence")
        await quiescence(run, jobs, vendor, args.settle_timeout, phase, t0, injector)
        await check(run, fig, jobs, vendor, injector)
        fig.notes += [f"a service exited on its own and was started again: {e}" for e in exits]
        if injector is not None:
            fig.faults = Counter({k: v for k, v in injector.done.items()})
            if vendor.reversed:
                fig.faults["reversed_reports"] = sum(1 for j in vendor.reversed if j in vendor.workloads)
            fig.notes += injector.notes
    finally:
        stop_supervisor.set()
        vendor.stopped = True
        left = await cancel_all(background)
        if left:
            fig.notes.append(f"could not stop {left}")
        killed = run.procs.stop([n for n in SERVICES])
        if killed:
            fig.notes.append(f"needed SIGKILL to stop: {', '.join(killed)}")
    return fig


async def submit_burst(run: Run, jobs: list[Job]) -> None:
    assert run.js is not None
    for j in jobs:
        j.submitted_at = time.time()
    await publish_many(run.js, [(j.subject, j.data, j.headers) for j in jobs])


async def submit_in_waves(run: Run, jobs: list[Job], over_s: float) -> None:
    """Waves of 50, spread evenly, so that every fault finds jobs in flight."""
    assert run.js is not None
    waves = [jobs[i:i + 50] for i in range(0, len(jobs), 50)]
    start = time.monotonic()
    for k, wave in enumerate(waves):
        delay = start + k * over_s / max(1, len(waves)) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for j in wave:
            j.submitted_at = time.time()
        await publish_many(run.js, [(j.subject, j.data, j.headers) for j in wave])


async def quiescence(run: Run, jobs: list[Job], vendor: FakeVendor, timeout: float, phase: str, t0: float,
                     injector: Injector | None) -> None:
    """Every consumer drained, every outbox published and nothing new on the streams, for three looks in a row (a
    second apart) once every job is final in intake's view, or for fifteen while some are not: nothing is in
    flight that could still move them (their non-final state is then a finding, not a wait)."""
    assert run.nc is not None and run.js is not None
    keys = {j.key for j in jobs}
    deadline = time.monotonic() + timeout
    stable = 0
    last_total = -1
    last_print = 0.0
    why = ""
    while time.monotonic() < deadline:
        try:
            views = await ask(run.nc, "intake", "jobs", timeout=30)
            st = Counter(v["status"] for v in views if (v["tenant"], v["name"]) in keys)
            final = sum(n for s, n in st.items() if s in TERMINAL)
            counts = await consumer_counts(run.js, list(ALL_STREAMS))
            busy = {n: c["pending"] + c["ack_pending"] for n, c in counts.items() if c["pending"] + c["ack_pending"]}
            unpublished = await unpublished_outbox(run)
            total = sum([(await run.js.stream_info(s)).state.messages for s in ALL_STREAMS])
            quiet = not busy and not unpublished
            why = (f"{final}/{len(keys)} final {dict(st)}; busy consumers {busy}; unpublished outbox rows "
                   f"{unpublished}")
            stable = stable + 1 if quiet and total == last_total else 0
            last_total = total
            if stable >= (3 if final == len(keys) else 15):
                if final < len(keys):
                    say(f"[{phase}] quiet, but {len(keys) - final} jobs are not final: {dict(st)}")
                return
        except (nats.errors.Error, asyncio.TimeoutError, RuntimeError, OSError, asyncpg.PostgresError) as e:
            why = f"{type(e).__name__}: {e}"
            stable = 0
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            faults = dict(injector.done) if injector else {}
            say(f"[{phase}] t={time.monotonic() - t0:.0f}s {why[:300]}"
                + (f"; faults {faults}" if faults else ""))
        await asyncio.sleep(1.0)
    say(f"[{phase}] NOT QUIET after {timeout:g} s: {why}")


async def unpublished_outbox(run: Run) -> dict[str, int]:
    con = await asyncpg.connect(run.infra.database_url, timeout=5)
    try:
        out = {}
        for s in SERVICES:
            n = await con.fetchval(f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL")
            if n:
                out[s] = n
        return out
    finally:
        await con.close()


# -- the oracles ----------------------------------------------------------------------------------------------------

def _check(ledger: dict[str, Any], *words: str) -> dict[str, Any] | None:
    for c in ledger.get("checks", []):
        if all(w in c["name"] for w in words):
            return c
    return None


def _ints(detail: str, key: str) -> list[int]:
    return [int(x) for x in re.findall(rf"'{key}': (-?\d+)", detail)]


async def check(run: Run, fig: Figures, jobs: list[Job], vendor: FakeVendor, injector: Injector | None) -> None:
    """Count what was lost or applied twice, from intake's view, the streams, the vendor and settlement's queries."""
    nc, js = run.nc, run.js
    assert nc is not None and js is not None
    by_id = {j.job_id: j for j in jobs}
    views = {(v["tenant"], v["name"]): v for v in await ask_retrying(nc, "intake", "jobs", timeout=60)}
    mine = {k: v for k, v in views.items() if k in {j.key for j in jobs}}
    fig.accepted = sum(1 for v in mine.values() if v["status"] != "rejected")
    fig.statuses = Counter(v["status"] for v in mine.values())
    fig.statuses["(missing)"] = len(jobs) - len(mine)
    fig.nonterminal = sum(1 for v in mine.values() if v["status"] not in TERMINAL)
    stuck = [v for v in mine.values() if v["status"] not in TERMINAL]
    fig.examples += [f"job {v['tenant']}/{v['name']} ({v['job_id']}) stuck in {v['status']}"
                     + (" (its reports came end first)" if str(v["job_id"]) in vendor.reversed else "")
                     for v in stuck[:5]]
    lost: Counter[str] = Counter()
    double: Counter[str] = Counter()
    lost["submitted, never in intake's view"] = len(jobs) - len(mine)
    lost["settled without an outcome (a lost fact)"] = sum(1 for v in mine.values()
                                                           if v["status"] == "settled" and not v.get("outcome"))

    # the facts on the streams: each once per job, and when each job was charged
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    charged: dict[str, dict[str, int]] = defaultdict(dict)  # job -> ChargePosted id -> total
    first_charge: dict[str, float] = {}
    stored = stored_bytes = 0
    streams = {name: await read_stream(js, name) for name in STREAMS if name != "DLQ"}
    for stream in SERVICE_STREAMS:
        for m in streams[stream]:
            stored += 1
            stored_bytes += len(m.data or b"")
            try:
                d = json.loads(m.data)
                t, eid, corr = d["type"], d["id"], d["correlation_id"]
            except (ValueError, KeyError, TypeError):
                continue  # poison
            ids[(corr, t)].add(eid)
            if t == "ChargePosted":
                charged[corr][eid] = int(d["payload"].get("total_micro_eur") or 0)
                ts = m.metadata.timestamp.timestamp()
                first_charge[corr] = min(ts, first_charge.get(corr, ts))
    fig.mean_msg_bytes = stored_bytes / stored if stored else None
    for (corr, t), s in ids.items():
        if t in ONCE_PER_JOB and len(s) > 1 and corr in by_id:
            double[f"{t} twice (distinct event ids)"] += 1
            if len(fig.examples) < 10:
                fig.examples.append(f"job {corr}: {t} x{len(s)}")
    double["placed twice (the vendor got two workloads)"] = sum(1 for jid, w in vendor.workloads.items()
                                                                if len(w) > 1 and jid in by_id)
    settled = [v for v in mine.values() if v["status"] == "settled"]
    lost["settled without a ChargePosted"] = sum(1 for v in settled if str(v["job_id"]) not in charged)

    # money: per job, the invoice against the charges; per tenant, what left the wallet against the invoice
    invoiced: dict[str, int] = defaultdict(int)
    lines: Counter[str] = Counter()
    paid_vs_invoiced = []
    for t in tenants():
        inv = await ask_retrying(nc, "settlement", "invoice", tenant=t)
        wal = await ask_retrying(nc, "settlement", "wallet", tenant=t)
        total = 0
        for line in inv.get("lines", []):
            jid = str(line.get("job_id"))
            invoiced[jid] += int(line["total_micro_eur"])
            lines[jid] += 1
            total += int(line["total_micro_eur"])
        deposited = DEPOSIT  # one deposit per tenant and phase, whatever duplicates of it were injected
        if wal.get("deposited_micro_eur") is not None and int(wal["deposited_micro_eur"]) != deposited:
            kind = "lost" if int(wal["deposited_micro_eur"]) < deposited else "double"
            (lost if kind == "lost" else double)["tenant deposits booked wrongly"] += 1
        paid = deposited - int(wal["balance_micro_eur"]) - int(wal.get("held_micro_eur") or 0)
        if paid != total:
            paid_vs_invoiced.append(f"{t}: paid {paid} != invoiced {total}")
            (double if paid > total else lost)["tenants whose wallet moved by more/less than their invoice"] += 1
        fig.open_holds_micro_eur = (fig.open_holds_micro_eur or 0) + int(wal.get("held_micro_eur") or 0)
    fig.examples += paid_vs_invoiced[:5]
    for v in settled:
        jid = str(v["job_id"])
        charges = sum(charged.get(jid, {}).values())
        if jid not in invoiced:
            lost["settled without an invoice line"] += 1
        elif invoiced[jid] > charges:
            double["invoiced more than charged"] += 1
        elif invoiced[jid] < charges:
            lost["invoiced less than charged"] += 1
    fig.lost = {k: v for k, v in lost.items() if v}
    fig.double = {k: v for k, v in double.items() if v}

    # the ledger's own invariants
    fig.ledger = await ask_retrying(nc, "settlement", "ledger_check", timeout=60)
    c = _check(fig.ledger, "sum to zero")
    fig.ledger_sum = None if c is None else (0 if c["ok"] else sum(_ints(c["detail"], "total")) or None)
    negatives = [c for c in fig.ledger.get("checks", []) if "negative" in c["name"] or "below zero" in c["name"]]
    fig.negative_balances = sum(0 if c["ok"] else max(1, c["detail"].count("{")) for c in negatives)
    c = _check(fig.ledger, "recomputed")
    if c is not None:
        fig.balance_diff_micro_eur = 0 if c["ok"] else sum(
            abs(b - r) for b, r in zip(_ints(c["detail"], "balance"), _ints(c["detail"], "recomputed"), strict=False))

    # dead letters: exactly one per poison message and consumer of its subject, nothing else
    expected: set[tuple[str, str, int]] = set()
    for stream, seq, subject in (injector.poison if injector else []):
        for durable, filters in await service_consumers(js, stream):
            if any(subject_matches(f, subject) for f in filters):
                expected.add((durable, stream, seq))
    actual: set[tuple[str, str, int]] = set()
    unexpected = []
    for m in await read_stream(js, "DLQ"):
        h = m.headers or {}
        key = (h.get("Strongmoose-Consumer", "?"), h.get("Strongmoose-Stream", "?"),
               int(h.get("Strongmoose-Stream-Seq", "0")))
        actual.add(key)
        if key not in expected:
            unexpected.append(f"{m.subject}: {h.get('Strongmoose-Error', '')[:160]}")
    fig.dlq, fig.dlq_expected = len(actual), len(expected)
    fig.dlq_ok = actual == expected
    fig.dlq_unexpected = unexpected[:10]

    # throughput and latency: first submit .. last ChargePosted stored, and submit -> ChargePosted per job
    done = {jid: ts for jid, ts in first_charge.items() if jid in by_id}
    fig.settled = len(done)
    if done:
        fig.wall_s = max(done.values()) - min(j.submitted_at for j in jobs)
        fig.latencies_ms = [(ts - by_id[jid].submitted_at) * 1000 for jid, ts in done.items()]
    # deliveries beyond the first: every consumer's deliveries minus the messages it matches
    for stream, msgs in streams.items():
        for c in await js.consumers_info(stream):
            filters = list(c.config.filter_subjects or []) or [c.config.filter_subject or ">"]
            matched = sum(1 for m in msgs if any(subject_matches(f, m.subject) for f in filters))
            fig.redelivered += max(0, (c.delivered.consumer_seq if c.delivered else 0) - matched)


# -- the raw baseline ------------------------------------------------------------------------------------------------

async def raw_worker(nats_url: str, proc: str, batch: int) -> None:
    """One bare nats-py process: the hops of RAW_HOPS that `proc` does, until SIGTERM."""
    nc = await nats.connect(nats_url, name=f"chaos-raw-{proc}")
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for p, durable, stream, filt, routes in RAW_HOPS:
        if p != proc:
            continue
        psub = await js.pull_subscribe(filt, durable=durable, stream=stream, config=ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            filter_subject=filt, max_deliver=8, ack_wait=30, max_ack_pending=2000))
        tasks.append(asyncio.create_task(raw_hop(js, psub, routes, batch, stop)))
    await stop.wait()
    await cancel_all(tasks)
    await nc.close()


async def run_raw(run: Run, jobs: int, msg_bytes: int) -> Figures:
    """The fault-free phase's message graph, relayed by one bare nats-py process per service (and the vendor)."""
    assert run.nc is not None and run.js is not None
    fig = Figures(phase="raw", jobs=jobs)
    js = run.js
    await delete_streams(js, list(RAW_STREAMS))
    for name, subs in RAW_STREAMS.items():
        await js.add_stream(StreamConfig(name=name, subjects=subs, retention=RetentionPolicy.LIMITS,
                                         storage=StorageType.FILE, max_age=MAX_AGE_S,
                                         duplicate_window=DUPLICATE_WINDOW_S))
    workers = sorted({p for p, *_ in RAW_HOPS})
    names = [f"raw-{w}" for w in workers]
    try:
        for w in workers:
            run.procs.start_script(f"raw-{w}", [str(Path(__file__).resolve()), "--raw-worker", w,
                                                "--nats-url", run.infra.nats_url, "--batch", str(run.args.batch)])

        async def all_consumers() -> bool:
            return sum([len(await js.consumers_info(s)) for s in RAW_STREAMS]) >= len(RAW_HOPS)
        await wait_until(all_consumers, 60, "the raw workers' consumers", every=0.2)
        arrived: dict[str, float] = {}
        all_in = asyncio.Event()

        async def cb(msg: Any) -> None:
            k = msg.data[:36].decode()
            if k not in arrived:
                arrived[k] = time.time()
                if len(arrived) >= jobs:
                    all_in.set()
        sub = await run.nc.subscribe(RAW_FINAL, cb=cb, pending_msgs_limit=10 * jobs + 1000)
        await run.nc.flush()
        pad = b" " * max(0, msg_bytes - 36)
        keys = [str(uuid.uuid4()) for _ in range(jobs)]
        submitted = {}
        for k in keys:
            submitted[k] = time.time()
        await publish_many(js, [("rb.sdk.submitted", k.encode() + pad, {"Nats-Msg-Id": f"{k}:submitted"})
                                for k in keys])
        try:
            await asyncio.wait_for(all_in.wait(), timeout=run.args.settle_timeout)
        except asyncio.TimeoutError:
            fig.notes.append(f"TIMEOUT: {len(arrived)}/{jobs} arrived")
        await sub.unsubscribe()
        fig.settled = len(arrived)
        if arrived:
            fig.wall_s = max(arrived.values()) - min(submitted.values())
            fig.latencies_ms = [(t - submitted[k]) * 1000 for k, t in arrived.items()]
    finally:
        run.procs.stop(names)
        await delete_streams(js, list(RAW_STREAMS))
    return fig


# -- report ----------------------------------------------------------------------------------------------------------

def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{nd}f}"


def report(figs: dict[str, Figures], args: argparse.Namespace, env: dict[str, str]) -> None:
    out = print
    out("\n== strongmoose chaos run " + "=" * 80)
    for k, v in env.items():
        out(f"  {k:<22} {v}")
    for name in ("fault-free", "chaos"):
        f = figs.get(name)
        if f is None:
            continue
        out(f"\n-- {name} --")
        out(f"  jobs submitted {f.jobs}, accepted {f.accepted}, non-terminal {f.nonterminal}")
        out("  by state: " + ", ".join(f"{s} {n}" for s, n in sorted(f.statuses.items()) if n))
        if f.faults:
            kinds = {k: v for k, v in f.faults.items() if ":" not in k}
            per = {k.split(":", 1)[1]: v for k, v in f.faults.items() if k.startswith("kill:")}
            poison = {k.split(":", 1)[1]: v for k, v in f.faults.items() if k.startswith("poison:")}
            out(f"  faults injected: {kinds}; kills per service {per}; poison by kind {poison}")
        out(f"  lost effects: {f.lost_total} {f.lost or ''}")
        out(f"  double-applied effects: {f.double_total} {f.double or ''}")
        for e in f.examples:
            out(f"    e.g. {e}")
        out(f"  ledger: sum {f.ledger_sum}, negative balances {f.negative_balances}, open holds "
            f"{f.open_holds_micro_eur} micro-EUR, stored-vs-recomputed balance difference {f.balance_diff_micro_eur}"
            f" micro-EUR; ledger_check {'ok' if f.ledger.get('ok') else 'FAILED'}")
        for c in f.ledger.get("checks", []):
            if not c["ok"]:
                out(f"    FAILED {c['name']}: {c['detail'][:300]}")
        out(f"  dead letters: {f.dlq} (expected {f.dlq_expected} from the poison injected): "
            f"{'ok' if f.dlq_ok else 'MISMATCH'}")
        for u in f.dlq_unexpected:
            out(f"    unexpected: {u}")
        out(f"  throughput: {f.settled} settled in {fmt(f.wall_s, 1)} s = {fmt(f.jobs_per_s)} jobs/s; submit -> "
            f"charged p50 {fmt(percentile(f.latencies_ms, 50), 0)} ms, p99 {fmt(percentile(f.latencies_ms, 99), 0)} ms;"
            f" deliveries beyond the first {f.redelivered}")
        for n in f.notes:
            out(f"  note: {n}")
    raw, ff = figs.get("raw"), figs.get("fault-free")
    if raw is not None:
        out(f"\n-- raw (bare nats-py processes, same message graph) --\n  {raw.settled}/{raw.jobs} in "
            f"{fmt(raw.wall_s, 2)} s = {fmt(raw.jobs_per_s)} jobs/s; p50 {fmt(percentile(raw.latencies_ms, 50), 0)} ms")
        for n in raw.notes:
            out(f"  note: {n}")
    if raw is not None and ff is not None:
        out(f"  fault-free / raw = {fmt(ff.jobs_per_s / raw.jobs_per_s, 3)}")


def last_line(figs: dict[str, Figures]) -> str:
    c, ff, raw = figs.get("chaos"), figs.get("fault-free"), figs.get("raw")
    ratio = ff.jobs_per_s / raw.jobs_per_s if ff and raw and raw.jobs_per_s else float("nan")
    if c is None:
        return f"jobs=0 nonterminal=- lost=- double=- ledger_sum=- dlq_ok=- jobs_per_s=- raw_ratio={ratio:.3f}"
    return (f"jobs={c.jobs} nonterminal={c.nonterminal} lost={c.lost_total} double={c.double_total} "
            f"ledger_sum={c.ledger_sum if c.ledger_sum is not None else 'unknown'} dlq_ok={str(c.dlq_ok).lower()} "
            f"jobs_per_s={c.jobs_per_s:.1f} raw_ratio={ratio:.3f}")


def failed(f: Figures | None) -> bool:
    return f is None or bool(f.nonterminal or f.lost_total or f.double_total or f.ledger_sum != 0)


# -- main -------------------------------------------------------------------------------------------------------------

async def main_async(run: Run) -> dict[str, Figures]:
    args = run.args
    run.nc = await connect(run.infra.nats_url, "chaos-harness")
    run.js = run.nc.jetstream(timeout=10)
    figs: dict[str, Figures] = {}
    try:
        for phase in args.phases.split(","):
            t = time.monotonic()
            say(f"[{phase}] starting")
            if phase == "fault-free":
                figs[phase] = await run_exchange(run, phase, chaos=False)
            elif phase == "raw":
                size = int(figs["fault-free"].mean_msg_bytes or 1000) if "fault-free" in figs else 1000
                figs[phase] = await run_raw(run, args.jobs, size)
            elif phase == "chaos":
                figs[phase] = await run_exchange(run, phase, chaos=True)
            else:
                raise SystemExit(f"unknown phase {phase!r}")
            f = figs[phase]
            say(f"[{phase}] done in {time.monotonic() - t:.0f} s: {f.settled}/{f.jobs} settled, {fmt(f.jobs_per_s)} "
                f"jobs/s")
    finally:
        await run.nc.close()
    return figs


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000, help="jobs per phase (default 2000)")
    ap.add_argument("--seed", type=int, default=1, help="fixes the workload and the fault schedule (default 1)")
    ap.add_argument("--window", type=float, default=90.0,
                    help="seconds over which the chaos phase submits jobs and injects faults (default 90)")
    ap.add_argument("--kills", type=int, default=25, help="SIGKILLs of services in the chaos phase (default 25)")
    ap.add_argument("--duplicates", type=int, default=400, help="internal events published again (default 400)")
    ap.add_argument("--poison", type=int, default=12, help="poison messages injected (default 12)")
    ap.add_argument("--reversed", type=float, default=0.02,
                    help="share of the chaos phase's jobs whose vendor reports the end first (default 0.02)")
    ap.add_argument("--nodes", type=int, default=2, help="machines per vendor and instance type (default 2)")
    ap.add_argument("--batch", type=int, default=200, help="the raw workers' batch size (the services' default)")
    ap.add_argument("--settle-timeout", type=float, default=300.0,
                    help="give up waiting for quiescence after this many seconds (default 300)")
    ap.add_argument("--phases", default="fault-free,raw,chaos", help="comma-separated subset, in order")
    ap.add_argument("--keep", action="store_true", help="keep the state directory (logs, data) at the end")
    ap.add_argument("--raw-worker", help=argparse.SUPPRESS)
    ap.add_argument("--nats-url", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _interrupted(*_: Any) -> None:
    """SIGTERM and SIGINT (Ctrl-C) end the run through the clean-up in `main`."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.raw_worker:
        asyncio.run(raw_worker(args.nats_url, args.raw_worker, args.batch))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell starts background jobs with it ignored
        signal.signal(sig, _interrupted)
    data = default_data_dir()
    tasks = trace_tasks(data / "traces")
    t_offers = datetime.now(timezone.utc).replace(microsecond=0)
    offers = catalog_offer_events(data, args.nodes, t_offers)
    state_dir = Path(tempfile.mkdtemp(prefix="strongmoose-chaos-"))
    nats_server = NatsServer(state_dir)
    pg = PostgresServer(state_dir)
    procs: Processes | None = None
    figs: dict[str, Figures] = {}
    code = 1
    try:
        say(f"chaos: state in {state_dir}; starting NATS and PostgreSQL")
        nats_server.start()
        pg.start()
        infra = Infra(nats_server.url, pg.url, state_dir, ["nats", "postgres"], nats_server, pg)
        procs = Processes(state_dir, infra)
        run = Run(args, state_dir, infra, procs, tasks, offers, max_price_eur(offers))
        env = {
            "jobs": f"{args.jobs} per phase, CPU tasks of the Alibaba trace (cycled), {TENANTS} tenants, "
                    f"cap EUR {run.cap_eur}/DTU-h",
            "vendors": f"{len({o.payload.vendor for o in offers})} vendors, {len(offers)} offers "
                       f"({args.nodes} per CPU instance type of the price catalogs)",
            "chaos": f"seed {args.seed}, window {args.window:g} s, {args.kills} kills, NATS x2, PostgreSQL x2, "
                     f"{args.duplicates} duplicates, {args.poison} poison, {args.reversed:.0%} of jobs reported "
                     "end first",
            "machine": f"{os.cpu_count()} cores",
        }
        figs = asyncio.run(main_async(run))
        report(figs, args, env)
        code = 1 if failed(figs.get("chaos")) or ("fault-free" in figs and failed(figs["fault-free"])) else 0
        if "chaos" not in figs:
            code = 1 if any(failed(f) for n, f in figs.items() if n != "raw") else 0
    except KeyboardInterrupt:
        say("chaos: interrupted; stopping everything it started")
        code = 130
    finally:
        if procs is not None:
            procs.stop_all()
        for server in (pg, nats_server):
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - the other server must still be stopped
                say(f"chaos: could not stop {server.name}: {e}")
        if args.keep or code not in (0, 130):
            say(f"chaos: logs and data kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(last_line(figs), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
