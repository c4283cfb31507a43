"""Sharing the markets through the real bus: fair share between tenants when capacity is scarce, a periodic
market whose call auction assigns the jobs of one interval together, and two matching instances that each
own their markets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from libs.common.bus import Runtime
from libs.common.envelope import new_envelope, parse_envelope
from libs.common.events.agent import OfferPublished
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from libs.common.localinfra import Infra
from services.matching.app import create_service
from services.matching.settings import MatchingSettings
from tests.support import Exchange, eventually

pytestmark = [pytest.mark.integration]

H = timedelta(hours=1)


def manifest(tenant: str, name: str, cpu: int = 4, region: str = "Sweden") -> dict[str, Any]:
    """A 2 h job due in 3 h: a node holds one such run before the deadline."""
    return {
        "apiVersion": "strongmoose.dsoderlund.consulting/v1alpha1", "kind": "job",
        "metadata": {"name": name, "namespace": tenant},
        "spec": {"image": "python:3.11-slim", "notAfter": (datetime.now(timezone.utc) + 3 * H).isoformat(),
                 "maxEuroPerDTU": "0.05", "scriptPath": "/job.py", "restrictions": {"region": region},
                 "resources": {"cpu": cpu, "memory": f"{cpu * 4}Gi"}, "expectedDuration": "2h"},
    }


async def publish_offer(ex: Exchange, node: str, vcpu: int = 4, price: int = 40_000) -> None:
    oid = offer_id("elastx", node)
    now = datetime.now(timezone.utc)
    await ex.publish(new_envelope(OfferPublished(
        offer_id=oid, vendor="elastx", node=node, region="se-sto", country="Sweden", eu=True, vcpu=Decimal(vcpu),
        memory_gib=Decimal(vcpu * 4), price_micro_eur_per_dtu_hour=price, available_from=now - H,
        available_until=now + 48 * H), source="agent", party="v-elastx", correlation_id=oid))


async def submit(ex: Exchange, doc: dict[str, Any]) -> None:
    md = doc["metadata"]
    await ex.publish(new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{md['namespace']}",
                                  correlation_id=job_id(md["namespace"], md["name"])))


async def matching_status(ex: Exchange, tenant: str, name: str, *statuses: str) -> dict[str, Any]:
    async def check() -> Any:
        got = await ex.query("matching", "explain", tenant=tenant, name=name)
        return got if got and got["status"] in statuses else None
    return await eventually(check, what=f"{tenant}/{name} {statuses} in matching")


async def matched(ex: Exchange, tenant: str, name: str) -> Any:
    async def get() -> Any:
        try:
            msg = await ex.js.get_last_msg("MATCHING", f"matching.job.matched.t-{tenant}")
        except Exception:
            return None
        env = parse_envelope(msg.data)
        return env if env.payload.request.name == name else None
    return (await eventually(get, what=f"{tenant}/{name} matched")).payload


async def test_a_tenant_flooding_the_market_does_not_starve_a_later_tenant(exchange: Exchange) -> None:
    await exchange.deposit("abc", 100_000_000)
    await publish_offer(exchange, "n1")
    await exchange.wait_offers(1)
    for i in range(4):  # tenant xyz floods: one job gets the node, three wait
        await submit(exchange, manifest("xyz", f"flood-{i}"))
    await matching_status(exchange, "xyz", "flood-0", "matched")
    for i in range(1, 4):
        await matching_status(exchange, "xyz", f"flood-{i}", "waiting")
    await submit(exchange, manifest("abc", "later"))  # tenant abc comes after the whole backlog
    await matching_status(exchange, "abc", "later", "waiting")

    await publish_offer(exchange, "n2")  # capacity for one more job: the tenant that used less gets it
    got = await matched(exchange, "abc", "later")
    assert got.node == "n2"
    for i in range(1, 4):
        assert (await matching_status(exchange, "xyz", f"flood-{i}", "waiting", "matched"))["status"] == "waiting"
    await exchange.quiet()


@pytest.fixture
def periodic_se_sto(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """se-sto is cleared every 5 s (before the exchange fixture reads its settings)."""
    monkeypatch.setenv("MATCHING_PERIODIC_MARKETS", "se-sto=5")
    yield 5


async def test_a_periodic_market_assigns_the_jobs_of_one_interval_together(periodic_se_sto: int,
                                                                         exchange: Exchange) -> None:
    # an 8 vCPU node at €0.030 and a 4 vCPU one at €0.040; a small job comes first, then a big one. Continuous
    # matching gives the small job the cheap big node, and the big one then fits nowhere before its deadline;
    # the call auction fills both: the small job on the small node, the big one on the big node.
    interval = periodic_se_sto
    await publish_offer(exchange, "big", vcpu=8, price=30_000)
    await publish_offer(exchange, "small", vcpu=4, price=40_000)
    await exchange.wait_offers(2)
    await asyncio.sleep(interval - time.time() % interval + 0.05)  # the start of a round: both jobs land in it
    await submit(exchange, manifest("xyz", "small-job", cpu=4, region="se-sto"))
    await submit(exchange, manifest("xyz", "big-job", cpu=8, region="se-sto"))
    await submit(exchange, manifest("xyz", "huge-job", cpu=16, region="se-sto"))  # fits no node
    for name in ("small-job", "big-job"):  # they wait for the round, however much is free
        assert (await matching_status(exchange, "xyz", name, "waiting", "matched"))["status"] == "waiting"

    await asyncio.sleep(interval - time.time() % interval + 0.05)  # the round is over ...
    await publish_offer(exchange, "small", vcpu=4, price=40_000)  # ... and the next heartbeat clears it
    small = await matching_status(exchange, "xyz", "small-job", "matched")
    big = await matching_status(exchange, "xyz", "big-job", "matched")
    assert (small["booked"]["node"], big["booked"]["node"]) == ("small", "big")
    # the job the round could not fill is told why, once, as a continuous market tells it on arrival
    async def unfilled() -> Any:
        msg = await exchange.js.get_last_msg("MATCHING", "matching.job.unmatchable.t-xyz")
        return parse_envelope(msg.data).payload
    why = await eventually(unfilled, what="huge-job's JobUnmatchable")
    assert why.name == "huge-job" and [(r.constraint, r.excluded) for r in why.reasons] == [("resources", 2)], why
    await exchange.quiet()


async def test_two_instances_each_own_their_markets(infra: Infra, exchange: Exchange) -> None:
    """Scale-out: matching for se-sto and matching for fi-hel side by side, each on its own schema and durable
    consumers, each with only its market's offers and jobs (the exchange's all-markets instance is stopped)."""
    await exchange.runtimes.pop("matching").stop()
    schemas = {m: f"{exchange.schemas['matching']}_{m.replace('-', '_')}" for m in ("se-sto", "fi-hel")}
    runtimes = [Runtime(create_service(MatchingSettings(matching_schema=schema, matching_markets=market)),
                        infra.nats_url, infra.database_url, batch_size=100) for market, schema in schemas.items()]
    try:
        for rt in runtimes:
            await rt.start()
        for node, region, country in (("sto", "se-sto", "Sweden"), ("hel", "fi-hel", "Finland")):
            oid = offer_id("elastx", node)
            now = datetime.now(timezone.utc)
            await exchange.publish(new_envelope(OfferPublished(
                offer_id=oid, vendor="elastx", node=node, region=region, country=country, eu=True,
                vcpu=Decimal(8), memory_gib=Decimal(32), price_micro_eur_per_dtu_hour=40_000,
                available_from=now - H, available_until=now + 48 * H), source="agent", party="v-elastx",
                correlation_id=oid))
        await submit(exchange, manifest("xyz", "in-sweden", region="se-sto"))
        await submit(exchange, manifest("xyz", "in-finland", region="fi-hel"))
        for name, node in (("in-sweden", "sto"), ("in-finland", "hel")):
            job = await exchange.wait_status("xyz", name, "matched", "placed")
            assert job["node"] == node

        con = await asyncpg.connect(infra.database_url)
        try:
            for market, schema in schemas.items():
                offers = await con.fetch(f"SELECT region FROM {schema}.offers")
                rows = await con.fetch(f"SELECT name, status FROM {schema}.pending_jobs")
                jobs = {r["name"]: r["status"] for r in rows}
                assert [r["region"] for r in offers] == [market]
                mine, theirs = ("in-sweden", "in-finland") if market == "se-sto" else ("in-finland", "in-sweden")
                assert jobs == {mine: "matched", theirs: "elsewhere"}
        finally:
            await con.close()
        consumers = {c.name for c in await exchange.js.consumers_info("MATCHING_IN")}
        assert {"matching-inputs-se-sto", "matching-inputs-fi-hel"} <= consumers
    finally:
        for rt in runtimes:
            await rt.stop()
        con = await asyncpg.connect(infra.database_url)
        try:
            for schema in schemas.values():
                await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await con.close()
