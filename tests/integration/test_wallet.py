"""Money enters only by a deposit; a payment reference deposits once."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from libs.common.localinfra import Infra
from tests.e2e.test_seed_job import assignment, offer, run_as_vendor, seed_manifest, submit
from tests.integration.test_dead_letters import smctl
from tests.support import Exchange

pytestmark = pytest.mark.integration


async def test_a_deposit_credits_the_wallet_once_per_reference_and_the_ledger_balances(
        exchange: Exchange, infra: Infra) -> None:
    code, out = await smctl(infra, "wallet", "deposit", "abc", "100", "--reference", "pay-1")
    assert code == 0 and "wallet abc: 100.000000 EUR available" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "abc", "12.5", "--reference", "pay-2")
    assert code == 0 and "112.500000 EUR available" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "abc", "100", "--reference", "pay-1")  # a retried payment
    assert code == 0 and "'pay-1' was deposited already; booked once, nothing changed" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "abc", "20", "--reference", "pay-1")  # another amount
    assert code == 1 and "reference: 'pay-1' was deposited already with 100.000000 EUR" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "abc", "5", "--reference", "r" * 201)
    assert code == 1 and "reference: must be 1 to 200 characters" in out, out
    code, out = await smctl(infra, "wallet", "show", "a.b")
    assert code == 1 and "tenant: 'a.b' is not a DNS-1123 label" in out, out
    await exchange.quiet()
    wallet = await exchange.query("settlement", "wallet", tenant="abc")
    assert (wallet["balance_micro_eur"], wallet["deposited_micro_eur"]) == (112_500_000, 112_500_000)
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


@pytest.mark.parametrize(("amount", "reason"), [
    ("-5", "amount: must be greater than 0"), ("0", "amount: must be greater than 0"),
    ("NaN", "amount: must be a finite number"), ("1.0000001", "amount: has more than 6 decimals"),
    ("2e6", "amount: is larger than 1,000,000 EUR"), ("lots", "amount: must be a number of euros"),
    ("1_000", "amount: must be a plain number of euros in ASCII digits"),
    ("\u0663", "amount: must be a plain number of euros in ASCII digits"),  # an Arabic-Indic three
    ("+5", "amount: must be a plain number of euros in ASCII digits")])
async def test_a_bad_deposit_amount_is_refused_naming_the_field(infra: Infra, amount: str, reason: str) -> None:
    code, out = await smctl(infra, "wallet", "deposit", "abc", "--", amount)  # `--`: "-5" is no option
    assert code == 1 and reason in out, out


def manifest_for(tenant: str, name: str) -> dict[str, object]:
    doc = seed_manifest()
    doc["metadata"] = {"name": name, "namespace": tenant}
    return doc


async def test_a_job_whose_hold_the_wallet_cannot_cover_is_refused_before_it_is_placed(
        exchange: Exchange, infra: Infra, tmp_path: Path) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await exchange.deposit("poor", 10_000_000)  # €10; the seed job holds €50 (cap €50 x 1 DTU x 1 h)
    await submit(exchange, manifest_for("poor", "too-dear"))
    job = await exchange.wait_status("poor", "too-dear", "refused")
    refusal = next(t for t in job["timeline"] if t["type"] == "InsufficientFunds")
    assert "the hold of €50.000000 exceeds the wallet's €10.000000" in refusal["detail"]
    await exchange.quiet()
    assert await exchange.query("placement", "workloads") == []
    [book] = await exchange.query("matching", "offers")
    assert Decimal(str(book["free_vcpu"])) == 4  # the reservation was released
    assert (await exchange.query("settlement", "ledger_check"))["ok"]
    # applied again, a refused job is not run again: the user is told to pick a new name
    path = tmp_path / "too-dear.yaml"
    path.write_text(json.dumps(manifest_for("poor", "too-dear")))
    code, out = await smctl(infra, "apply", "-f", str(path))
    assert code == 1 and "not run again: it ended refused" in out and "new metadata.name" in out, out


async def test_two_racing_jobs_the_balance_cannot_both_cover_do_not_both_pass(exchange: Exchange) -> None:
    await offer(exchange, "safespring", "std-8c-32g", 38_000, vcpu=8, memory_gib=32)
    await exchange.wait_offers(1)
    await exchange.deposit("some", 60_000_000)  # €60: one €50 hold fits, two do not
    await submit(exchange, manifest_for("some", "first"))
    await submit(exchange, manifest_for("some", "second"))
    await exchange.quiet()
    statuses = sorted([(await exchange.job("some", n))["status"] for n in ("first", "second")])  # type: ignore[index]
    assert statuses == ["placed", "refused"]
    wallet = await exchange.query("settlement", "wallet", tenant="some")
    assert (wallet["balance_micro_eur"], wallet["held_micro_eur"]) == (10_000_000, 50_000_000)
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_the_journal_traces_a_jobs_invoice_line_to_its_transfers(exchange: Exchange, infra: Infra) -> None:
    await offer(exchange, "safespring", "std-4c-16g", 38_000)
    await exchange.wait_offers(1)
    await submit(exchange, seed_manifest())
    await run_as_vendor(exchange, await assignment(exchange, "safespring"), [(1800, 3600, 1)])
    await exchange.wait_status("xyz", "my-first-sparkjob", "settled")
    code, out = await smctl(infra, "ledger", "journal", "--job", "my-first-sparkjob", "-n", "xyz", "-o", "json")
    assert code == 0, out
    moves = [(t["kind"], t["debit"], t["credit"], t["amount"]) for t in json.loads(out)["transfers"]]
    # hold €50; charge 0.5 DTU-h x €0.038 = €0.019; fee 2.5 % = €0.000475; the rest back to the wallet
    assert moves == [("hold", "tenant:xyz", "escrow:xyz", 50_000_000),
                     ("charge", "escrow:xyz", "vendor:safespring", 19_000),
                     ("fee", "escrow:xyz", "exchange:fees", 475),
                     ("release", "escrow:xyz", "tenant:xyz", 50_000_000 - 19_475)]
    # ... and each charge to the metered use that caused it: the readings add up to the 0.5 DTU-h run
    readings = {t["event_id"]: t["usage_dtu_micro_hours"] for t in json.loads(out)["transfers"] if t["reading"]}
    assert sum(readings.values()) == 500_000
    code, out = await smctl(infra, "ledger", "journal", "--job", "my-first-sparkjob", "-n", "xyz")
    assert code == 0 and "+0.500000 DTU-h" in out, out
    code, out = await smctl(infra, "ledger", "journal", "--job", "nothing", "-n", "xyz")
    assert code == 1 and "no money moved for job xyz/nothing" in out
