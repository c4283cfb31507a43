"""Wires settlement's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import asyncpg

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.settlement import service, store
from services.settlement.settings import SettlementSettings


def create_service(settings: SettlementSettings) -> Service:
    fee_bps = settings.settlement_fee_bps

    async def q_invoice(con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        lines = await store.invoice(con, str(req["tenant"]))
        return {"tenant": req["tenant"], "fee_bps": fee_bps, "lines": lines,
                "total_micro_eur": sum(line["total_micro_eur"] for line in lines)}

    async def q_ledger_check(con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        checks = await store.check(con)
        return {"ok": all(c["ok"] for c in checks), "checks": checks}

    return Service(
        name="settlement",
        schema=settings.settlement_schema,
        migrations=Path(__file__).parent / "migrations",
        subscriptions=[
            Subscription(streams.SETTLEMENT_JOB_MATCHED, service.hold_funds),
            Subscription(streams.SETTLEMENT_METER_CLOSED, functools.partial(service.settle_meters, fee_bps=fee_bps)),
            Subscription(streams.SETTLEMENT_DEPOSIT, service.deposit, time_from_stream=True),
        ],
        queries={"invoice": q_invoice, "ledger_check": q_ledger_check,
                 "wallet": lambda con, req: store.wallet(con, str(req["tenant"])),
                 "journal": lambda con, req: store.journal(con, str(req["tenant"]), str(req["name"]))},
    )
