"""Outbox: outgoing events written in the handler's transaction, published after commit by one relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Awaitable, Callable

import asyncpg
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.db import is_outage
from libs.common.envelope import Envelope
from libs.common.subjects import subject_for

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 15.0  # a stream that has not acked a published batch by then is asked again


class NatsUnavailable(ConnectionError):
    """NATS is not connected, or the connection was replaced while the stream's acks were awaited."""


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
    pipelined: a batch goes out, then the stream's acks are awaited together. Rows are marked published only
    after their acks, so a crash, a lost database connection or a NATS restart in between makes the relay
    publish them again, and the stream's duplicate window drops the copies (`Nats-Msg-Id` = event id).

    `nc`, when given, lets the relay see a NATS reconnect: acks awaited across one are never coming, so it
    publishes again at once instead of waiting out `ACK_TIMEOUT_S`. `database_back`, when given, is awaited
    after a lost database connection and returns once the database answers again.
    """

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, schema: str, batch: int = 500, *,
                 nc: NATS | None = None, database_back: Callable[[], Awaitable[None]] | None = None):
        self.pool, self.js, self.schema, self.batch = pool, js, schema, batch
        self.nc, self.database_back = nc, database_back
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
                        # a broken connection has lost its session lock with it: only the first error matters
                        with contextlib.suppress(Exception):
                            await con.execute("SELECT pg_advisory_unlock_all()")
            except asyncio.CancelledError:
                raise
            except (NatsUnavailable, nats.errors.Error, asyncio.TimeoutError) as e:
                log.warning("outbox relay of %s: NATS unavailable (%s: %s); publishing again once it is back",
                            self.schema, type(e).__name__, e)
                await self._nats_back()
            except Exception as e:
                if is_outage(e):
                    log.warning("outbox relay of %s: database connection lost (%s: %s); waiting for it",
                                self.schema, type(e).__name__, e)
                    if self.database_back is None:
                        await asyncio.sleep(1.0)
                        continue
                    try:
                        await self.database_back()
                    except Exception as gone:  # the service gave up waiting: so does its relay
                        log.error("outbox relay of %s stops: %s", self.schema, gone)
                        return
                else:
                    log.exception("outbox relay of %s failed; retrying", self.schema)
                    await asyncio.sleep(1.0)

    async def _nats_back(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until the NATS connection is up again; a short pause when it already is."""
        deadline = time.monotonic() + timeout
        while self.nc is not None and not self.nc.is_connected and not self.nc.is_closed \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # JetStream may answer "no responders" for a moment after a reconnect

    def _epoch(self) -> int:
        return self.nc.stats["reconnects"] if self.nc is not None else 0

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
        if self.nc is not None and not self.nc.is_connected:
            # publishing now would only fill the client's reconnect buffer (and leak its pending-ack slots)
            raise NatsUnavailable("not connected")
        epoch = self._epoch()
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
        await self._acks(futures, epoch)
        await con.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                          [r["seq"] for r in rows])
        if failed:
            await con.executemany("UPDATE outbox SET failed = $2 WHERE seq = $1", failed)
        self.published += len(rows) - len(failed)
        return len(rows)

    async def _acks(self, futures: list[asyncio.Future[Any]], epoch: int) -> None:
        """Await the stream's acks; give up early when the connection was replaced meanwhile (they are lost)."""
        deadline = time.monotonic() + ACK_TIMEOUT_S
        pending = set(futures)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=0.25)
                for f in done:
                    f.result()  # the stream's error, e.g. no responders while JetStream is starting
                if not pending:
                    return
                if self._epoch() != epoch or (self.nc is not None and not self.nc.is_connected):
                    raise NatsUnavailable("the connection was lost while the stream's acks were awaited")
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError(f"{len(pending)} acks not received within {ACK_TIMEOUT_S:g} s")
        finally:
            for f in pending:
                f.cancel()  # frees the client's pending-ack slot

    async def _dead_letter(self, row: asyncpg.Record, error: str) -> None:
        log.error("outbox row %s (%s on %r) cannot be published: %s", row["seq"], row["event_id"], row["subject"],
                  error)
        headers = {"Strongmoose-Error": error[:2000], "Strongmoose-Subject": row["subject"][:500],
                   "Strongmoose-Event-Id": str(row["event_id"]), "Nats-Msg-Id": f"dlq:outbox:{row['event_id']}"}
        await self.js.publish(f"dlq.{self.schema}.outbox", row["body"].encode()[:65536], headers=headers)
