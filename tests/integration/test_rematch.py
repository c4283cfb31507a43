"""Life after the match through the real bus: a workload that never started (its vendor gave it up, or its
node's heartbeats stopped) is booked again on another node and settles once, from the one hold the job has;
a job that cannot be booked again before its deadline expires and gets its money back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from clients.sdk.client import Exchange as Sdk
from clients.sdk.client import ExchangeError, WithdrawOutcome
from libs.common import subjects
from libs.common.envelope import Envelope, new_envelope, parse_envelope
from libs.common.events.agent import OfferWithdrawn, WorkloadReported
from libs.common.events.placement import WorkloadCancelRequested
from libs.common.ids import offer_id
from libs.common.localinfra import Infra
from tests.e2e.test_seed_job import offer, seed_manifest, submit
from tests.integration.test_bus_edges import dead_letters
from tests.integration.test_dead_letters import smctl
from tests.integration.test_replay import Vendor
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration

JOB = "my-first-sparkjob"
HOLD = 50_000_000  # the seed job holds its cap €50 x 1 DTU x 1 h
FUNDS = 1_000_000_000  # what the exchange fixture pays into the wallet


@pytest.fixture
def short_ttl(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Matching loses an offer not re-published for 2 s (before the exchange fixture reads its settings)."""
    monkeypatch.setenv("MATCHING_OFFER_TTL_S", "2")
    yield


def types(job: dict[str, Any]) -> list[str]:
    return [t["type"] for t in job["timeline"]]


async def give_up(ex: Exchange, assigned: Envelope[Any], why: str) -> None:
    """The vendor reports the workload failed before it ever ran (no running report, no usage)."""
    p = assigned.payload
    await ex.publish(new_envelope(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor,
                                                   status="failed", at=datetime.now(timezone.utc), message=why),
                                  source="agent", party=f"v-{p.vendor}", correlation_id=p.job_id))


async def money_back(ex: Exchange, spent: int = 0) -> None:
    async def check() -> bool:
        w = await ex.query("settlement", "wallet", tenant="xyz")
        return w["held_micro_eur"] == 0 and w["balance_micro_eur"] == FUNDS - spent
    await eventually(check, what="nothing held and the wallet back to what was paid in less what was spent")
    assert (await ex.query("settlement", "ledger_check"))["ok"]


async def test_a_workload_its_vendor_gives_up_before_it_starts_is_placed_on_another_node_and_settles_once(
        exchange: Exchange) -> None:
    await offer(exchange, "safespring", "n1", 38_000)
    await offer(exchange, "safespring", "n2", 40_000)  # the same vendor's other node: only n1 failed
    await offer(exchange, "elastx", "n1", 45_000)
    await exchange.wait_offers(3)
    await submit(exchange, seed_manifest())
    vendor = Vendor(exchange, "safespring")
    first = await vendor.assignment()
    assert first.payload.node == "n1"
    assert (await exchange.query("settlement", "wallet", tenant="xyz"))["held_micro_eur"] == HOLD
    await give_up(exchange, first, "image pull failed")

    second = await vendor.assignment()  # booked again: the cheapest node that did not fail it
    assert (second.payload.vendor, second.payload.node) == ("safespring", "n2")
    assert second.payload.workload_id != first.payload.workload_id
    assert (await exchange.query("settlement", "wallet", tenant="xyz"))["held_micro_eur"] == HOLD  # held once
    await vendor.run(second, [(1800, 3600, 1)])  # 0.5 DTU-h x €0.040 = €0.020000, fee 2.5 % = €0.000500
    job = await exchange.wait_status("xyz", JOB, "settled")
    assert (job["vendor"], job["node"], job["outcome"], job["total_micro_eur"]) == (
        "safespring", "n2", "finished", 20_500)
    [line] = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
    assert (line["vendor"], line["price_micro_eur_per_dtu_hour"], line["total_micro_eur"]) == (
        "safespring", 40_000, 20_500)
    await money_back(exchange, spent=20_500)
    journal = await exchange.query("settlement", "journal", tenant="xyz", name=JOB)
    assert [t["kind"] for t in journal["transfers"]].count("hold") == 1  # the hold moved; no second one
    workloads = sorted(await exchange.query("placement", "workloads"), key=lambda w: w["attempt"])
    assert [(w["attempt"], w["node"], w["status"]) for w in workloads] == [
        (1, "n1", "unplaced"), (2, "n2", "succeeded")]
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and "PlacementFailed" in types(job) and types(job).count("JobMatched") == 2
    offers = await exchange.query("matching", "offers")
    assert all(Decimal(str(o["free_vcpu"])) == Decimal(str(o["vcpu"])) for o in offers)  # nothing booked twice


async def booked_at_safespring(ex: Exchange) -> tuple[Envelope[Any], Any]:
    """The seed job assigned to safespring's n1 (elastx's n1 is dearer), and a pull subscription on what
    safespring is told to drop."""
    await offer(ex, "safespring", "n1", 38_000)
    await offer(ex, "elastx", "n1", 45_000)
    await ex.wait_offers(2)
    await submit(ex, seed_manifest())
    assigned = await Vendor(ex, "safespring").assignment()
    drops = await ex.js.pull_subscribe(subjects.workload_cancel_to("safespring"), durable="test-drop",
                                       stream="PLACEMENT")
    return assigned, drops


async def test_an_offer_whose_heartbeats_stop_loses_its_jobs_that_have_not_started_to_another_vendor(
        short_ttl: None, exchange: Exchange) -> None:
    lost, drops = await booked_at_safespring(exchange)  # it takes the job, then goes quiet without starting it
    elastx = Vendor(exchange, "elastx")
    rebooked: list[Envelope[Any]] = []

    async def heartbeat() -> None:  # elastx's agent re-publishes its offer; safespring's does not
        while not rebooked:
            await offer(exchange, "elastx", "n1", 45_000)
            await asyncio.sleep(0.5)
    beating = asyncio.create_task(heartbeat())
    try:
        rebooked.append(await elastx.assignment())
    finally:
        rebooked.append(None)  # type: ignore[arg-type]
        await beating
    second = rebooked[0]
    assert second.payload.job_id == lost.payload.job_id and second.payload.vendor == "elastx"
    # safespring is told to drop the workload, should it come back
    drop = parse_envelope((await drops.fetch(1, timeout=30))[0].data)
    assert isinstance(drop.payload, WorkloadCancelRequested) and drop.payload.workload_id == lost.payload.workload_id
    assert [o["vendor"] for o in await exchange.query("matching", "offers")] == ["elastx"]  # out of the book
    # its late word that it started changes nothing: the job runs at elastx
    await exchange.publish(new_envelope(WorkloadReported(
        workload_id=lost.payload.workload_id, job_id=lost.payload.job_id, vendor="safespring", status="running",
        at=datetime.now(timezone.utc)), source="agent", party="v-safespring", correlation_id=lost.payload.job_id))
    await elastx.run(second, [(1800, 3600, 1)])  # 0.5 DTU-h x €0.045 = €0.022500, fee €0.000562
    job = await exchange.wait_status("xyz", JOB, "settled")
    assert (job["vendor"], job["outcome"], job["total_micro_eur"]) == ("elastx", "finished", 23_063)
    await money_back(exchange, spent=23_063)
    statuses = {w["vendor"]: w["status"] for w in await exchange.query("placement", "workloads")}
    assert statuses == {"safespring": "unplaced", "elastx": "succeeded"}
    await offer(exchange, "safespring", "n1", 38_000)  # its heartbeat comes back: so does its offer
    await exchange.wait_offers(2)


async def test_a_withdrawn_offer_leaves_the_book_at_once_and_its_job_that_has_not_started_runs_elsewhere(
        exchange: Exchange, infra: Infra) -> None:
    first, drops = await booked_at_safespring(exchange)
    code, out = await smctl(infra, "vendor", "withdraw", "safespring", "n1", "--reason", "maintenance")
    assert code == 0 and "withdrew safespring/n1" in out, out
    assert [o["vendor"] for o in await exchange.query("matching", "offers")] == ["elastx"]  # out at once, no TTL
    second = await Vendor(exchange, "elastx").assignment()  # the job that had not started runs elsewhere
    assert second.payload.job_id == first.payload.job_id
    drop = parse_envelope((await drops.fetch(1, timeout=30))[0].data)
    assert isinstance(drop.payload, WorkloadCancelRequested) and drop.payload.workload_id == first.payload.workload_id
    assert "withdrawn by its vendor" in drop.payload.reason
    await Vendor(exchange, "elastx").run(second, [(1800, 3600, 1)])
    job = await exchange.wait_status("xyz", JOB, "settled")
    assert (job["vendor"], job["total_micro_eur"]) == ("elastx", 23_063)
    await money_back(exchange, spent=23_063)
    # a second withdrawal finds nothing to withdraw, and says so; an unknown node likewise
    code, out = await smctl(infra, "vendor", "withdraw", "safespring", "n1")
    assert code == 1 and "has no offer in the book" in out, out
    async with Sdk(infra.nats_url) as sdk:
        gone = await sdk.withdraw("safespring", "no-such-node")
        assert isinstance(gone, WithdrawOutcome) and not gone.withdrawn
        with pytest.raises(ExchangeError, match="node: ''"):
            await sdk.withdraw("safespring", "")
        with pytest.raises(ExchangeError, match="vendor: 'Not A Label'"):
            await sdk.withdraw("Not A Label", "n1")
    await offer(exchange, "safespring", "n1", 38_000)  # published again: back in the book
    await exchange.wait_offers(2)
    lost = [t for t in (await exchange.job("xyz", JOB))["timeline"] if t["type"] == "PlacementFailed"]
    assert lost and "withdrawn by its vendor" in lost[0]["detail"]


async def test_an_offer_withdrawn_by_another_vendor_is_dead_lettered_and_stays(exchange: Exchange) -> None:
    await offer(exchange, "elastx", "n1", 45_000)
    await exchange.wait_offers(1)
    forged = OfferWithdrawn(offer_id=offer_id("elastx", "n1"), vendor="elastx", node="n1")
    await exchange.publish(new_envelope(forged, source="agent", party="v-evil", correlation_id=forged.offer_id))
    [dl] = await eventually(lambda: dead_letters(exchange, "matching-inputs"), what="dead letter")
    assert "a vendor publishes and withdraws only its own offers" in dl.headers["Strongmoose-Error"]
    assert [o["vendor"] for o in await exchange.query("matching", "offers")] == ["elastx"]


async def test_a_job_that_cannot_be_booked_again_before_its_deadline_expires_and_gets_its_money_back(
        exchange: Exchange) -> None:
    await offer(exchange, "safespring", "n1", 38_000)
    await exchange.wait_offers(1)
    now = datetime.now(timezone.utc)
    await submit(exchange, seed_manifest(expectedDuration="5s", notAfter=(now + timedelta(seconds=8)).isoformat()),
                 at=now)
    vendor = Vendor(exchange, "safespring")
    await give_up(exchange, await vendor.assignment(), "no room after all")
    await exchange.wait_status("xyz", JOB, "placed", "matched")
    assert (await exchange.query("settlement", "wallet", tenant="xyz"))["held_micro_eur"] > 0  # waits, still held

    async def expired() -> Any:  # heartbeats move the market's clock past the last possible start
        await offer(exchange, "cheapcloud", "big", 1_000, region="eu-north-1")
        j = await exchange.job("xyz", JOB)
        return j if j and j["status"] == "expired" else await asyncio.sleep(0.3)
    job = await eventually(expired, what="the job to expire")
    assert job["outcome"] == "expired"
    await money_back(exchange)  # the hold returned whole: nothing ran
    await exchange.quiet()
    job = await exchange.job("xyz", JOB)
    assert job is not None and "PlacementFailed" in types(job) and types(job).count("JobMatched") == 1
    assert "ChargePosted" not in types(job)
    assert [w["status"] for w in await exchange.query("placement", "workloads")] == ["unplaced"]
