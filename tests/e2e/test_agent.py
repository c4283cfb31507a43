"""The real vendor agent: offers from the catalogs, a real local process, measured usage, settled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from clients.agent.agent import Agent
from clients.agent.settings import AgentSettings
from libs.common.envelope import new_envelope
from libs.common.events.agent import OfferWithdrawn
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from libs.common.localinfra import Infra
from tests.support import Exchange, eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@asynccontextmanager
async def serving_agent(exchange: Exchange, infra: Infra, state_dir: Path, vendors: str) -> AsyncIterator[Agent]:
    """A real vendor agent serving in this event loop, its offers in matching's book before any job comes."""
    agent = Agent(AgentSettings(nats_url=infra.nats_url, vendors=vendors, state_dir=state_dir,
                                heartbeat_s=3600, sample_interval_s=0.1))
    await agent.start()
    serving = asyncio.create_task(agent.serve())
    await exchange.wait_offers(len(agent.offers))  # continuous matching: the book must hold them all first
    try:
        yield agent
    finally:
        serving.cancel()
        assert agent.nc is not None
        await agent.nc.close()


async def submit_job(exchange: Exchange, name: str, **spec: object) -> None:
    doc = {"apiVersion": "strongmoose.dsoderlund.consulting/v1alpha1", "kind": "job",
           "metadata": {"name": name, "namespace": "xyz"},
           "spec": {"notAfter": (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat(), "maxEuroPerDTU": 1,
                    **spec}}
    await exchange.publish(new_envelope(JobSubmitted(manifest=doc), source="sdk", party="t-xyz",
                                        correlation_id=job_id("xyz", name)))


async def test_the_agent_runs_a_job_as_a_process_and_its_measured_usage_is_charged(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    async with serving_agent(exchange, infra, tmp_path, "elastx,safespring"):
        await submit_job(exchange, "squares", expectedDuration="10m", env={"N": "42"},
                         restrictions={"region": "Sweden"},
                         command=["python3", "-c",
                                  "import os; print(sum(i * i for i in range(4_000_000)), os.environ['N'])"])
        job = await exchange.wait_status("xyz", "squares", "settled", timeout=60)
        assert job["outcome"] == "finished" and job["vendor"] == "safespring"
        [meter] = await exchange.query("metering", "meters")
        assert meter["cpu_us"] > 50_000  # the process really computed
        assert meter["samples"] >= 1
        [workload] = await exchange.query("placement", "workloads")
        out = (tmp_path / "workloads" / workload["workload_id"] / "stdout.log").read_text()
        assert out.split() == [str(sum(i * i for i in range(4_000_000))), "42"]
        assert job["total_micro_eur"] > 0
        assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_a_job_whose_process_fails_is_reported_failed_and_still_settles(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    async with serving_agent(exchange, infra, tmp_path, "safespring"):
        await submit_job(exchange, "broken", command=["python3", "-c", "raise SystemExit('no input')"])
        job = await exchange.wait_status("xyz", "broken", "settled", timeout=60)
        assert job["outcome"] == "failed"
        failed = next(t for t in job["timeline"] if t["type"] == "WorkloadFailed")
        assert "exit code 1" in failed["detail"] and "no input" in failed["detail"]
        assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_a_workload_interrupted_by_an_agent_crash_is_stopped_and_reported_failed_on_restart(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    first = Agent(AgentSettings(nats_url=infra.nats_url, vendors="safespring", state_dir=tmp_path,
                                heartbeat_s=3600, sample_interval_s=0.1))
    await first.start()
    serving = asyncio.create_task(first.serve())
    await submit_job(exchange, "long", command=["python3", "-c", "import time; time.sleep(120)"])
    await exchange.wait_status("xyz", "long", "running")
    [workload] = await exchange.query("placement", "workloads")
    pid = int((tmp_path / "workloads" / workload["workload_id"] / "pid").read_text())
    # the agent dies: its tasks stop without a word, its nats connection drops, the process lives on
    serving.cancel()
    for task in first.running.values():
        task.cancel()
    assert first.nc is not None
    await first.nc.close()
    assert psutil.pid_exists(pid)

    second = Agent(AgentSettings(nats_url=infra.nats_url, vendors="safespring", state_dir=tmp_path,
                                 heartbeat_s=3600, sample_interval_s=0.1))
    await second.start()  # recovers before it serves
    try:
        job = await exchange.wait_status("xyz", "long", "settled")
        assert job["outcome"] == "failed"
        failed = next(t for t in job["timeline"] if t["type"] == "WorkloadFailed")
        assert "agent restarted" in failed["detail"] and "stopped" in failed["detail"]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert (await exchange.query("settlement", "ledger_check"))["ok"]
        offers = await exchange.query("matching", "offers", vendor="safespring")
        assert all(Decimal(str(o["free_vcpu"])) == Decimal(str(o["vcpu"])) for o in offers)  # capacity returned
    finally:
        assert second.nc is not None
        await second.nc.close()


async def test_a_node_withdrawn_while_a_heartbeat_is_on_its_way_does_not_come_back(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    async with serving_agent(exchange, infra, tmp_path, "safespring") as agent:
        assert agent.js is not None
        gone = agent.offers[0]
        publish_async = agent.js.publish_async
        withdrawn = False

        async def withdraw_first(*args: Any, **kw: Any) -> Any:  # the withdrawal overtakes the heartbeat
            nonlocal withdrawn
            if not withdrawn:
                withdrawn = True
                oid = offer_id(gone.vendor, gone.node)
                await exchange.publish(new_envelope(
                    OfferWithdrawn(offer_id=oid, vendor=gone.vendor, node=gone.node), source="sdk",
                    party=f"v-{gone.vendor}", correlation_id=oid))

                async def heard() -> bool:
                    return gone not in agent.offers
                await eventually(heard, what="the agent to hear of the withdrawal")
            return await publish_async(*args, **kw)
        agent.js.publish_async = withdraw_first  # type: ignore[method-assign]
        await agent.publish_offers()  # the heartbeat publishes the node after its withdrawal ...
        await exchange.quiet()
        book = {o["node"] for o in await exchange.query("matching", "offers", vendor=gone.vendor)}
        assert gone.node not in book and len(book) == len(agent.offers)  # ... and withdraws it again
