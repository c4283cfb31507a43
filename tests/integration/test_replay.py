"""Operator replay: each service rebuilt from its input streams into a fresh schema equals its live state,
publishes nothing and moves no durable consumer; a replay from a later point builds only what follows."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import yaml
from typer.testing import CliRunner

from libs.common import subjects
from libs.common.digest import differing_tables
from libs.common.envelope import Envelope, new_envelope, parse_envelope
from libs.common.events.agent import OfferPublished, UsageSampled, WorkloadReported
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from libs.common.localinfra import Infra
from libs.common.replay import ReplayReport, drop_schema, load_service, replay
from libs.common.streams import ALL_STREAMS
from tests.support import REPO, Exchange

pytestmark = [pytest.mark.integration]

SERVICES = ("intake", "matching", "placement", "metering", "settlement")
SEED = yaml.safe_load((REPO / "examples" / "seed-job.yaml").read_text())
T0 = datetime.now(timezone.utc).replace(microsecond=0)
GIB = 2**30


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEED)
    doc["metadata"]["name"] = name
    doc["spec"]["notAfter"] = (T0 + timedelta(hours=6)).isoformat()
    doc["spec"].update(spec)
    return doc


async def offer(ex: Exchange, vendor: str, node: str, price: int, region: str = "se-sto") -> None:
    oid = offer_id(vendor, node)
    await ex.publish(new_envelope(OfferPublished(
        offer_id=oid, vendor=vendor, node=node, region=region, country="Sweden", eu=True, vcpu=Decimal(4),
        memory_gib=Decimal(16), price_micro_eur_per_dtu_hour=price, available_from=T0 - timedelta(hours=1),
        available_until=T0 + timedelta(days=2)), source="agent", party=f"v-{vendor}", correlation_id=oid, time=T0))


async def submit(ex: Exchange, doc: dict[str, Any]) -> int:
    """Submit a manifest; returns its sequence in the SDK stream."""
    md = doc["metadata"]
    env = new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{md['namespace']}",
                       correlation_id=job_id(md["namespace"], md["name"]))
    ack = await ex.js.publish(subjects.subject_for(env), env.to_bytes(), headers={"Nats-Msg-Id": str(env.id)})
    return ack.seq


class Vendor:
    """This test acting as a vendor: takes its assignments and reports by hand."""

    def __init__(self, ex: Exchange, name: str):
        self.ex, self.name, self.sub = ex, name, None

    async def assignment(self) -> Envelope[Any]:
        if self.sub is None:
            self.sub = await self.ex.js.pull_subscribe(subjects.workload_assigned_to(self.name),
                                                       durable=f"test-{self.name}", stream="PLACEMENT")
        msgs = await self.sub.fetch(1, timeout=60)
        await msgs[0].ack()
        return parse_envelope(msgs[0].data)

    async def run(self, assigned: Envelope[Any], samples: list[tuple[int, int, int]], ok: bool = True) -> None:
        """Running, cumulative samples (cpu s, wall s, peak GiB), then succeeded or failed."""
        p = assigned.payload
        party = f"v-{p.vendor}"

        async def report(payload: Any) -> None:
            await self.ex.publish(new_envelope(payload, source="agent", party=party, correlation_id=p.job_id))
        await report(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="running",
                                      at=T0))
        for seq, (cpu_s, wall_s, gib) in enumerate(samples, start=1):
            await report(UsageSampled(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor,
                                      tenant=p.request.tenant, seq=seq, at=T0 + timedelta(seconds=wall_s),
                                      cpu_us=cpu_s * 10**6, wall_us=wall_s * 10**6, rss_peak_bytes=gib * GIB))
        # the usage is charged as it goes (MeterProgressed) before the end is reported: settlement reads
        # those readings and MeterClosed on two consumers, so live could apply them in either order, and a
        # replay applies them in stream order (see the README on replay: an order dependence)
        await self.ex.quiet()
        await report(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor,
                                      status="succeeded" if ok else "failed", at=T0 + timedelta(seconds=samples[-1][1]),
                                      exit_code=0 if ok else 3, last_usage_seq=len(samples)))


async def demo_flow(ex: Exchange) -> dict[str, int]:
    """Offers; a job that runs and settles, one that fails, one that waits (price cap), one rejected, a
    resubmission, a poison message and a duplicate under a fresh message id. Returns SDK seqs by job."""
    seqs: dict[str, int] = {}
    await offer(ex, "safespring", "std-4c-16g", 38_000)
    await offer(ex, "elastx", "std-4c-16g", 45_000)
    await offer(ex, "cheapcloud", "big", 1_000, region="eu-north-1")  # Sweden, but not on the allow-list
    await ex.wait_offers(3)
    await ex.js.publish("sdk.job.submitted.t-xyz", b"{not json", headers={"Nats-Msg-Id": "poison-1"})
    vendor = Vendor(ex, "safespring")
    seqs["a"] = await submit(ex, manifest("a"))
    await vendor.run(await vendor.assignment(), [(1800, 3600, 1), (5400, 7200, 2)])
    await ex.wait_status("xyz", "a", "settled")
    seqs["b"] = await submit(ex, manifest("b"))
    await vendor.run(await vendor.assignment(), [(600, 1200, 1)], ok=False)
    seqs["c"] = await submit(ex, manifest("c", maxEuroPerDTU="0.01"))
    seqs["d"] = await submit(ex, manifest("d", maxEuroPerDTU="lots"))
    await submit(ex, manifest("a"))  # the same job again: nothing new
    await ex.wait_status("xyz", "b", "settled")
    await ex.wait_status("xyz", "c", "waiting")
    await ex.wait_status("xyz", "d", "rejected")
    # a vendor's report delivered again under a fresh message id: the same event, applied once
    agent = await ex.js.stream_info("AGENT")
    again = await ex.js.get_msg("AGENT", agent.state.last_seq)
    await ex.js.publish(again.subject, again.data, headers={"Nats-Msg-Id": str(uuid4())})
    await ex.quiet()
    return seqs


async def stream_totals(ex: Exchange) -> dict[str, int]:
    return {name: (await ex.js.stream_info(name)).state.last_seq for name in ALL_STREAMS}


async def consumer_positions(ex: Exchange) -> dict[str, tuple[int, int]]:
    """Every consumer on the streams (the replay's own are gone when it ends) and where it stands."""
    out = {}
    for name in ALL_STREAMS:
        for c in await ex.js.consumers_info(name):
            out[c.name] = (c.delivered.stream_seq, c.ack_floor.stream_seq)
    return out


async def rebuild(ex: Exchange, infra: Infra, service: str, suffix: str = "replay", **kw: Any) -> ReplayReport:
    schema = f"{ex.schemas[service]}_{suffix}"
    await drop_schema(infra.database_url, schema)
    return await replay(load_service(service, schema), nats_url=infra.nats_url, database_url=infra.database_url,
                        **kw)


async def row_diff(database_url: str, live: str, rebuilt: str, tables: list[str]) -> dict[str, Any]:
    """For a failure message: the rows only one of the two schemas has, per table."""
    con = await asyncpg.connect(database_url)
    try:
        out = {}
        for t in tables:
            a = {r[0] for r in await con.fetch(f"SELECT to_jsonb(x)::text FROM {live}.{t} x")}
            b = {r[0] for r in await con.fetch(f"SELECT to_jsonb(x)::text FROM {rebuilt}.{t} x")}
            out[t] = {"live only": sorted(a - b), "replay only": sorted(b - a)}
        return out
    finally:
        await con.close()


async def test_each_service_replayed_into_a_fresh_schema_equals_its_live_state(exchange: Exchange,
                                                                               infra: Infra) -> None:
    await demo_flow(exchange)
    streams_before, consumers_before = await stream_totals(exchange), await consumer_positions(exchange)
    reports: dict[str, ReplayReport] = {}
    try:
        for service in SERVICES:
            reports[service] = await rebuild(exchange, infra, service)
            live = await exchange.query(service, "digest")
            rebuilt = await exchange.query(service, "digest", schema=reports[service].schema)
            differ = differing_tables(live, rebuilt)
            assert differ == [], (service, reports[service], await row_diff(
                infra.database_url, exchange.schemas[service], reports[service].schema, differ))
            assert rebuilt["sha256"] == live["sha256"]
            assert sum(t["rows"] for t in live["tables"].values()) > 0, live
        # nothing was published, no durable consumer moved, and the replays' consumers are gone
        assert await stream_totals(exchange) == streams_before
        assert await consumer_positions(exchange) == consumers_before
        intake = reports["intake"]
        assert intake.invalid == 1  # the poison message, which live dead-lettered
        assert reports["placement"].duplicates == 1  # the report delivered twice
        assert sum(r.emitted for r in reports.values()) > 0  # emitted into the replay outboxes only
        assert all(r.failed == 0 and r.refused == 0 for r in reports.values()), reports
        for r in reports.values():
            assert r.events_per_s > 0
    finally:
        for r in reports.values():
            await drop_schema(infra.database_url, r.schema)


async def jobs_in(database_url: str, schema: str) -> dict[str, dict[str, Any]]:
    con = await asyncpg.connect(database_url)
    try:
        return {r["name"]: dict(r) for r in await con.fetch(f"SELECT * FROM {schema}.jobs")}
    finally:
        await con.close()


async def test_a_replay_from_a_later_point_rebuilds_only_what_follows(exchange: Exchange, infra: Infra) -> None:
    seqs = await demo_flow(exchange)
    schemas = []
    try:
        # from job b's submission on: jobs submitted before it are unknown, and facts about them are ignored
        r = await rebuild(exchange, infra, "intake", from_seq={"SDK": seqs["b"]})
        schemas.append(r.schema)
        live = await jobs_in(infra.database_url, exchange.schemas["intake"])
        partial = await jobs_in(infra.database_url, r.schema)
        # d was rejected (a timeline, no job row); a's resubmission after b is, to this replay, a's first
        # submission: a is accepted again, then its facts (older) are ignored as those of an unknown job
        assert sorted(partial) == ["a", "b", "c"]
        assert partial["a"]["submitted_at"] > live["a"]["submitted_at"] and partial["a"]["status"] == "accepted"
        for name in ("b", "c"):
            assert partial[name] == live[name]  # what it rebuilds, it rebuilds exactly
        assert r.streams["intake-job-submitted"][0] == seqs["b"]

        # the same cut by time: the SDK stream stored b's submission at this time
        b_time = (await exchange.js.get_msg("SDK", seqs["b"])).time
        r = await rebuild(exchange, infra, "intake", suffix="by_time", from_time=b_time)
        schemas.append(r.schema)
        by_time = await jobs_in(infra.database_url, r.schema)
        assert sorted(by_time) == ["a", "b", "c"] and by_time["b"] == live["b"]

        # settlement without the matches before job b: a meter closing for a job it holds no money for fails
        # as it would live (retried, then dead-lettered); the rest goes through
        r = await rebuild(exchange, infra, "settlement", suffix="partial", from_seq={"MATCHING": 10**6})
        schemas.append(r.schema)
        assert r.failed >= 1 and r.applied > 0
        assert any("MeterClosed" in e for e in r.errors)

        # beyond the end of every stream: nothing to read, empty tables
        r = await rebuild(exchange, infra, "placement", suffix="empty", from_seq=10**6)
        schemas.append(r.schema)
        assert r.events == 0
        digest = await exchange.query("placement", "digest", schema=r.schema)
        assert all(t["rows"] == 0 for t in digest["tables"].values())
    finally:
        for s in schemas:
            await drop_schema(infra.database_url, s)


async def test_a_replay_into_an_existing_schema_is_refused(exchange: Exchange, infra: Infra) -> None:
    from libs.common.replay import ReplayError

    with pytest.raises(ReplayError, match="exists already"):
        await replay(load_service("intake", exchange.schemas["intake"]), nats_url=infra.nats_url,
                     database_url=infra.database_url)


async def test_a_service_digests_its_replays_but_no_other_schema(exchange: Exchange) -> None:
    with pytest.raises(AssertionError, match="digests its schema"):
        await exchange.query("intake", "digest", schema=exchange.schemas["settlement"])


async def smctl(*args: str) -> Any:
    from clients.smctl.main import app

    # smctl runs its own event loop: in a thread, while the services keep running in this one
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def test_smctl_replays_a_service_and_compares_digests(exchange: Exchange, infra: Infra) -> None:
    await demo_flow(exchange)
    replica = f"{exchange.schemas['settlement']}_smctl"
    try:
        result = await smctl("--nats-url", infra.nats_url, "ops", "replay", "settlement", "--schema", replica,
                             "--database-url", infra.database_url)
        assert result.exit_code == 0, result.output
        out = result.output
        assert "events/s" in out and "invalid 0" in out
        assert "state: replay equals live" in out, out
        assert f"kept schema {replica}" in out

        result = await smctl("--nats-url", infra.nats_url, "ops", "digest", "settlement", "--against", replica)
        assert result.exit_code == 0, result.output
        assert "state: against equals live" in result.output

        result = await smctl("--nats-url", infra.nats_url, "ops", "digest", "settlement", "-o", "json")
        digest = json.loads(result.output)
        assert digest["schema"] == exchange.schemas["settlement"] and "transfers" in digest["tables"]

        # a schema that is not there: a clear error, exit code 1
        result = await smctl("--nats-url", infra.nats_url, "ops", "digest", "settlement", "--schema", replica,
                             "--against", exchange.schemas["settlement"] + "_nothing")
        assert result.exit_code == 1
        assert "does not exist" in result.output

        result = await smctl("--nats-url", infra.nats_url, "ops", "replay", "intake", "--from-seq", "SDK:2",
                             "--database-url", infra.database_url, "--drop")
        assert result.exit_code == 0, result.output
        assert "dropped schema" in result.output and "rebuilds only what those events build" in result.output

        result = await smctl("--nats-url", infra.nats_url, "ops", "replay", "intake", "--from-time",
                             "2099-01-01T00:00:00Z", "--database-url", infra.database_url, "--drop")
        assert result.exit_code == 0 and "past the end of the input streams" in result.output, result.output
    finally:
        await drop_schema(infra.database_url, replica)
