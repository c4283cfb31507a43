"""What tenants, vendors and operators see of the money, through smctl against the running services:
invoices per period in table, JSON and CSV; payout statements and payouts; disputes and decisions."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from libs.common.localinfra import Infra
from tests.integration.test_dead_letters import smctl
from tests.integration.test_ledger import Ledger
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration


async def _charged_job(exchange: Exchange, name: str, dtu: int, disputed: int = 0) -> None:
    """Publish a match and its closed meter as matching and metering would (the rest of the flow is
    tested elsewhere): settlement holds, then charges."""
    events = Ledger(con=None)  # type: ignore[arg-type]  # only its event builders
    await exchange.publish(events.matched("xyz", name))
    await exchange.publish(events.reading("xyz", name, dtu, final=True, disputed=disputed))

    async def charged() -> Any:
        lines = (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
        return [ln for ln in lines if ln["name"] == name]
    await eventually(charged, what=f"{name} charged")


async def test_an_invoice_is_a_table_json_or_csv_and_a_period_with_no_zone_is_refused(
        exchange: Exchange, infra: Infra) -> None:
    await _charged_job(exchange, "report", 250_000)  # 0.25 DTU-h at 38_000: 9_500 + fee 237 + rounding 1
    code, out = await smctl(infra, "invoice", "xyz", "-o", "csv")
    assert code == 0, out
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert (row["job"], row["vendor"], row["dtu_hours"], row["eur_per_dtu_hour"], row["vendor_eur"], row["fee_eur"],
            row["rounding_eur"], row["total_eur"]) == \
        ("report", "elastx", "0.250000", "0.038000", "0.009500", "0.000237", "0.000001", "0.009738")
    code, out = await smctl(infra, "invoice", "xyz", "-o", "json")
    assert code == 0 and json.loads(out)["total_micro_eur"] == 9_738, out
    code, out = await smctl(infra, "invoice", "xyz")
    assert code == 0 and "report" in out and "0.009738" in out, out
    code, out = await smctl(infra, "invoice", "xyz", "--from", "2026-06-01T08:00:00")
    assert code == 1 and "--from: '2026-06-01T08:00:00' has no time zone" in out, out
    code, out = await smctl(infra, "invoice", "xyz", "--from", "2026-06-02", "--to", "2026-06-03")
    assert code == 0 and "nothing was charged to tenant xyz from 2026-06-02" in out, out
    code, out = await smctl(infra, "invoice", "xyz", "--from", "2026-06-01", "--to", "2026-06-02", "-o", "json")
    assert code == 0 and len(json.loads(out)["lines"]) == 1, out


async def test_a_vendor_sees_its_statement_is_paid_out_once_and_never_beyond_its_payable(
        exchange: Exchange, infra: Infra) -> None:
    await _charged_job(exchange, "earner", 1_000_000)  # elastx earns 38_000
    code, out = await smctl(infra, "vendor", "statement", "elastx")
    assert code == 0 and "payable now: 0.038000 EUR" in out and "earner" in out, out
    code, out = await smctl(infra, "vendor", "payout", "elastx", "0.03", "--reference", "po-1")
    assert code == 0 and "elastx payable now 0.008000 EUR" in out, out
    code, out = await smctl(infra, "vendor", "payout", "elastx", "0.03", "--reference", "po-1")
    assert code == 1 and "reference: 'po-1' was paid out already" in out, out
    code, out = await smctl(infra, "vendor", "payout", "elastx", "0.01", "--reference", "po-2")
    assert code == 1 and "amount: 0.01 EUR is more than the payable of elastx, 0.008000 EUR" in out, out
    code, out = await smctl(infra, "vendor", "payout", "nobody", "0.01", "--reference", "po-2")
    assert code == 1 and "more than the payable of nobody, 0.000000 EUR" in out, out
    code, out = await smctl(infra, "vendor", "payout", "elastx", "--reference", "po-3", "--", "-1")
    assert code == 1 and "amount: must be greater than 0" in out, out
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


async def test_an_operator_decides_a_dispute_and_the_tenant_gets_the_held_amount_back(
        exchange: Exchange, infra: Infra) -> None:
    await exchange.deposit("xyz", 100_000)
    await _charged_job(exchange, "overclaimed", 1_000_000, disputed=400_000)  # 15_200 of 38_000 held
    code, out = await smctl(infra, "ops", "dispute", "list", "-o", "json")
    assert code == 0, out
    [d] = json.loads(out)
    assert (d["name"], d["status"], d["held_micro_eur"]) == ("overclaimed", "open", 15_200)
    code, out = await smctl(infra, "ops", "dispute", "resolve", "overclaimed", "-n", "xyz", "--pay", "tenant",
                            "--note", "the witness is right")
    # the fee on the disputed use goes back too: 950 of fee on 38_000, pro rata 15_200 / 38_000 = 380
    assert code == 0 and "0.015200 EUR and the fee charged on it, 0.000380 EUR, paid to the tenant" in out, out
    wallet = await exchange.query("settlement", "wallet", tenant="xyz")
    [line] = [ln for ln in (await exchange.query("settlement", "invoice", tenant="xyz"))["lines"]
              if ln["name"] == "overclaimed"]
    assert (line["vendor_micro_eur"], line["fee_micro_eur"]) == (22_800, 570), line
    assert wallet["balance_micro_eur"] == wallet["deposited_micro_eur"] - line["total_micro_eur"], (wallet, line)
    code, out = await smctl(infra, "ops", "dispute", "resolve", "overclaimed", "-n", "xyz", "--pay", "vendor")
    assert code == 1 and "decided already" in out, out
    code, out = await smctl(infra, "ops", "dispute", "resolve", "nosuch", "-n", "xyz", "--pay", "vendor")
    assert code == 1 and "job xyz/nosuch has no dispute" in out, out
    code, out = await smctl(infra, "ledger", "check")
    assert code == 0 and "✗" not in out, out
