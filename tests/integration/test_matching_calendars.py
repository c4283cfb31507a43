"""Offers with hourly calendars through the real bus: a job is booked into the window it fits, or told, with
the reason, that capacity exists only after its deadline."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from libs.common.envelope import new_envelope, parse_envelope
from libs.common.events.agent import AvailabilityWindow, OfferPublished
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id, offer_id
from libs.common.localinfra import Infra
from tests.integration.test_dead_letters import smctl
from tests.support import Exchange, eventually

pytestmark = [pytest.mark.integration]

NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
H = timedelta(hours=1)


def manifest(name: str, not_after: datetime, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "strongmoose.dsoderlund.consulting/v1alpha1", "kind": "job",
        "metadata": {"name": name, "namespace": "xyz"},
        "spec": {"image": "python:3.11-slim", "notAfter": not_after.isoformat(), "maxEuroPerDTU": "0.05",
                 "scriptPath": "/job.py", "restrictions": {"region": "Sweden"},
                 "resources": {"cpu": 4, "memory": "16Gi"}, "expectedDuration": "2h", **spec},
    }


async def publish_offer(ex: Exchange, windows: list[AvailabilityWindow], **kw: Any) -> None:
    oid = offer_id("elastx", "n1")
    await ex.publish(new_envelope(OfferPublished(
        offer_id=oid, vendor="elastx", node="n1", region="se-sto", country="Sweden", eu=True, vcpu=Decimal(8),
        memory_gib=Decimal(32), price_micro_eur_per_dtu_hour=40_000, available_from=NOW - H,
        available_until=NOW + 48 * H, calendar=windows, **kw), source="agent", party="v-elastx", correlation_id=oid,
        time=NOW))
    await ex.wait_offers(1)


async def submit(ex: Exchange, doc: dict[str, Any]) -> None:
    await ex.publish(new_envelope(JobSubmitted(manifest=doc), source="sdk", party="t-xyz",
                                  correlation_id=job_id("xyz", doc["metadata"]["name"])))


async def last(ex: Exchange, subject: str) -> Any:
    async def get() -> Any:
        try:
            return parse_envelope((await ex.js.get_last_msg("MATCHING", subject)).data)
        except Exception:
            return None
    return await eventually(get, what=subject)


# two vCPU free for the first hour, then nothing until three hours from now, then the whole node at a lower price
CALENDAR = [AvailabilityWindow(start=NOW, end=NOW + H, vcpu=Decimal(2), memory_gib=Decimal(8)),
            AvailabilityWindow(start=NOW + 3 * H, end=NOW + 24 * H, price_micro_eur_per_dtu_hour=30_000)]


async def test_a_job_that_fits_only_a_later_window_of_the_calendar_is_booked_there(exchange: Exchange) -> None:
    await publish_offer(exchange, CALENDAR)
    await submit(exchange, manifest("later", NOW + 12 * H))
    matched = (await last(exchange, "matching.job.matched.t-xyz")).payload
    assert (matched.start_at, matched.end_at) == (NOW + 3 * H, NOW + 5 * H)
    assert matched.price_micro_eur_per_dtu_hour == 30_000  # the window's price, not the offer's
    await exchange.wait_status("xyz", "later", "matched", "placed")


async def test_a_job_that_does_not_fit_before_its_deadline_waits_with_that_reason(exchange: Exchange) -> None:
    await publish_offer(exchange, CALENDAR)
    await submit(exchange, manifest("too-soon", NOW + 4 * H))
    why = (await last(exchange, "matching.job.unmatchable.t-xyz")).payload
    [reason] = why.reasons
    assert (reason.constraint, reason.excluded) == ("availability", 1)
    assert reason.detail.startswith("capacity exists in Sweden only after your deadline")
    assert reason.detail.endswith(f"earliest possible end {(NOW + 5 * H).isoformat()}")
    await exchange.wait_status("xyz", "too-soon", "waiting")


async def test_compliance_attributes_and_a_deny_list_exclude_offers_for_vendor(exchange: Exchange) -> None:
    await publish_offer(exchange, CALENDAR, attributes=["gdpr"])
    doc = manifest("sovereign", NOW + 12 * H)
    doc["spec"]["restrictions"]["attributes"] = ["gdpr", "sovereign-eu"]
    await submit(exchange, doc)
    why = (await last(exchange, "matching.job.unmatchable.t-xyz")).payload
    assert [(r.constraint, r.excluded, r.detail) for r in why.reasons] == [
        ("vendor", 1, "without ['gdpr', 'sovereign-eu']")]


# -- smctl explain -------------------------------------------------------------------------------------------


async def test_explain_shows_per_constraint_what_excluded_offers_for_a_matched_and_a_waiting_job(
        exchange: Exchange, infra: Infra) -> None:
    await publish_offer(exchange, CALENDAR)
    other = offer_id("nebius", "cpu-8")
    await exchange.publish(new_envelope(OfferPublished(
        offer_id=other, vendor="nebius", node="cpu-8", region="eu-west1", country="France", eu=True, vcpu=Decimal(8),
        memory_gib=Decimal(32), price_micro_eur_per_dtu_hour=20_000, available_from=NOW - H,
        available_until=NOW + 48 * H), source="agent", party="v-nebius", correlation_id=other, time=NOW))
    await exchange.wait_offers(2)
    await submit(exchange, manifest("later", NOW + 12 * H))
    await submit(exchange, manifest("too-soon", NOW + 4 * H))
    await exchange.wait_status("xyz", "later", "matched", "placed")
    await exchange.wait_status("xyz", "too-soon", "waiting")

    later = await exchange.query("matching", "explain", tenant="xyz", name="later")
    assert later["status"] == "matched" and later["fit"] == 1
    assert later["booked"]["vendor"] == "elastx" and later["best_now"]["vendor"] == "elastx"
    assert {c["constraint"]: c["excluded"] for c in later["constraints"]} == {
        "region": 1, "vendor": 0, "resources": 0, "price": 0, "availability": 0}

    code, out = await smctl(infra, "explain", "job", "too-soon", "-n", "xyz")
    assert code == 0, out
    text = " ".join(out.split())
    assert "2 in the book" in text and "0 fit the job" in text and "nothing fits" in text
    assert "not in region 'Sweden'" in text and "capacity exists in Sweden only after your deadline" in text
    code, out = await smctl(infra, "explain", "job", "too-soon", "-n", "xyz", "-o", "json")
    assert code == 0, out
    assert [(c["constraint"], c["excluded"]) for c in json.loads(out)["constraints"]] == [
        ("region", 1), ("vendor", 0), ("resources", 0), ("price", 0), ("availability", 1)]

    code, out = await smctl(infra, "explain", "job", "nothing", "-n", "xyz")
    assert code == 1 and "matching has no job xyz/nothing" in " ".join(out.split()), out
