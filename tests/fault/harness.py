"""What the fault tests share: servers of their own (so that killing them disturbs nobody), the five services,
the fake vendor of bench/workload.py, and one oracle for "nothing lost, nothing applied twice"."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.workload import FakeVendor, cancel_all, read_stream
from libs.common.bus import Runtime
from libs.common.envelope import new_envelope
from libs.common.events.agent import OfferPublished
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from libs.common.localinfra import NatsServer, PostgresServer
from libs.common.streams import ensure_streams
from tests.support import REPO, Exchange, eventually

SERVICES = ("intake", "matching", "placement", "metering", "settlement")
TENANT = "xyz"
VENDOR = "safespring"
T0 = datetime.now(timezone.utc).replace(microsecond=0)
# facts that happen once in a job's life when its vendor never fails it: a second id means applied twice
ONCE_PER_JOB = ("JobAccepted", "JobMatched", "FundsHeld", "WorkloadAssigned", "WorkloadStarted", "WorkloadFinished",
                "MeterClosed", "ChargePosted")


@dataclass
class Servers:
    nats: NatsServer
    postgres: PostgresServer


def start_servers(state_dir: Path) -> Servers:
    n = NatsServer(state_dir)
    n.start()
    p = PostgresServer(state_dir)
    try:
        p.start()
    except BaseException:
        n.stop()
        raise
    return Servers(n, p)


def stop_servers(s: Servers) -> None:
    for server in (s.postgres, s.nats):
        with contextlib.suppress(Exception):
            server.stop()


def services(names: tuple[str, ...] = SERVICES) -> list[Any]:
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

    build = {"intake": lambda: intake(IntakeSettings()), "matching": lambda: matching(MatchingSettings()),
             "placement": lambda: placement(PlacementSettings()), "metering": lambda: metering(MeteringSettings()),
             "settlement": lambda: settlement(SettlementSettings())}
    return [build[n]() for n in names]


async def connect(url: str) -> NATS:
    async def quiet(_e: Exception) -> None:
        pass
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet)


@dataclass
class Fault:
    """The exchange of one fault test: its own servers, services in this event loop (and, where a test needs a
    process to kill, as subprocesses), the fake vendor, and the job names submitted."""

    servers: Servers
    ex: Exchange
    vendor: FakeVendor
    state_dir: Path
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    @property
    def nc(self) -> NATS:
        return self.ex.nc

    @property
    def js(self) -> JetStreamContext:
        return self.ex.js

    def spawn(self, name: str, **env_vars: str) -> subprocess.Popen[bytes]:
        """Start a service as a process (`python -m services.<name>`), as in production."""
        env = {**os.environ, "NATS_URL": self.servers.nats.url, "DATABASE_URL": self.servers.postgres.url,
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env_vars}
        with open(self.state_dir / f"{name}.log", "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = p
        return p

    async def ready(self, name: str, timeout: float = 60.0) -> None:
        async def answers() -> bool:
            try:
                return bool((await self.ex.query(name, "health"))["ready"])
            except (AssertionError, nats.errors.Error, asyncio.TimeoutError):
                return False
        await eventually(answers, timeout, f"{name} ready")

    async def offer(self, vcpu: int = 64, memory_gib: int = 256, price: int = 38_000) -> None:
        oid = offer_id(VENDOR, "big-1")
        await self.ex.publish(new_envelope(OfferPublished(
            offer_id=oid, vendor=VENDOR, node="big-1", region="se-east", country="Sweden", eu=True, vcpu=Decimal(vcpu),
            memory_gib=Decimal(memory_gib), price_micro_eur_per_dtu_hour=price, available_from=T0 - timedelta(hours=1),
            available_until=T0 + timedelta(days=30)), source="agent", party=f"v-{VENDOR}", correlation_id=oid, time=T0))
        await self.ex.wait_offers(1)

    async def submit(self, n: int, prefix: str = "job") -> list[str]:
        names = [f"{prefix}-{len(self.names) + i:03d}" for i in range(n)]
        for name in names:
            doc = {"apiVersion": "strongmoose.dsoderlund.consulting/v1alpha1", "kind": "job",
                   "metadata": {"name": name, "namespace": TENANT},
                   "spec": {"image": "python:3.11-slim", "notAfter": (T0 + timedelta(days=7)).isoformat(),
                            "maxEuroPerDTU": "0.05", "scriptPath": "/job.py",
                            "resources": {"cpu": "2", "memory": "4Gi"}, "expectedDuration": 1800}}
            await self.ex.publish(new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{TENANT}",
                                               correlation_id=job_id(TENANT, name)))
        self.names += names
        return names

    def start_vendor(self) -> None:
        self.tasks.append(asyncio.create_task(self.vendor.run(), name="fake-vendor"))

    async def settled(self, timeout: float = 60.0) -> None:
        async def all_settled() -> bool:
            jobs = {j["name"]: j for j in await self.ex.query("intake", "jobs", tenant=TENANT)}
            return all(jobs.get(n, {}).get("status") == "settled" and jobs[n].get("outcome") for n in self.names)
        try:
            await eventually(all_settled, timeout, f"{len(self.names)} jobs settled")
        except AssertionError:
            raise AssertionError(f"not all settled; {await self.ex.diagnose()}") from None

    async def dead_letters(self) -> list[Any]:
        return await read_stream(self.js, "DLQ")

    async def exactly_once(self, optional: tuple[str, ...] = ()) -> None:
        """Every job settled once: no fact of its life twice (nor missing, but for `optional` ones), one workload,
        one invoice line per job whose amount is its charge, the wallet moved by exactly the invoice, nothing
        held, and the ledger's checks."""
        await self.settled()
        await self.ex.quiet(timeout=90)
        ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        charged: dict[str, int] = defaultdict(int)
        for stream in ("INTAKE", "MATCHING", "PLACEMENT", "METERING", "SETTLEMENT"):
            for m in await read_stream(self.js, stream):
                try:
                    d = json.loads(m.data)
                except ValueError:
                    continue
                if isinstance(d, dict) and "type" in d and d["id"] not in ids[(d["correlation_id"], d["type"])]:
                    ids[(d["correlation_id"], d["type"])].add(d["id"])
                    if d["type"] == "ChargePosted":
                        charged[d["correlation_id"]] += int(d["payload"]["total_micro_eur"])
        jids = {str(job_id(TENANT, n)): n for n in self.names}
        twice = {(jids[c], t): len(s) for (c, t), s in ids.items() if c in jids and t in ONCE_PER_JOB and len(s) != 1}
        assert not twice, f"facts applied twice: {twice}"
        missing = [(n, t) for j, n in jids.items() for t in ONCE_PER_JOB if (j, t) not in ids and t not in optional]
        assert not missing, f"facts missing: {missing[:10]}"
        placed = Counter({j: len(w) for j, w in self.vendor.workloads.items() if j in jids})
        assert placed == Counter({j: 1 for j in jids}), f"workloads per job: {placed}"
        invoice = await self.ex.query("settlement", "invoice", tenant=TENANT)
        lines = Counter(str(line["job_id"]) for line in invoice["lines"])
        assert lines == Counter({j: 1 for j in jids}), f"invoice lines per job: {lines}"
        for line in invoice["lines"]:
            assert line["total_micro_eur"] == charged[str(line["job_id"])], line
        wallet = await self.ex.query("settlement", "wallet", tenant=TENANT)
        assert wallet["held_micro_eur"] == 0
        assert wallet["deposited_micro_eur"] - wallet["balance_micro_eur"] == invoice["total_micro_eur"]
        ledger = await self.ex.query("settlement", "ledger_check")
        assert ledger["ok"], [c for c in ledger["checks"] if not c["ok"]]


@contextlib.asynccontextmanager
async def fault_exchange(state_dir: Path, *, as_processes: tuple[str, ...] = (), max_outage_s: float = 60.0,
                         process_env: dict[str, str] | None = None) -> AsyncIterator[Fault]:
    """Servers of its own, the five services (those in `as_processes` as subprocesses, the others in this event
    loop), EUR 1,000 in the tenant's wallet and the fake vendor; everything is stopped afterwards."""
    servers = start_servers(state_dir)
    nc: NATS | None = None
    fault: Fault | None = None
    try:
        nc = await connect(servers.nats.url)
        js = nc.jetstream()
        await ensure_streams(js)
        ex = Exchange(nc=nc, js=js, database_url=servers.postgres.url, schemas={s: s for s in SERVICES})
        fault = Fault(servers, ex, FakeVendor(js, batch=50, durable="fault-vendor", ack_wait_s=5.0), state_dir)
        in_loop = tuple(s for s in SERVICES if s not in as_processes)
        for svc in services(in_loop):
            rt = Runtime(svc, servers.nats.url, servers.postgres.url, batch_size=100, max_outage_s=max_outage_s)
            ex.runtimes[svc.name] = rt
            await rt.start()
        for name in as_processes:
            fault.spawn(name, **(process_env or {}))
        for name in as_processes:
            await fault.ready(name)
        await ex.deposit(TENANT, 1_000_000_000)
        yield fault
    finally:
        if fault is not None:
            fault.vendor.stopped = True
            await cancel_all(fault.tasks)
            for rt in fault.ex.runtimes.values():
                await asyncio.wait_for(rt.stop(), 30)
            for p in fault.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(10)
        if nc is not None:
            await nc.close()
        stop_servers(servers)
