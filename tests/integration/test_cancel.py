"""Cancelling a job (`smctl cancel job NAME -n TENANT`) through every service on a real bus: before it
is matched, after it is matched but before it runs, while it runs (the real vendor agent kills it), twice,
and after it has ended (refused)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from clients.sdk.client import CancelOutcome
from clients.sdk.client import Exchange as Sdk
from libs.common import subjects
from libs.common.bus import Runtime
from libs.common.envelope import new_envelope, parse_envelope
from libs.common.events import subject_prefix
from libs.common.events.intake import JobCancelRefused
from libs.common.events.placement import WorkloadCancelRequested
from libs.common.events.sdk import JobCancelRequested
from libs.common.ids import job_id
from libs.common.localinfra import Infra
from tests.e2e.test_agent import serving_agent, submit_job
from tests.e2e.test_seed_job import assignment, offer, run_as_vendor, seed_manifest, submit
from tests.integration.test_dead_letters import smctl
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration

JOB = "my-first-sparkjob"
HOLD = 50_000_000  # the seed job holds its cap €50 x 1 DTU x 1 h


def types(job: dict[str, Any]) -> list[str]:
    return [t["type"] for t in job["timeline"]]


async def assert_nothing_held_and_capacity_free(exchange: Exchange) -> None:
    async def released() -> bool:
        wallet = await exchange.query("settlement", "wallet", tenant="xyz")
        offers = await exchange.query("matching", "offers")
        return wallet["held_micro_eur"] == 0 and all(
            Decimal(str(o["free_vcpu"])) == Decimal(str(o["vcpu"])) for o in offers)
    await eventually(released, what="no money held and every offer's capacity free")
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_a_job_cancelled_before_it_is_matched_leaves_the_book_and_nothing_is_held(
        exchange: Exchange, infra: Infra) -> None:
    await submit(exchange, seed_manifest())  # no offer yet: the job waits in the book
    await exchange.wait_status("xyz", JOB, "waiting")
    code, out = await smctl(infra, "cancel", "job", JOB, "-n", "xyz", "--reason", "changed my mind")
    assert code == 0 and f"job xyz/{JOB} cancelled (it was waiting): nothing ran, nothing is charged" in out, out
    job = await exchange.wait_status("xyz", JOB, "cancelled")
    assert job["outcome"] == "cancelled"
    assert "cancelled (it was waiting): changed my mind" in next(
        t["detail"] for t in job["timeline"] if t["type"] == "JobCancelled")
    # an offer that fits arrives: the cancelled job is no longer in the book to take it
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and job["status"] == "cancelled" and "JobMatched" not in types(job)
    assert await exchange.query("placement", "workloads") == []
    await assert_nothing_held_and_capacity_free(exchange)
    code, out = await smctl(infra, "get", "jobs", "-n", "xyz", "-o", "json")
    assert code == 0 and [j["status"] for j in json.loads(out)] == ["cancelled"], out


async def test_a_job_cancelled_after_it_is_matched_but_before_it_runs_is_dropped_and_pays_nothing(
        exchange: Exchange, infra: Infra) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await submit(exchange, seed_manifest())
    assigned = await assignment(exchange, "safespring")  # placed: its money is held, the vendor has it
    assert (await exchange.query("settlement", "wallet", tenant="xyz"))["held_micro_eur"] == HOLD
    async with Sdk(infra.nats_url) as sdk:
        outcome = await sdk.cancel("xyz", JOB)
    assert outcome == CancelOutcome(outcome.event_id, "xyz", JOB, True, previous_status="placed")
    # the vendor is told to drop the assignment
    stop = parse_envelope((await (await exchange.js.pull_subscribe(
        subjects.workload_cancel_to("safespring"), durable="test-cancel", stream="PLACEMENT")).fetch(1, timeout=30))[0]
        .data)
    assert isinstance(stop.payload, WorkloadCancelRequested)
    assert stop.payload.workload_id == assigned.payload.workload_id and stop.party == "v-safespring"
    [workload] = await exchange.query("placement", "workloads")
    assert workload["status"] == "cancelled"
    await assert_nothing_held_and_capacity_free(exchange)  # the hold is voided, the reservation released
    # the vendor's late word that it started changes nothing
    await run_as_vendor(exchange, assigned, [(1800, 3600, 1)])
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and (job["status"], job["outcome"], job["total_micro_eur"]) == (
        "cancelled", "cancelled", None)
    assert "WorkloadCancelled" in types(job) and "WorkloadStarted" not in types(job)
    assert (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"] == []
    await assert_nothing_held_and_capacity_free(exchange)


async def test_a_job_cancelled_before_its_money_is_held_is_never_assigned(exchange: Exchange, infra: Infra) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    settlement = exchange.runtimes["settlement"]
    await settlement.stop()  # the match waits for its hold
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", JOB, "matched")
    async with Sdk(infra.nats_url) as sdk:
        outcome = await sdk.cancel("xyz", JOB)
    assert isinstance(outcome, CancelOutcome) and outcome.previous_status == "matched"
    restarted = Runtime(settlement.service, infra.nats_url, infra.database_url, batch_size=100)
    exchange.runtimes["settlement"] = restarted
    await restarted.start()  # the hold comes now: placement cancels it instead of assigning it
    [workload] = await eventually(lambda: exchange.query("placement", "workloads"), what="the workload")
    assert workload["status"] == "cancelled"
    await assert_nothing_held_and_capacity_free(exchange)
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and job["status"] == "cancelled"
    assert "WorkloadCancelled" in types(job) and "WorkloadAssigned" not in types(job)


async def test_a_running_job_cancelled_is_stopped_by_the_agent_and_pays_only_for_what_it_used(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    async with serving_agent(exchange, infra, tmp_path, "safespring"):
        await submit_job(exchange, "long", command=[
            "python3", "-c", "import time\nsum(i * i for i in range(6_000_000))\ntime.sleep(120)"])
        await exchange.wait_status("xyz", "long", "running")

        async def busy() -> Any:
            meters = await exchange.query("metering", "meters")
            return meters and meters[0]["cpu_us"] >= 200_000
        await eventually(busy, what="the workload to have used some CPU")
        [workload] = await exchange.query("placement", "workloads")
        pid = int((tmp_path / "workloads" / workload["workload_id"] / "pid").read_text())
        code, out = await smctl(infra, "cancel", "job", "long", "-n", "xyz")
        assert code == 0 and "job xyz/long cancelled while running: its vendor stops it" in out, out

        async def settled() -> Any:  # intake hears placement and settlement on separate consumers: wait for both
            j = await exchange.job("xyz", "long")
            return j if j and {"ChargePosted", "WorkloadFailed"} <= set(types(j)) and j["total_micro_eur"] is not None \
                else None
        job = await eventually(settled, what="the cancelled job's charge")
        assert (job["status"], job["outcome"]) == ("cancelled", "cancelled")
        assert next(t["detail"] for t in job["timeline"] if t["type"] == "WorkloadFailed") == "failed: cancelled"
        assert "MeterClosed" in types(job)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        [line] = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
        assert 0 < line["total_micro_eur"] == job["total_micro_eur"]
        [meter] = await exchange.query("metering", "meters")
        assert meter["wall_us"] < 60 * 10**6  # stopped long before its two minutes of sleep
        await assert_nothing_held_and_capacity_free(exchange)


async def test_cancelling_twice_changes_nothing_the_second_time(exchange: Exchange, infra: Infra) -> None:
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", JOB, "waiting")
    code, _ = await smctl(infra, "cancel", "job", JOB, "-n", "xyz")
    assert code == 0
    code, out = await smctl(infra, "cancel", "job", JOB, "-n", "xyz")
    assert code == 0 and f"job xyz/{JOB} is cancelled already; nothing changed" in out, out
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and job["status"] == "cancelled"
    assert types(job).count("JobCancelled") == 1 and types(job).count("JobCancelRepeated") == 1
    intake = await exchange.js.stream_info("INTAKE")
    cancels = [parse_envelope((await exchange.js.get_msg("INTAKE", seq)).data).type
               for seq in range(intake.state.first_seq, intake.state.last_seq + 1)]
    assert cancels.count("JobCancelled") == 1


async def test_cancelling_a_finished_job_or_one_that_does_not_exist_is_refused(
        exchange: Exchange, infra: Infra) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await submit(exchange, seed_manifest())
    await run_as_vendor(exchange, await assignment(exchange, "safespring"), [(1800, 3600, 1)])
    await exchange.wait_status("xyz", JOB, "settled")
    code, out = await smctl(infra, "cancel", "job", JOB, "-n", "xyz")
    assert code == 1, out
    assert (f"error: cannot cancel: job xyz/{JOB} has ended (status settled); only a job that has not ended can "
            "be cancelled") in " ".join(out.split()), out
    code, out = await smctl(infra, "cancel", "job", "nothing", "-n", "xyz")
    assert code == 1 and "error: cannot cancel: no job xyz/nothing" in out, out
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and (job["status"], job["outcome"]) == ("settled", "finished")
    assert "JobCancelRefused" in types(job) and "JobCancelled" not in types(job)
    assert await exchange.job("xyz", "nothing") is None  # a refusal does not make a job appear


async def test_a_tenant_cannot_cancel_another_tenants_job(exchange: Exchange) -> None:
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", JOB, "waiting")
    refused: list[Any] = []

    async def on_refusal(msg: Any) -> None:
        refused.append(parse_envelope(msg.data))
    async def answered() -> list[Any]:
        return refused
    sub = await exchange.nc.subscribe(f"{subject_prefix(JobCancelRefused)}.t-evil", cb=on_refusal)
    await exchange.publish(new_envelope(JobCancelRequested(tenant="xyz", name=JOB), source="sdk", party="t-evil",
                                        correlation_id=job_id("xyz", JOB)))
    try:
        await eventually(answered, what="the refusal")
    finally:
        await sub.unsubscribe()
    assert isinstance(refused[0].payload, JobCancelRefused)
    assert refused[0].payload.reason == "tenant 'xyz' is not the requesting tenant (t-evil)"
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and job["status"] == "waiting"
