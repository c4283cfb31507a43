"""Wires settlement's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.settlement import service, store
from services.settlement.settings import SettlementSettings


def _period(req: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """[from, to) of a report request, ISO 8601 with a time zone (smctl checks them at the edge)."""
    return tuple(datetime.fromisoformat(req[k]) if req.get(k) else None for k in ("from", "to"))  # type: ignore[return-value]


def create_service(settings: SettlementSettings) -> Service:
    fee_bps = settings.settlement_fee_bps
    charge = functools.partial(service.charge_usage, fee_bps=fee_bps)

    async def q_invoice(con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        since, until = _period(req)
        lines = await store.invoice(con, str(req["tenant"]), since, until)
        return {"tenant": req["tenant"], "from": since, "to": until, "fee_bps": fee_bps, "lines": lines,
                "total_micro_eur": sum(line["total_micro_eur"] for line in lines)}

    async def q_statement(con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        since, until = _period(req)
        return {"from": since, "to": until, **await store.statement(con, str(req["vendor"]), since, until)}

    async def q_ledger_check(con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        checks = await store.check(con)
        return {"ok": all(c["ok"] for c in checks), "checks": checks}

    return Service(
        name="settlement",
        schema=settings.settlement_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        subscriptions=[
            Subscription(streams.SETTLEMENT_JOB_MATCHED,
                         functools.partial(service.hold_funds, hold_grace_s=settings.settlement_hold_grace_s)),
            Subscription(streams.SETTLEMENT_METER_READINGS, charge),
            Subscription(streams.SETTLEMENT_WORKLOAD_CANCELLED, service.void_holds),
            Subscription(streams.SETTLEMENT_PLACEMENT_FAILED,
                         functools.partial(service.wait_for_rebooking, hold_grace_s=settings.settlement_hold_grace_s)),
            Subscription(streams.SETTLEMENT_JOB_EXPIRED, service.void_expired_jobs),
            Subscription(streams.SETTLEMENT_DEPOSIT, service.deposit, time_from_stream=True),
            Subscription(streams.SETTLEMENT_PAYOUT, service.pay_out, time_from_stream=True),
            Subscription(streams.SETTLEMENT_DISPUTE_RESOLUTION, service.resolve_disputes, time_from_stream=True),
        ],
        queries={"invoice": q_invoice, "statement": q_statement, "ledger_check": q_ledger_check,
                 "disputes": lambda con, req: store.disputes(con, req.get("vendor")),
                 "wallet": lambda con, req: store.wallet(con, str(req["tenant"])),
                 "journal": lambda con, req: store.journal(con, str(req["tenant"]), str(req["name"]))},
    )
