"""The vendor agent process: offers out, assignments in, status and usage out.

One process can act for several vendors (the demo runs all catalog vendors in one); each vendor's
facts are published on its own subjects (`agent.….v-<vendor>`), and the agent's durable consumer
listens only on its vendors' assignment and cancel subjects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from clients.agent.catalog import CatalogOffer, demo_offers
from clients.agent.runner import Outcome, Usage, map_path, run_process, stop_leftover
from clients.agent.settings import AgentSettings
from libs.common import subjects
from libs.common.envelope import Envelope, InvalidEvent, Payload, new_envelope, parse_envelope
from libs.common.events.agent import OfferPublished, OfferWithdrawn, UsageSampled, WorkloadReported
from libs.common.events.placement import WorkloadAssigned, WorkloadCancelRequested
from libs.common.ids import offer_id
from libs.common.streams import ensure_streams

log = logging.getLogger("agent")

# a workload's folder under <state>/workloads/<id>: what the agent took on, how far it reported, whether it ended
ASSIGNMENT, SEQ, ENDED = "assignment.json", "seq", "ended"


def offer_event(o: CatalogOffer, now: datetime, window_days: int) -> Envelope[Any]:
    start = now.replace(minute=0, second=0, microsecond=0)
    oid = offer_id(o.vendor, o.node)
    payload = OfferPublished(
        offer_id=oid, vendor=o.vendor, node=o.node, region=o.region, country=o.country, eu=o.eu, vcpu=o.vcpu,
        memory_gib=o.memory_gib, gpu_count=o.gpu_count, gpu_model=o.gpu_model, arch=o.arch,
        price_micro_eur_per_dtu_hour=o.price_micro_eur_per_dtu_hour,
        price_micro_eur_per_gpu_hour=o.price_micro_eur_per_gpu_hour, available_from=start,
        available_until=start + timedelta(days=window_days), illustrative=o.illustrative)
    return new_envelope(payload, source="agent", party=subjects.vendor_party(o.vendor), correlation_id=oid, time=now)


class Agent:
    def __init__(self, settings: AgentSettings):
        self.settings = settings
        wanted = None if settings.vendors.strip() in ("", "all") else {
            v.strip() for v in settings.vendors.split(",") if v.strip()}
        self.offers = demo_offers(settings.data_dir, settings.usd_to_eur, wanted)
        self.vendors = sorted({o.vendor for o in self.offers})
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.running: dict[UUID, asyncio.Task[None]] = {}
        self.cancelled: dict[UUID, asyncio.Task[None]] = {}  # workloads whose job was cancelled: their stoppers
        self.in_flight: set[tuple[str, str]] = set()  # (vendor, node) of the heartbeat being published
        self.withdraw_again: list[OfferWithdrawn] = []  # withdrawals a heartbeat on its way overtook

    async def publish(self, env: Envelope[Any]) -> None:
        assert self.js is not None
        await self.js.publish(subjects.subject_for(env), env.to_bytes(), headers={"Nats-Msg-Id": str(env.id)})

    async def publish_offers(self) -> None:
        """Publish every offer (a heartbeat). A node withdrawn while they are on their way may be published
        after its withdrawal: it is withdrawn again once they are stored, so that it does not come back."""
        assert self.js is not None
        now = datetime.now(timezone.utc)
        self.in_flight = {(o.vendor, o.node) for o in self.offers}
        try:
            events = [offer_event(o, now, self.settings.window_days) for o in self.offers]
            futures = [await self.js.publish_async(subjects.subject_for(e), e.to_bytes(),
                                                   headers={"Nats-Msg-Id": str(e.id)}) for e in events]
            await asyncio.gather(*futures)
        finally:
            self.in_flight = set()
        log.info("published %d offers for %d vendors", len(futures), len(self.vendors))
        overtaken, self.withdraw_again = self.withdraw_again, []
        for p in overtaken:
            await self.publish(new_envelope(p, source="agent", party=subjects.vendor_party(p.vendor),
                                            correlation_id=p.offer_id))

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.publish_offers()
            except Exception as e:  # NATS away: the next heartbeat tries again
                log.warning("offer heartbeat failed: %s", e)

    async def start(self) -> None:
        self.nc = await nats.connect(self.settings.nats_url, name=f"agent-{self.settings.name}",
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js)
        await self.recover()
        await self.publish_offers()
        for v in self.vendors:  # a node withdrawn (smctl vendor withdraw) is offered no more, until a restart
            await self.nc.subscribe(subjects.offer_withdrawn_by(v), cb=self.on_withdrawn)
        config = ConsumerConfig(
            durable_name=f"agent-{self.settings.name}", ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, max_deliver=5, ack_wait=60,
            filter_subjects=[subjects.workload_assigned_to(v) for v in self.vendors]
            + [subjects.workload_cancel_to(v) for v in self.vendors])
        # create, or update the filters of, the agent's durable consumer (idempotent)
        await self.js.add_consumer("PLACEMENT", config)
        self.psub = await self.js.pull_subscribe_bind(durable=config.durable_name, stream="PLACEMENT")

    async def on_withdrawn(self, m: Msg) -> None:
        try:
            p = parse_envelope(m.data).payload
        except InvalidEvent:
            return
        if isinstance(p, OfferWithdrawn):
            before = len(self.offers)
            self.offers = [o for o in self.offers if (o.vendor, o.node) != (p.vendor, p.node)]
            if len(self.offers) < before:
                log.info("%s/%s withdrawn: no longer offered", p.vendor, p.node)
            if (p.vendor, p.node) in self.in_flight:  # a heartbeat on its way publishes it again: undo that
                self.in_flight.discard((p.vendor, p.node))
                self.withdraw_again.append(p)

    async def serve(self) -> None:
        assert self.nc is not None
        while not self.nc.is_closed:  # nats-py's fetch can swallow a cancellation: stop on close too
            try:
                msgs = await self.psub.fetch(20, timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as e:
                log.warning("fetch failed: %s", e)
                await asyncio.sleep(1.0)
                continue
            for m in msgs:
                await self.on_assignment(m)

    async def on_assignment(self, m: Msg) -> None:
        try:
            env = parse_envelope(m.data)
            if isinstance(env.payload, WorkloadCancelRequested):
                await self.on_cancel(m, env)
                return
            if not isinstance(env.payload, WorkloadAssigned):
                raise InvalidEvent(f"expected WorkloadAssigned, got {env.type}")
        except InvalidEvent as e:
            log.error("bad assignment on %s: %s", m.subject, e)
            await m.term()
            return
        p: WorkloadAssigned = env.payload
        workdir = self.workdir(p.workload_id)
        taken = (workdir / ASSIGNMENT).exists() or (workdir / ENDED).exists()  # ENDED alone: cancelled first
        if p.workload_id not in self.running and not taken:
            # kept before the ack: a restarted agent knows what it had taken on
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / ASSIGNMENT).write_bytes(m.data)
            self.running[p.workload_id] = asyncio.create_task(self.run_workload(env))
        await m.ack()

    async def on_cancel(self, m: Msg, env: Envelope[Any]) -> None:
        """The workload's job was cancelled: stop it, so that it is reported failed with the message
        "cancelled" (its usage so far is paid); an assignment not taken on yet is never run."""
        p: WorkloadCancelRequested = env.payload
        task = self.running.get(p.workload_id)
        workdir = self.workdir(p.workload_id)
        if task is not None and not task.done():
            if p.workload_id not in self.cancelled:
                self.cancelled[p.workload_id] = asyncio.create_task(self.stop_cancelled(p.workload_id, task))
                log.info("workload %s: its job was cancelled (%s); stopping it", p.workload_id, p.reason)
        elif not (workdir / ASSIGNMENT).exists():
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / ENDED).write_text("cancelled")
        await m.ack()

    async def stop_cancelled(self, workload_id: UUID, task: asyncio.Task[None]) -> None:
        """Kill the workload's process session; its process may not be started yet, so try until it is
        killed or the workload ended on its own."""
        workdir = self.workdir(workload_id)
        while not task.done() and not stop_leftover(workdir):
            await asyncio.sleep(0.05)

    def cancelled_outcome(self, workload_id: UUID, outcome: Outcome) -> Outcome:
        """A workload killed because its job was cancelled ends with the message "cancelled"; one that
        succeeded before the kill stays a success."""
        if workload_id in self.cancelled and outcome.exit_code != 0:
            return dataclasses.replace(outcome, message="cancelled")
        return outcome

    def workdir(self, workload_id: UUID) -> Path:
        return self.settings.state_dir.resolve() / "workloads" / str(workload_id)

    async def recover(self) -> None:
        """Workloads a previous run of this agent took on but never reported ended: the agent died with
        them. Stop what is left of them and report them failed, so the job ends and its money settles."""
        root = self.settings.state_dir.resolve() / "workloads"
        for workdir in sorted(root.glob("*")) if root.exists() else []:
            if not (workdir / ASSIGNMENT).exists() or (workdir / ENDED).exists():
                continue
            assigned = parse_envelope((workdir / ASSIGNMENT).read_bytes())
            p: WorkloadAssigned = assigned.payload
            if p.vendor not in self.vendors:
                continue
            stopped = stop_leftover(workdir)
            seq = int((workdir / SEQ).read_text()) if (workdir / SEQ).exists() else None
            await self.publish(self._event(assigned, WorkloadReported(
                workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="failed",
                at=datetime.now(timezone.utc), message="the vendor agent restarted while the workload ran"
                + ("; its processes were stopped" if stopped else ""), last_usage_seq=seq), "report/end"))
            (workdir / ENDED).write_text("recovered")
            log.warning("workload %s was interrupted by an agent restart: reported failed", p.workload_id)

    @staticmethod
    def _event(assigned: Envelope[Any], payload: Payload, key: str) -> Envelope[Any]:
        """An event about an assigned workload: ids derive from the workload, so a re-sent report or
        sample is dropped by the stream; the job's trace goes on."""
        p: WorkloadAssigned = assigned.payload
        env = new_envelope(payload, source="agent", party=subjects.vendor_party(p.vendor), correlation_id=p.job_id,
                           id=uuid5(p.workload_id, key), causation_id=assigned.id)
        return env.model_copy(update={"traceparent": assigned.traceparent})

    async def run_workload(self, assigned: Envelope[Any]) -> None:
        p: WorkloadAssigned = assigned.payload
        vendor, wid = p.vendor, p.workload_id
        workdir = self.workdir(wid)
        seq = 0

        def ev(payload: Payload, key: str) -> Envelope[Any]:
            return self._event(assigned, payload, key)

        now = datetime.now(timezone.utc)
        await self.publish(ev(WorkloadReported(workload_id=wid, job_id=p.job_id, vendor=vendor, status="running",
                                               at=now), "report/running"))
        mounts = self.settings.mount_map()
        command = [map_path(a, mounts) for a in p.request.command]
        if command and command[0] in ("python3", "python"):
            command[0] = sys.executable  # the job's python3 is ours: same interpreter on every host
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "HOME": str(self.settings.state_dir),
               **{k: map_path(v, mounts) for k, v in p.request.env.items()}}
        timeout = max(1.0, (p.deadline - now).total_seconds())

        async def sample(u: Usage) -> None:
            nonlocal seq
            seq += 1
            await self.publish(ev(UsageSampled(workload_id=wid, job_id=p.job_id, vendor=vendor,
                                               tenant=p.request.tenant, seq=seq, at=datetime.now(timezone.utc),
                                               cpu_us=u.cpu_us, wall_us=u.wall_us, rss_peak_bytes=u.rss_peak_bytes,
                                               witness_cpu_us=u.witness_cpu_us,
                                               witness_rss_peak_bytes=u.witness_rss_peak_bytes),
                                  f"usage/{seq}"))
            (workdir / SEQ).write_text(str(seq))

        log.info("running workload %s of %s/%s on %s: %s", wid, p.request.tenant, p.request.name, vendor, command)
        outcome = await run_process(command, env, workdir, timeout, sample, self.settings.sample_interval_s)
        outcome = self.cancelled_outcome(wid, outcome)
        ok = outcome.exit_code == 0
        await self.publish(ev(WorkloadReported(
            workload_id=wid, job_id=p.job_id, vendor=vendor, status="succeeded" if ok else "failed",
            at=datetime.now(timezone.utc), exit_code=outcome.exit_code, message=outcome.message,
            last_usage_seq=seq or None), "report/end"))
        (workdir / ENDED).write_text(str(outcome.exit_code))
        log.info("workload %s ended: exit %s, cpu %.3f s, peak %d MiB", wid, outcome.exit_code,
                 outcome.usage.cpu_us / 1e6, outcome.usage.rss_peak_bytes // 2**20)


async def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s agent %(levelname)s %(message)s")
    agent = Agent(AgentSettings())
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(agent.serve()), asyncio.create_task(agent.heartbeat())]
    await stop.wait()
    for t in tasks + list(agent.running.values()):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert agent.nc is not None
    await agent.nc.close()  # everything is published synchronously; nothing left to drain


