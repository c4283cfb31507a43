"""What the services do with messages they must not believe, and with events they cannot publish."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from libs.common.envelope import new_envelope
from libs.common.events.agent import OfferPublished, UsageSampled, WorkloadReported
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from tests.e2e.test_seed_job import GIB, T0, assignment, offer, run_as_vendor, seed_manifest, submit
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration


async def dead_letters(ex: Exchange, consumer: str) -> list[Any]:
    info = await ex.js.stream_info("DLQ")
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await ex.js.get_msg("DLQ", seq)
        except Exception:  # noqa: BLE001 - a deleted sequence
            continue
        if msg.subject.startswith(f"dlq.{consumer}."):
            out.append(msg)
    return out


async def test_a_message_whose_subject_names_another_party_is_dead_lettered(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await submit(exchange, seed_manifest())
    assigned = await assignment(exchange, "safespring")
    p = assigned.payload
    forged = new_envelope(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor="safespring",
                                           status="succeeded", at=T0, exit_code=0), source="agent",
                          party="v-safespring", correlation_id=p.job_id)
    # the envelope claims safespring, but it is published on evil's subject (which evil may publish to)
    await exchange.js.publish("agent.workload.reported.v-evil", forged.to_bytes())
    [dl] = await eventually(lambda: dead_letters(exchange, "placement-workload-reported"), what="dead letter")
    assert "subject party 'v-evil' is not the envelope's party 'v-safespring'" in dl.headers["Strongmoose-Error"]
    await exchange.quiet()
    assert (await exchange.job("xyz", "my-first-sparkjob"))["status"] == "placed"  # not finished by the forgery


async def test_usage_reported_by_another_vendor_is_not_billed(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await submit(exchange, seed_manifest())
    assigned = await assignment(exchange, "safespring")
    p = assigned.payload
    forged = new_envelope(UsageSampled(workload_id=p.workload_id, job_id=p.job_id, vendor="evil", tenant="xyz",
                                       seq=1, at=T0, cpu_us=36_000 * 10**6, wall_us=36_000 * 10**6,
                                       rss_peak_bytes=GIB), source="agent", party="v-evil", correlation_id=p.job_id)
    await exchange.publish(forged)  # before metering knows where the workload runs: kept, never believed
    await run_as_vendor(exchange, assigned, [(1800, 3600, 1)])
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    assert job["total_micro_eur"] == 19_475  # only safespring's own 0.5 DTU-h
    await exchange.publish(forged.model_copy(update={"id": uuid4()}))  # once the meter is known: dead-lettered
    [dl] = await eventually(lambda: dead_letters(exchange, "metering-usage-sampled"), what="dead letter")
    assert "does not run at evil" in dl.headers["Strongmoose-Error"]


async def test_an_offer_under_another_vendors_offer_id_is_dead_lettered(exchange: Exchange) -> None:
    await offer(exchange, "elastx", "std-4c-16g", 45_000)
    hijack = OfferPublished(
        offer_id=offer_id("elastx", "std-4c-16g"), vendor="evil", node="std-4c-16g", region="se-sto",
        country="Sweden", eu=True, vcpu=Decimal(4), memory_gib=Decimal(16), price_micro_eur_per_dtu_hour=1,
        available_from=T0, available_until=T0.replace(year=T0.year + 1))
    env = new_envelope(hijack, source="agent", party="v-evil", correlation_id=hijack.offer_id)
    await exchange.publish(env)
    [dl] = await eventually(lambda: dead_letters(exchange, "matching-inputs"), what="dead letter")
    assert "a vendor publishes and withdraws only its own offers" in dl.headers["Strongmoose-Error"]
    [book] = await exchange.query("matching", "offers")
    assert (book["vendor"], book["price_micro_eur_per_dtu_hour"]) == ("elastx", 45_000)


async def test_a_tenant_cannot_submit_into_another_tenants_namespace(exchange: Exchange) -> None:
    doc = seed_manifest()
    env = new_envelope(JobSubmitted(manifest=doc), source="sdk", party="t-evil",
                       correlation_id=job_id("xyz", "my-first-sparkjob"))
    await exchange.publish(env)
    await exchange.quiet()
    job = await exchange.job("xyz", "my-first-sparkjob")
    assert job["status"] == "rejected"
    assert "metadata.namespace: 'xyz' is not the submitting tenant (t-evil)" in job["timeline"][0]["detail"]


async def test_an_event_that_can_never_be_published_is_dead_lettered_and_does_not_block_the_outbox(
        exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    # a row NATS refuses (larger than its maximum payload) sits in intake's outbox before a good job
    schema = exchange.schemas["intake"]
    con = await asyncpg.connect(exchange.database_url)
    try:
        huge = '{"pad": "' + "x" * (2 * 1024 * 1024) + '"}'
        await con.execute(f"INSERT INTO {schema}.outbox (event_id, subject, body) "
                          "VALUES (gen_random_uuid(), 'intake.job.accepted.t-xyz', $1::jsonb)", huge)
    finally:
        await con.close()
    exchange.runtimes["intake"].relay.notify()  # type: ignore[union-attr]
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", "my-first-sparkjob", "placed")
    msg = await eventually(lambda: dead_letters(exchange, schema), what="the outbox dead letter")
    assert "MaxPayloadError" in msg[0].headers["Strongmoose-Error"]
