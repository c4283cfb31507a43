"""Helpers shared by the integration and e2e tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext

from libs.common.bus import Runtime
from libs.common.envelope import Envelope, new_envelope
from libs.common.events.sdk import DepositRequested
from libs.common.migrate import migrate
from libs.common.streams import ALL_STREAMS
from libs.common.subjects import query, subject_for

REPO = Path(__file__).resolve().parents[1]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; never sleep for an effect blindly."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


async def migrated_schema(database_url: str, schema: str, migrations: Path) -> None:
    """A service's schema with its migrations applied, as the service's runtime would."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, server_settings={"search_path": schema})
    try:
        async with pool.acquire() as con:
            await con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await migrate(pool, schema, migrations)
    finally:
        await pool.close()


@dataclass
class Exchange:
    """The five services in this event loop, plus helpers to talk to them as a client would."""

    nc: NATS
    js: JetStreamContext
    database_url: str
    schemas: dict[str, str]
    runtimes: dict[str, Runtime] = field(default_factory=dict)

    async def publish(self, env: Envelope[Any], msg_id: str | None = None) -> None:
        await self.js.publish(subject_for(env), env.to_bytes(), headers={"Nats-Msg-Id": msg_id or str(env.id)})

    async def query(self, service: str, what: str, /, **req: Any) -> Any:
        for attempt in range(50):
            try:
                reply = await self.nc.request(query(service, what), json.dumps(req).encode(), timeout=5)
                break
            except NoRespondersError:  # a service that has just started may not be reachable yet
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        body = json.loads(reply.data)
        assert body["ok"], body
        return body["result"]

    async def job(self, tenant: str, name: str) -> dict[str, Any] | None:
        return await self.query("intake", "job", tenant=tenant, name=name)

    async def wait_status(self, tenant: str, name: str, *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the job's status; "settled" also waits for its outcome, which intake learns from
        another stream (placement's) and so may fold in after the charge."""
        async def check() -> Any:
            j = await self.job(tenant, name)
            if not j or j["status"] not in statuses:
                return None
            return None if j["status"] == "settled" and not j.get("outcome") else j
        return await eventually(check, timeout, f"job {tenant}/{name} in {statuses}")

    async def deposit(self, tenant: str, micro_eur: int) -> None:
        """Pay into a tenant's wallet and wait until settlement has booked it."""
        before = (await self.query("settlement", "wallet", tenant=tenant))["balance_micro_eur"]
        await self.publish(new_envelope(DepositRequested(tenant=tenant, amount_micro_eur=micro_eur,
                                                         reference=str(uuid.uuid4())),
                                        source="sdk", party=f"t-{tenant}", correlation_id=uuid.uuid4()))

        async def booked() -> bool:
            w = await self.query("settlement", "wallet", tenant=tenant)
            return w["balance_micro_eur"] == before + micro_eur
        await eventually(booked, what=f"the deposit into {tenant}'s wallet")

    async def diagnose(self) -> str:
        """What the exchange holds, for a failure message."""
        parts = []
        for name in ALL_STREAMS:
            info = await self.js.stream_info(name)
            parts.append(f"{name}: {info.state.messages} msgs")
            for c in await self.js.consumers_info(name):
                parts.append(f"  {c.name}: delivered {c.delivered.stream_seq}, pending {c.num_pending}, "
                             f"unacked {c.num_ack_pending}, redelivered {c.num_redelivered}")
        parts.append(f"jobs: {await self.query('intake', 'jobs')}")
        parts.append(f"offers: {len(await self.query('matching', 'offers'))}")
        return "\n".join(parts)

    async def wait_offers(self, n: int) -> None:
        """Offers and jobs travel on different streams: wait until matching's book holds `n` offers."""
        async def check() -> bool:
            return len(await self.query("matching", "offers")) >= n
        await eventually(check, what=f"{n} offers in the book")

    async def quiet(self, timeout: float = 60.0) -> None:
        """Wait until every durable consumer has handled everything and every outbox is published, and
        stays so while no stream grows: one look at several consumers is no snapshot."""
        busy: list[str] = []
        seen: list[int] = []

        async def total() -> int:
            return sum([(await self.js.stream_info(name)).state.messages for name in ALL_STREAMS])

        async def check() -> bool:
            if not await drained():
                seen.clear()
                return False
            seen.append(await total())
            if len(seen) < 3 or len(set(seen[-3:])) > 1:
                await asyncio.sleep(0.1)
                return False
            return True

        async def drained() -> bool:
            busy.clear()
            for name in ALL_STREAMS:
                for c in await self.js.consumers_info(name):
                    if c.name.split("-")[0] in self.schemas and (c.num_pending or c.num_ack_pending):
                        busy.append(f"{c.name}: {c.num_pending} pending, {c.num_ack_pending} unacked")
            if busy:
                return False
            con = await asyncpg.connect(self.database_url)
            try:
                for schema in self.schemas.values():
                    if await con.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"):
                        busy.append(f"{schema}.outbox")
                        return False
            finally:
                await con.close()
            return True
        try:
            await eventually(check, timeout, "quiescence")
        except AssertionError:
            raise AssertionError(f"not quiet: {busy}") from None
