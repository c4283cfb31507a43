"""Money through the whole exchange: a vendor that claims more than it was allocated, and more than the
workload's own measurement shows, is clamped and disputed, and the invoice says so to the micro-euro."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from libs.common.envelope import new_envelope
from libs.common.events.agent import UsageSampled, WorkloadReported
from tests.e2e.test_seed_job import GIB, T0, assignment, offer, seed_manifest, submit
from tests.support import Exchange

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def report(ex: Exchange, assigned: Any, samples: list[tuple[int, int, int]]) -> None:
    """Run as the vendor: running, then cumulative (claimed cpu s, wall s, witness cpu s) samples, then success."""
    p = assigned.payload
    party, common = f"v-{p.vendor}", dict(workload_id=p.workload_id, job_id=p.job_id, vendor=p.vendor)
    await ex.publish(new_envelope(WorkloadReported(**common, status="running", at=T0), source="agent", party=party,
                                  correlation_id=p.job_id))
    for seq, (cpu_s, wall_s, witness_s) in enumerate(samples, start=1):
        await ex.publish(new_envelope(UsageSampled(
            **common, tenant=p.request.tenant, seq=seq, at=T0 + timedelta(seconds=wall_s), cpu_us=cpu_s * 10**6,
            wall_us=wall_s * 10**6, rss_peak_bytes=GIB, witness_cpu_us=witness_s * 10**6,
            witness_rss_peak_bytes=GIB), source="agent", party=party, correlation_id=p.job_id))
    await ex.publish(new_envelope(WorkloadReported(
        **common, status="succeeded", at=T0 + timedelta(seconds=samples[-1][1]), exit_code=0,
        last_usage_seq=len(samples)), source="agent", party=party, correlation_id=p.job_id))


async def test_a_vendor_that_over_reports_is_clamped_to_its_allocation_and_disputed(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await submit(exchange, seed_manifest())  # 1 vCPU, 4 GiB: 1 DTU, held €50 for the expected hour
    # the vendor claims 3 CPU-hours in one hour of a 1-vCPU allocation: 3 DTU-h, clamped to 1 DTU-h;
    # the workload's own measurement says 0.5 CPU-hours: 0.5 DTU-h, so 0.5 DTU-h is disputed (> 5 %)
    await report(exchange, await assignment(exchange, "safespring"), [(5400, 1800, 900), (10800, 3600, 1800)])
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    await exchange.quiet()
    types = [t["type"] for t in (await exchange.job("xyz", "my-first-sparkjob"))["timeline"]]
    assert "DisputeOpened" in types, types
    [line] = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
    # 1 DTU-h x €0.038: €0.019 paid to the vendor, €0.019 held in dispute; fee 2.5 % of €0.038 = €0.00095
    assert (line["dtu_micro_hours"], line["vendor_micro_eur"], line["disputed_micro_eur"], line["fee_micro_eur"],
            line["rounding_micro_eur"], line["total_micro_eur"]) == (1_000_000, 19_000, 19_000, 950, 0, 38_950)
    assert job["total_micro_eur"] == 38_950
    [dispute] = await exchange.query("settlement", "disputes")
    assert (dispute["claimed_dtu_micro_hours"], dispute["witness_dtu_micro_hours"],
            dispute["disputed_dtu_micro_hours"], dispute["held_micro_eur"]) == (3_000_000, 500_000, 500_000, 19_000)
    statement = await exchange.query("settlement", "statement", vendor="safespring")
    assert (statement["payable_micro_eur"], statement["in_dispute_micro_eur"]) == (19_000, 19_000)
    wallet = await exchange.query("settlement", "wallet", tenant="xyz")
    assert wallet["held_micro_eur"] == 0  # the rest of the €50 hold came back
    assert (await exchange.query("settlement", "ledger_check"))["ok"]
