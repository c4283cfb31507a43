"""Metering on the real bus: a long (simulated) workload is reported as it goes (MeterProgressed) and
closed with its flags (MeterClosed), with this test acting as a vendor that misbehaves in every way
metering must not believe. Expectations are computed by hand."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from libs.common.envelope import Envelope, new_envelope, parse_envelope
from libs.common.events.agent import UsageSampled, WorkloadReported
from tests.e2e.test_seed_job import GIB, T0, assignment, offer, run_as_vendor, seed_manifest, submit
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration


async def metering_facts(ex: Exchange, type_: str) -> list[Envelope[Any]]:
    info = await ex.js.stream_info("METERING")
    out = []
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        env = parse_envelope((await ex.js.get_msg("METERING", seq)).data)
        if env.type == type_:
            out.append(env)
    return out


async def metering_quiet(ex: Exchange) -> None:
    """Metering has handled every message on its consumers and published its outbox (the other services
    need not be idle)."""
    async def drained() -> bool:
        for stream, durable in (("AGENT", "metering-usage-sampled"), ("PLACEMENT", "metering-workload-started"),
                                ("PLACEMENT", "metering-workload-finished"),
                                ("PLACEMENT", "metering-workload-failed")):
            c = await ex.js.consumer_info(stream, durable)
            if c.num_pending or c.num_ack_pending:
                return False
        con = await asyncpg.connect(ex.database_url)
        try:
            schema = ex.schemas["metering"]
            return not await con.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")
        finally:
            await con.close()
    await eventually(drained, what="metering idle")


class Vendor:
    """Reports one assigned workload the way a vendor agent would, or would not."""

    def __init__(self, ex: Exchange, assigned: Envelope[Any]):
        self.ex, self.assigned, self.p = ex, assigned, assigned.payload
        self.party = f"v-{self.p.vendor}"

    async def report(self, status: str, at_s: float, last_usage_seq: int | None = None) -> None:
        p = self.p
        await self.ex.publish(new_envelope(WorkloadReported(
            workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status=status,  # type: ignore[arg-type]
            at=T0 + timedelta(seconds=at_s), exit_code=None if status == "running" else 0,
            last_usage_seq=last_usage_seq), source="agent", party=self.party, correlation_id=p.job_id))

    def sample(self, seq: int, cpu_s: int, wall_s: int, gib: int, at_s: float | None = None,
               witness_cpu_s: int | None = None) -> Envelope[Any]:
        p = self.p
        return new_envelope(UsageSampled(
            workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, tenant=p.request.tenant, seq=seq,
            at=T0 + timedelta(seconds=wall_s if at_s is None else at_s), cpu_us=cpu_s * 10**6,
            wall_us=wall_s * 10**6, rss_peak_bytes=gib * GIB,
            witness_cpu_us=None if witness_cpu_s is None else witness_cpu_s * 10**6,
            witness_rss_peak_bytes=None if witness_cpu_s is None else gib * GIB),
            source="agent", party=self.party, correlation_id=p.job_id)


async def placed(ex: Exchange) -> Vendor:
    await offer(ex, "safespring", "std-4c-16g", 38_000)
    await submit(ex, seed_manifest())  # 1 vCPU, 4 GiB: DTU rate 1
    return Vendor(ex, await assignment(ex, "safespring"))


async def meter(ex: Exchange) -> dict[str, Any]:
    [m] = await ex.query("metering", "meters")
    return m


async def test_a_long_workload_is_metered_as_it_runs_and_closed_with_its_flags(exchange: Exchange) -> None:
    v = await placed(exchange)
    await v.report("running", at_s=0)

    async def progressed(n: int) -> list[Envelope[Any]]:
        return await eventually(lambda: _at_least(metering_facts(exchange, "MeterProgressed"), n),
                                what=f"{n} MeterProgressed")

    # seq 1 claims ten minutes of use from a minute before the start (beyond the 5 s skew): rejected
    await exchange.publish(v.sample(1, 600, 600, 1, at_s=-60))
    # seq 2, 60 s in: the vendor says 60 cpu-s, its runner's witness 30 cpu-s (1 GiB: memory term smaller)
    #   claimed 60/3600 DTU-h = 16_667 micro; allocation 1 DTU x 60 s = 16_667; witness 30/3600 = 8_333;
    #   excess 8_334 > max(5 % x 8_333, 1_000): disputed 8_334
    await exchange.publish(v.sample(2, 60, 60, 1, witness_cpu_s=30))
    [first] = await progressed(1)
    # seq 3, 120 s in: claimed 120/3600 = 33_333, allocation 33_333, witness 16_667, disputed 16_666
    await exchange.publish(v.sample(3, 120, 120, 1, witness_cpu_s=60))
    _, second = await progressed(2)
    # seq 4 is lost; seq 6 overtakes seq 5; seq 3 comes again under a new event id: while the workload
    # runs, 5 and 6 wait for 4 and nothing is reported, the repeat changes nothing
    await exchange.publish(v.sample(6, 360, 300, 1, witness_cpu_s=150))
    await exchange.publish(v.sample(5, 300, 240, 1, witness_cpu_s=120))
    await exchange.publish(v.sample(3, 120, 120, 1, witness_cpu_s=60).model_copy(update={"id": uuid4()}))
    await metering_quiet(exchange)
    m = await meter(exchange)
    assert (m["status"], m["last_seq"], m["samples"], m["rejected"]) == ("open", 3, 2, 1)
    # the end report, 300 s in, announces seq 6 as its last: the meter closes across the gap
    await v.report("succeeded", at_s=300, last_usage_seq=6)
    [closed] = await eventually(lambda: metering_facts(exchange, "MeterClosed"), what="MeterClosed")

    p = first.payload
    assert (p.seq, p.at, p.wall_us) == (2, T0 + timedelta(seconds=60), 60 * 10**6)
    assert (p.claimed_dtu_micro_hours, p.dtu_micro_hours, p.witness_dtu_micro_hours, p.disputed_dtu_micro_hours) == (
        16_667, 16_667, 8_333, 8_334)
    p = second.payload
    assert (p.seq, p.claimed_dtu_micro_hours, p.dtu_micro_hours, p.witness_dtu_micro_hours,
            p.disputed_dtu_micro_hours) == (3, 33_333, 33_333, 16_667, 16_666)
    assert len(await metering_facts(exchange, "MeterProgressed")) == 2

    # claimed: seq 2 60 + seq 3 60 + seq 3->5 across the gap 180 (over-reported: 120 s of wall) + seq 6 60
    #   = 360 cpu-s = 0.1 DTU-h = 100_000; allocation 1 DTU x 300 s = 83_333: billable 83_333;
    # witness 150 cpu-s = 41_667; excess 41_666 > max(5 % x 41_667, 1_000): disputed 41_666
    c = closed.payload
    assert (c.claimed_dtu_micro_hours, c.dtu_micro_hours, c.witness_dtu_micro_hours, c.disputed_dtu_micro_hours) == (
        100_000, 83_333, 41_667, 41_666)
    assert (c.missing_seqs, c.rejected_samples, c.samples, c.cpu_us, c.wall_us, c.outcome) == (
        [4], 1, 4, 360 * 10**6, 300 * 10**6, "succeeded")
    assert closed.id == (await metering_facts(exchange, "MeterClosed"))[0].id

    # the lost sample turns up after the close: kept and counted late, it changes nothing
    await exchange.publish(v.sample(4, 180, 180, 1, witness_cpu_s=90))
    await eventually(lambda: _late(exchange), what="the late sample counted")
    await metering_quiet(exchange)
    assert len(await metering_facts(exchange, "MeterClosed")) == 1
    m = await meter(exchange)
    assert (m["dtu_micro_hours"], m["missing_seqs"], m["late_samples"]) == (83_333, [4], 1)


async def test_a_vendor_claiming_more_than_its_allocation_is_clamped(exchange: Exchange) -> None:
    v = await placed(exchange)
    # one hour at DTU rate 1 allows 1 DTU-h; the vendor claims 7200 cpu-s = 2 DTU-h; no witness: no dispute
    await run_as_vendor(exchange, v.assigned, [(7200, 3600, 1)])
    [closed] = await eventually(lambda: metering_facts(exchange, "MeterClosed"), what="MeterClosed")
    c = closed.payload
    assert (c.claimed_dtu_micro_hours, c.dtu_micro_hours, c.witness_dtu_micro_hours, c.disputed_dtu_micro_hours) == (
        2_000_000, 1_000_000, None, 0)
    assert (c.missing_seqs, c.rejected_samples, c.samples) == ([], 0, 1)


async def test_a_workload_that_failed_before_it_ran_is_never_metered(exchange: Exchange) -> None:
    v = await placed(exchange)
    await v.report("failed", at_s=5)  # never reported running, no sample announced
    # placement gives it up (PlacementFailed, its job is booked again) instead of ending it as failed
    async def unplaced() -> bool:
        return [w["status"] for w in await exchange.query("placement", "workloads")] == ["unplaced"]
    await eventually(unplaced, what="the workload given up")
    await exchange.quiet()
    assert await metering_facts(exchange, "MeterClosed") == [] and await exchange.query("metering", "meters") == []


async def _at_least(facts: Any, n: int) -> list[Envelope[Any]] | None:
    got = await facts
    return got if len(got) >= n else None


async def _late(ex: Exchange) -> bool:
    return (await meter(ex))["late_samples"] == 1
