"""Money enters only by a deposit; a payment reference deposits once."""

from __future__ import annotations

import pytest

from libs.common.localinfra import Infra
from tests.integration.test_dead_letters import smctl
from tests.support import Exchange

pytestmark = pytest.mark.integration


async def test_a_deposit_credits_the_wallet_once_per_reference_and_the_ledger_balances(
        exchange: Exchange, infra: Infra) -> None:
    code, out = await smctl(infra, "wallet", "deposit", "xyz", "100", "--reference", "pay-1")
    assert code == 0 and "deposited; wallet xyz: 100.000000 EUR available" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "xyz", "12.5", "--reference", "pay-2")
    assert code == 0 and "112.500000 EUR available" in out, out
    code, out = await smctl(infra, "wallet", "deposit", "xyz", "100", "--reference", "pay-1")  # the same payment
    assert code == 1 and "reference: 'pay-1' was deposited already" in out, out
    await exchange.quiet()
    wallet = await exchange.query("settlement", "wallet", tenant="xyz")
    assert (wallet["balance_micro_eur"], wallet["deposited_micro_eur"]) == (112_500_000, 112_500_000)
    assert (await exchange.query("settlement", "ledger_check"))["ok"]


@pytest.mark.parametrize(("amount", "reason"), [
    ("-5", "amount: must be greater than 0"), ("0", "amount: must be greater than 0"),
    ("NaN", "amount: must be a finite number"), ("1.0000001", "amount: has more than 6 decimals"),
    ("2e6", "amount: is larger than 1,000,000 EUR"), ("lots", "amount: must be a number of euros")])
async def test_a_bad_deposit_amount_is_refused_naming_the_field(infra: Infra, amount: str, reason: str) -> None:
    code, out = await smctl(infra, "wallet", "deposit", "xyz", "--", amount)  # `--`: "-5" is no option
    assert code == 1 and reason in out, out
