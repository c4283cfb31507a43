"""The batch consumer runtime every service runs on.

A service declares `Subscription`s (a durable consumer + a batch handler) and `Query` endpoints.
For each subscription a worker pulls a batch, parses the envelopes (an invalid one is dead-lettered
and terminated), and in ONE database transaction claims the inbox rows, runs the handler on the
fresh events and writes the outgoing events to the outbox; it acks only after commit. If the batch
transaction fails, its messages are retried one by one, so a poison message is isolated: it is
nacked with back-off and dead-lettered when it reaches `max_deliver` (or at once when the handler
raises `PermanentError`), while the rest go through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic_core import to_jsonable_python

from libs.common import inbox, outbox, subjects, telemetry
from libs.common.db import create_pool
from libs.common.envelope import Envelope, InvalidEvent, parse_envelope
from libs.common.migrate import migrate
from libs.common.streams import ConsumerSpec, ensure_streams

log = logging.getLogger(__name__)

Handler = Callable[[asyncpg.Connection, list[Envelope[Any]]], Awaitable[list[Envelope[Any]]]]
QueryHandler = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[Any]]  # (connection, request) -> reply


class PermanentError(Exception):
    """The event can never be applied (unknown reference, impossible state): dead-letter it now."""


@dataclass(frozen=True)
class Subscription:
    consumer: ConsumerSpec
    handle: Handler  # (tx, fresh events) -> outgoing events; runs inside the batch transaction
    # events from outside the exchange (consumers, vendors) carry a time their sender chose: take the
    # time the stream stored the message instead, which a replay sees unchanged
    time_from_stream: bool = False


class PartyMismatch(InvalidEvent):
    """The subject names one party and the envelope another: a forgery or a bug, never applied."""


def received(sub: Subscription, m: Msg) -> Envelope[Any]:
    """Parse a message and check that its subject's party token is the envelope's party."""
    env = parse_envelope(m.data)
    token = m.subject.rsplit(".", 1)[-1]
    if token != env.party:
        raise PartyMismatch(f"subject party {token!r} is not the envelope's party {env.party!r}")
    if sub.time_from_stream:
        env = env.model_copy(update={"time": m.metadata.timestamp})
    return env


@dataclass
class Service:
    """What a service is to the runtime: its name, schema, migrations, subscriptions and queries."""

    name: str
    schema: str
    migrations: Path
    subscriptions: list[Subscription]
    queries: dict[str, QueryHandler] = field(default_factory=dict)
    # one writer at a time inside this process (matching: the order book is decided serially)
    serialize: bool = False


async def connect_nats(url: str, name: str) -> NATS:
    """Connect with unbounded reconnects: a NATS restart pauses the service, it does not kill it."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                              connect_timeout=5)


async def dead_letter(js: JetStreamContext, consumer: str, msg: Msg, error: str) -> None:
    """Park a message that cannot be applied on `dlq.<consumer>.<subject>` with the reason."""
    meta = msg.metadata
    headers = {
        "Strongmoose-Consumer": consumer,
        "Strongmoose-Error": error[:2000],
        "Strongmoose-Subject": msg.subject,
        "Strongmoose-Stream": meta.stream,
        "Strongmoose-Stream-Seq": str(meta.sequence.stream),
        "Nats-Msg-Id": f"dlq:{consumer}:{meta.stream}:{meta.sequence.stream}",
    }
    await js.publish(subjects.dead_letter(consumer, msg.subject), msg.data, headers=headers)
    log.error("dead-lettered %s seq %s for %s: %s", msg.subject, meta.sequence.stream, consumer, error)


class Runtime:
    """Runs one service: pool, migrations, streams, relay, batch consumers and query endpoints."""

    def __init__(self, service: Service, nats_url: str, database_url: str, batch_size: int = 200,
                 stream_replicas: int = 1):
        self.service = service
        self.nats_url, self.database_url, self.batch_size = nats_url, database_url, batch_size
        self.stream_replicas = stream_replicas
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.pool: asyncpg.Pool | None = None
        self.relay: outbox.Relay | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock() if service.serialize else None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        s = self.service
        self.pool = await create_pool(self.database_url, s.schema, max_size=len(s.subscriptions) + 4)
        await migrate(self.pool, s.schema, s.migrations)
        self.nc = await connect_nats(self.nats_url, s.name)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, self.stream_replicas)
        self.relay = outbox.Relay(self.pool, self.js, s.schema)
        self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{s.name}-relay"))
        for sub in s.subscriptions:
            psub = await self.js.pull_subscribe(sub.consumer.filter_subject, durable=sub.consumer.durable,
                                                stream=sub.consumer.stream, config=sub.consumer.config())
            self._tasks.append(asyncio.create_task(self._consume(sub, psub), name=sub.consumer.durable))
        queries: dict[str, QueryHandler] = {"health": self._health, **s.queries}
        for name, handler in queries.items():
            await self.nc.subscribe(subjects.query(s.name, name), queue=s.name, cb=self._answer(handler))
        await self.nc.flush()  # the server knows our subscriptions before anyone is told we are ready
        self.ready.set()
        log.info("%s started: schema %s, %d consumers", s.name, s.schema, len(s.subscriptions))

    async def stop(self) -> None:
        """Stop consuming and close; bounded, because a cancelled fetch in nats-py may not notice at once."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()  # every handled message is acked; a loop still fetching sees the close
        pending = [t for t in self._tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            _, still = await asyncio.wait(pending, timeout=5.0)
            if still:
                log.warning("%s: %d tasks did not stop", self.service.name, len(still))
        self._tasks.clear()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=10.0)
            except asyncio.TimeoutError:
                self.pool.terminate()

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()

    # -- consuming ----------------------------------------------------------------------------

    async def _consume(self, sub: Subscription, psub: JetStreamContext.PullSubscription) -> None:
        assert self.nc is not None
        while not self.nc.is_closed:  # nats-py's fetch can swallow a cancellation: stop on close too
            try:
                msgs = await psub.fetch(self.batch_size, timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection trouble: the client reconnects, we wait
                log.warning("%s: fetch failed (%s); retrying", sub.consumer.durable, e)
                await asyncio.sleep(1.0)
                continue
            try:
                await self.process(sub, msgs)
            except asyncio.CancelledError:
                raise
            except Exception:
                # nothing was acked: JetStream redelivers after ack_wait
                log.exception("%s: batch processing failed", sub.consumer.durable)
                await asyncio.sleep(1.0)

    async def process(self, sub: Subscription, msgs: list[Msg]) -> None:
        assert self.js is not None
        good: list[tuple[Msg, Envelope[Any]]] = []
        for m in msgs:
            try:
                good.append((m, received(sub, m)))
            except InvalidEvent as e:
                await dead_letter(self.js, sub.consumer.durable, m, f"invalid event: {e}")
                await m.term()
        if not good:
            return
        try:
            await self._apply(sub, [e for _, e in good])
        except Exception as e:
            if len(good) == 1:
                await self._failed(sub, *good[0], e)
                return
            log.warning("%s: batch of %d failed (%r); retrying one by one", sub.consumer.durable, len(good), e)
            for m, env in good:
                try:
                    await self._apply(sub, [env])
                except Exception as e1:
                    await self._failed(sub, m, env, e1)
                else:
                    await m.ack()
            return
        for m, _ in good:
            await m.ack()

    async def _apply(self, sub: Subscription, events: list[Envelope[Any]]) -> None:
        assert self.pool is not None and self.relay is not None
        first = events[0]
        with telemetry.span(f"{sub.consumer.durable} x{len(events)}", first.traceparent,
                            **{"messaging.batch.message_count": len(events), "event.type": first.type}):
            if self._lock is not None:
                async with self._lock:
                    out = await self._transaction(sub, events)
            else:
                out = await self._transaction(sub, events)
        if out:
            self.relay.notify()

    async def _transaction(self, sub: Subscription, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
        assert self.pool is not None
        async with self.pool.acquire() as tx:
            async with tx.transaction():
                fresh = await inbox.claim_many(tx, sub.consumer.durable, events)
                out = await sub.handle(tx, fresh) if fresh else []
                # each outgoing event continues the trace of the event that caused it
                by_id = {e.id: e for e in fresh}
                out = [o if o.traceparent or o.causation_id not in by_id
                       else o.model_copy(update={"traceparent": by_id[o.causation_id].traceparent})
                       for o in out]
                await outbox.add_many(tx, out)
        return out

    async def _failed(self, sub: Subscription, m: Msg, env: Envelope[Any], e: Exception) -> None:
        assert self.js is not None
        delivered = m.metadata.num_delivered
        ctx = f"event {env.id} {env.type} correlation {env.correlation_id} party {env.party}"
        if isinstance(e, PermanentError) or delivered >= sub.consumer.max_deliver:
            await dead_letter(self.js, sub.consumer.durable, m, f"{type(e).__name__}: {e}")
            await m.term()
        else:
            log.warning("%s: %s failed (delivery %d): %r; will retry", sub.consumer.durable, ctx, delivered, e)
            await m.nak(delay=min(0.5 * 2 ** (delivered - 1), 30.0))

    async def _health(self, con: asyncpg.Connection, req: dict[str, Any]) -> Any:
        return {"service": self.service.name, "schema": self.service.schema,
                "outbox_published": self.relay.published if self.relay else 0}

    # -- queries --------------------------------------------------------------------------------

    def _answer(self, handler: QueryHandler) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            assert self.pool is not None
            try:
                req = json.loads(msg.data) if msg.data else {}
                async with self.pool.acquire() as con:
                    body: Any = {"ok": True, "result": await handler(con, req)}
            except Exception as e:
                log.exception("query %s failed", msg.subject)
                body = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            await msg.respond(json.dumps(to_jsonable_python(body)).encode())

        return cb


def run_service(build: Callable[[], Service], settings: Any) -> None:
    """Entry point of `python -m services.<name>`."""
    service = build()
    telemetry.setup(service.name)
    rt = Runtime(service, settings.nats_url, settings.database_url, settings.batch_size, settings.stream_replicas)
    asyncio.run(rt.run_until_signalled())
