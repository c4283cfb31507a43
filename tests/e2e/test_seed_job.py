"""The seed manifest's whole life through the five services on a real bus, with this test acting as
the vendor agent so that usage, and therefore the invoice, can be computed by hand."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
import yaml

from libs.common import subjects
from libs.common.envelope import new_envelope, parse_envelope
from libs.common.events.agent import OfferPublished, UsageSampled, WorkloadReported
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from tests.support import REPO, Exchange, eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEED = (REPO / "examples" / "seed-job.yaml").read_text()
GIB = 2**30
T0 = datetime.now(timezone.utc).replace(microsecond=0)


def seed_manifest(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(SEED)
    doc = copy.deepcopy(doc)
    doc["spec"]["notAfter"] = (T0 + timedelta(hours=6)).isoformat()
    doc["spec"].update(spec)
    return doc


async def offer(ex: Exchange, vendor: str, node: str, price: int, region: str = "se-sto",
                country: str = "Sweden", vcpu: int = 4, memory_gib: int = 16, gpus: int = 0,
                gpu_price: int | None = None) -> None:
    oid = offer_id(vendor, node)
    await ex.publish(new_envelope(OfferPublished(
        offer_id=oid, vendor=vendor, node=node, region=region, country=country, eu=True, vcpu=Decimal(vcpu),
        memory_gib=Decimal(memory_gib), price_micro_eur_per_dtu_hour=price, gpu_count=gpus,
        gpu_model="L40S" if gpus else None, price_micro_eur_per_gpu_hour=gpu_price,
        available_from=T0 - timedelta(hours=1),
        available_until=T0 + timedelta(days=2)), source="agent", party=f"v-{vendor}", correlation_id=oid, time=T0))


async def submit(ex: Exchange, doc: dict[str, Any], at: datetime = T0) -> None:
    md = doc["metadata"]
    await ex.publish(new_envelope(JobSubmitted(manifest=doc), source="sdk", party=f"t-{md['namespace']}",
                                  correlation_id=job_id(md["namespace"], md["name"]), time=at))


async def assignment(ex: Exchange, vendor: str) -> Any:
    sub = await ex.js.pull_subscribe(subjects.workload_assigned_to(vendor), durable=f"test-{vendor}",
                                     stream="PLACEMENT")
    try:
        msgs = await sub.fetch(1, timeout=60)
    except Exception:
        raise AssertionError(f"no assignment for {vendor}; {await ex.diagnose()}") from None
    await msgs[0].ack()
    return parse_envelope(msgs[0].data)


async def run_as_vendor(ex: Exchange, assigned: Any, samples: list[tuple[int, int, int]]) -> None:
    """Report the workload running, the cumulative samples (cpu s, wall s, peak GiB), then success."""
    p = assigned.payload
    party = f"v-{p.vendor}"
    await ex.publish(new_envelope(WorkloadReported(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor,
                                                   status="running", at=T0), source="agent", party=party,
                                  correlation_id=p.job_id))
    for seq, (cpu_s, wall_s, gib) in enumerate(samples, start=1):
        await ex.publish(new_envelope(UsageSampled(
            workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, tenant=p.request.tenant, seq=seq,
            at=T0 + timedelta(seconds=wall_s), cpu_us=cpu_s * 10**6, wall_us=wall_s * 10**6,
            rss_peak_bytes=gib * GIB), source="agent", party=party, correlation_id=p.job_id))
    await ex.publish(new_envelope(WorkloadReported(
        workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="succeeded",
        at=T0 + timedelta(seconds=samples[-1][1]), exit_code=0, last_usage_seq=len(samples)),
        source="agent", party=party, correlation_id=p.job_id))


async def test_seed_job_reaches_settled_and_its_invoice_equals_the_hand_computed_amount(exchange: Exchange) -> None:
    await offer(exchange, "elastx", "std-4c-16g", 45_000)
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await offer(exchange, "cheapcloud", "big", 1_000, region="eu-north-1")  # Sweden, but not on the allow-list
    await exchange.wait_offers(3)  # matching is continuous: a job takes the best offer in the book when it arrives
    await submit(exchange, seed_manifest())
    assigned = await assignment(exchange, "safespring")  # the cheaper of the two allowed vendors
    # interval 1: max(1800 cpu-s, 1 GiB/4 x 3600 s) = 0.5 DTU-h; interval 2: max(3600, 2/4 x 3600) = 1.0 DTU-h
    await run_as_vendor(exchange, assigned, [(1800, 3600, 1), (5400, 7200, 2)])
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    # 1.5 DTU-h x €0.038 = €0.057000 to the vendor; fee 2.5 % = €0.001425; total €0.058425
    assert job["total_micro_eur"] == 58_425
    assert job["vendor"] == "safespring" and job["outcome"] == "finished"
    invoice = await exchange.query("settlement", "invoice", tenant="xyz")
    [line] = invoice["lines"]
    assert (line["dtu_micro_hours"], line["vendor_micro_eur"], line["fee_micro_eur"], line["total_micro_eur"]) == (
        1_500_000, 57_000, 1_425, 58_425)
    check = await exchange.query("settlement", "ledger_check")
    assert check["ok"], check
    await exchange.quiet()  # intake folds each service's facts from its own stream, in any order
    job = await exchange.job("xyz", "my-first-sparkjob")
    timeline = [t["type"] for t in job["timeline"]]
    for fact in ("JobAccepted", "JobMatched", "WorkloadAssigned", "WorkloadStarted", "WorkloadFinished",
                 "MeterClosed", "ChargePosted"):
        assert fact in timeline


async def test_a_gpu_job_pays_its_gpu_hours_at_the_vendors_gpu_price(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)  # no GPUs
    await offer(exchange, "elastx", "gpu-2x", 45_000, gpus=2, gpu_price=2_000_000)
    await exchange.wait_offers(2)
    await submit(exchange, seed_manifest(resources={"gpu": 1}, maxEuroPerGPUHour=3))
    assigned = await assignment(exchange, "elastx")
    await run_as_vendor(exchange, assigned, [(1800, 3600, 1)])
    await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    [line] = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
    # 0.5 DTU-h x €0.045 = €0.022500 plus 1 GPU x 1 h x €2 = €2.022500 to the vendor; fee 2.5 % = €0.0505625,
    # €0.050562 rounded down; the consumer pays €2.0730625 rounded half up = €2.073063: €0.000001 of rounding
    assert (line["gpu_micro_hours"], line["vendor_micro_eur"], line["fee_micro_eur"], line["rounding_micro_eur"],
            line["total_micro_eur"]) == (1_000_000, 2_022_500, 50_562, 1, 2_073_063)
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_the_verbatim_seed_manifest_is_rejected_naming_its_past_deadline(exchange: Exchange) -> None:
    await submit(exchange, yaml.safe_load(SEED))
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "rejected")
    [rejection] = job["timeline"]
    assert rejection["type"] == "JobRejected"
    assert "spec.notAfter" in rejection["detail"] and "already past" in rejection["detail"]


async def test_a_bad_manifest_is_rejected_naming_each_field_and_reason(exchange: Exchange) -> None:
    doc = seed_manifest(maxEuroPerDTU="lots", resources={"cpu": "-2"})
    await submit(exchange, doc)
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "rejected")
    detail = job["timeline"][0]["detail"]
    assert "spec.maxEuroPerDTU: must be a number of euros" in detail
    assert "spec.resources.cpu: must be a positive number of vCPUs" in detail


async def test_resubmitting_the_same_tenant_and_name_does_not_create_a_second_job(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", "my-first-sparkjob", "placed")
    await submit(exchange, seed_manifest(), at=T0 + timedelta(seconds=5))
    await exchange.quiet()
    jobs = await exchange.query("intake", "jobs", tenant="xyz")
    assert len(jobs) == 1
    workloads = await exchange.query("placement", "workloads")
    assert len(workloads) == 1


async def test_a_redelivered_event_changes_state_once(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await submit(exchange, seed_manifest())
    assigned = await assignment(exchange, "safespring")
    await run_as_vendor(exchange, assigned, [(1800, 3600, 1)])
    await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    await exchange.quiet()
    # every event of the run delivered again under a fresh message id (beyond the stream's dedupe)
    for stream in ("AGENT", "MATCHING", "PLACEMENT", "METERING"):
        info = await exchange.js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await exchange.js.get_msg(stream, seq)
            await exchange.js.publish(msg.subject, msg.data, headers={"Nats-Msg-Id": str(uuid4())})
    await exchange.quiet()
    invoice = await exchange.query("settlement", "invoice", tenant="xyz")
    assert [line["total_micro_eur"] for line in invoice["lines"]] == [19_475]  # 0.5 DTU-h x €0.038 + 2.5 %
    assert (await exchange.query("settlement", "ledger_check"))["ok"]
    assert len(await exchange.query("placement", "workloads")) == 1


async def test_usage_samples_arriving_out_of_order_are_integrated_in_seq_order(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    # 8 GiB (DTU rate 2): the 2 h run allows 4 DTU-h, so the clamp to the allocation does not hide the order
    await submit(exchange, seed_manifest(resources={"memory": "8Gi"}))
    assigned = await assignment(exchange, "safespring")
    p, party = assigned.payload, f"v-{assigned.payload.vendor}"
    await exchange.publish(new_envelope(WorkloadReported(  # metering bounds samples by the running interval
        workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="running", at=T0), source="agent",
        party=party, correlation_id=p.job_id))

    def sample(seq: int, cpu_s: int, wall_s: int, gib: int) -> Any:
        return new_envelope(UsageSampled(
            workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, tenant="xyz", seq=seq,
            at=T0 + timedelta(seconds=wall_s), cpu_us=cpu_s * 10**6, wall_us=wall_s * 10**6,
            rss_peak_bytes=gib * GIB), source="agent", party=party, correlation_id=p.job_id)
    # seq 2 overtakes seq 1 in a batch of its own: in order, 0.25 + 2 = 2.25 DTU-h (not 4 at seq 2's peak)
    await exchange.publish(sample(2, 720, 7200, 8))
    await exchange.quiet()
    await exchange.publish(sample(1, 360, 3600, 1))
    await exchange.publish(new_envelope(WorkloadReported(
        workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor, status="succeeded", at=T0 + timedelta(hours=2),
        exit_code=0, last_usage_seq=2), source="agent", party=party, correlation_id=p.job_id))
    await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    [line] = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
    assert line["dtu_micro_hours"] == 2_250_000


async def test_an_unmatchable_job_says_which_constraint_failed(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await offer(exchange, "elastx", "std-4c-16g", 45_000)
    await offer(exchange, "nebius", "cpu-8", 20_000, region="eu-west1", country="France")
    await exchange.wait_offers(3)
    await submit(exchange, seed_manifest(maxEuroPerDTU="0.01"))
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "waiting")
    detail = next(t["detail"] for t in job["timeline"] if t["type"] == "JobUnmatchable")
    assert "region excluded 1: not in region 'Sweden'" in detail
    assert "price excluded 2: cheapest is €0.038000/DTU-h (safespring); your cap is €0.010000" in detail


async def test_a_waiting_job_is_matched_when_a_fitting_offer_arrives(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-2c-8g", 38_000, vcpu=2, memory_gib=8)
    await exchange.wait_offers(1)
    await submit(exchange, seed_manifest(resources={"cpu": 4, "memory": "16Gi"}))
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "waiting")
    assert "resources excluded 1" in next(t["detail"] for t in job["timeline"] if t["type"] == "JobUnmatchable")
    await offer(exchange, "elastx", "std-8c-32g", 45_000, vcpu=8, memory_gib=32)
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "placed", "matched")
    assert job["vendor"] == "elastx"


async def test_a_poison_message_is_dead_lettered_and_the_stream_moves_on(exchange: Exchange) -> None:
    await exchange.js.publish("sdk.job.submitted.t-xyz", b"{not json", headers={"Nats-Msg-Id": "poison-1"})
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await submit(exchange, seed_manifest())
    await exchange.wait_status("xyz", "my-first-sparkjob", "placed")

    async def dead_letter() -> Any:
        try:
            return await exchange.js.get_last_msg("DLQ", "dlq.intake-job-submitted.sdk.job.submitted.t-xyz")
        except Exception:
            return None
    msg = await eventually(dead_letter, what="the dead letter")
    assert msg.data == b"{not json"
    assert "invalid event" in msg.headers["Strongmoose-Error"]
