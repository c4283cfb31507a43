"""Outbox: outgoing events written in the handler's transaction, published after commit by one relay."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg
import nats.errors
from nats.js import JetStreamContext

from libs.common.envelope import Envelope
from libs.common.subjects import subject_for

log = logging.getLogger(__name__)


async def add_many(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> None:
    """Queue events for publishing; a re-derived event (same id) is queued once."""
    if not events:
        return
    await tx.executemany(
        "INSERT INTO outbox (event_id, subject, body, headers) VALUES ($1, $2, $3::jsonb, $4::jsonb) "
        "ON CONFLICT (event_id) DO NOTHING",
        [
            (e.id, subject_for(e), e.model_dump_json(),
             json.dumps({"traceparent": e.traceparent} if e.traceparent else {}))
            for e in events
        ],
    )


class Relay:
    """Publishes committed outbox rows in `seq` order with `Nats-Msg-Id` = event id.

    One relay per service is active (a session advisory lock), so per-job order holds. Publishes are
    pipelined: a batch goes out, then the stream's acks are awaited together.
    """

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, schema: str, batch: int = 500):
        self.pool, self.js, self.schema, self.batch = pool, js, schema, batch
        self.wake = asyncio.Event()
        self.published = 0

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with self.pool.acquire() as con:
                    while not await con.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"relay:{self.schema}"):
                        await asyncio.sleep(1.0)
                    try:
                        await self._loop(con)
                    finally:
                        await con.execute("SELECT pg_advisory_unlock_all()")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)

    async def _loop(self, con: asyncpg.Connection) -> None:
        while True:
            n = await self.publish_pending(con)
            if n < self.batch:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass

    async def publish_pending(self, con: asyncpg.Connection) -> int:
        rows = await con.fetch(
            "SELECT seq, event_id, subject, body::text AS body, headers::text AS headers FROM outbox "
            "WHERE published_at IS NULL ORDER BY seq LIMIT $1",
            self.batch,
        )
        if not rows:
            return 0
        futures = []
        failed: list[tuple[int, str]] = []
        for r in rows:
            headers = {"Nats-Msg-Id": str(r["event_id"]), **json.loads(r["headers"])}
            try:
                futures.append(await self.js.publish_async(r["subject"], r["body"].encode(), headers=headers))
            except (nats.errors.MaxPayloadError, nats.errors.BadSubjectError) as e:
                # can never be published: dead-letter it rather than block every row behind it
                failed.append((r["seq"], f"{type(e).__name__}: {e}"))
                await self._dead_letter(r, failed[-1][1])
        await asyncio.wait_for(asyncio.gather(*futures), timeout=15.0)
        await con.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                          [r["seq"] for r in rows])
        if failed:
            await con.executemany("UPDATE outbox SET failed = $2 WHERE seq = $1", failed)
        self.published += len(rows) - len(failed)
        return len(rows)

    async def _dead_letter(self, row: asyncpg.Record, error: str) -> None:
        log.error("outbox row %s (%s on %r) cannot be published: %s", row["seq"], row["event_id"], row["subject"],
                  error)
        headers = {"Strongmoose-Error": error[:2000], "Strongmoose-Subject": row["subject"][:500],
                   "Strongmoose-Event-Id": str(row["event_id"]), "Nats-Msg-Id": f"dlq:outbox:{row['event_id']}"}
        await self.js.publish(f"dlq.{self.schema}.outbox", row["body"].encode()[:65536], headers=headers)
