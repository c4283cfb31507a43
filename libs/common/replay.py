"""Operator replay: rebuild a service's state from its input streams into a fresh schema.

`replay()` creates the schema, runs the service's migrations into it, reads the messages of every
subscription of the service in stream order with an ephemeral consumer (its durables never move), merges
them into one deterministic order and feeds them through the code a live consumer runs: `received()`
(the party check, and the stream's time for outside events), then in one transaction per batch the
inbox claim, the handler and the outbox. Nothing is published: no relay runs, so the events the
handlers emit stay in the replay schema's outbox (no second assignment, no second transfer).

The order: each subscription's messages in stream order, merged by the time the stream stored them,
then stream name and sequence for ties, so two replays of the same streams always apply the same
events in the same order. A live service consumes its subscriptions side by side, so where its
decisions depend on the order between subscriptions, a replay may build a different state; the digest
shows it (README). A service for which that order matters reads one stream that sources all its inputs
(`streams.SOURCED`: matching), and is then rebuilt exactly.

What a live consumer would dead-letter is skipped and counted: an invalid message (`invalid`), an
event the handler refuses (`refused`, `PermanentError`), and an event whose handler keeps failing
(`failed`; live retries it later and dead-letters it at `max_deliver`). A batch that fails is
retried in smaller parts, one event at a time at the end, as a live consumer isolates a poison
message; the order of the events that apply is kept. A lost database connection stops the replay.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from libs.common.bus import PermanentError, Service, Subscription, apply_events, connect_nats, received
from libs.common.db import check_schema, create_pool, is_outage
from libs.common.envelope import Envelope, InvalidEvent
from libs.common.migrate import migrate
from libs.common.settings import CommonSettings

IDLE_TIMEOUT_S = 30.0  # a consumer that has messages pending but delivers none for this long is an error
FETCH = 500  # messages per fetch of one subscription's consumer
MAX_ERRORS_KEPT = 20


class ReplayError(Exception):
    """The replay could not run (schema exists, unknown stream, consumer stalled); the message says why."""


@dataclass(frozen=True, order=True)
class Item:
    """One message in replay order: (stream time, stream, stream sequence, subscription index)."""

    at: datetime
    stream: str
    seq: int
    sub: int
    msg: Any = field(compare=False, default=None)


@dataclass
class ReplayReport:
    """What a replay read and did."""

    service: str
    schema: str
    events: int = 0  # messages read from the streams
    applied: int = 0  # events a handler applied (fresh inbox claims)
    duplicates: int = 0  # events whose id was applied before (published twice)
    invalid: int = 0  # not a valid envelope, or the subject's party is not the envelope's: live dead-letters it
    refused: int = 0  # the handler refused it (PermanentError): live dead-letters it
    failed: int = 0  # the handler failed on it: live retries, then dead-letters it at max_deliver
    emitted: int = 0  # outgoing events written to the replay's outbox; none is published
    seconds: float = 0.0
    streams: dict[str, list[int]] = field(default_factory=dict)  # consumer: [first, last] stream seq read
    errors: list[str] = field(default_factory=list)  # the first few skipped events and why

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "events_per_s": round(self.events_per_s, 1)}


# -- the order ----------------------------------------------------------------------------------------


async def merge(sources: list[AsyncIterator[Item]]) -> AsyncIterator[Item]:
    """Merge sources, each already in its own order, by (time, stream, seq, subscription).

    A source's own order is always kept, even if its times go backwards (a clock step on the server):
    this is a k-way merge, not a sort.
    """
    heap: list[tuple[Item, int]] = []
    for i, src in enumerate(sources):
        first = await anext(src, None)
        if first is not None:
            heap.append((first, i))
    heapq.heapify(heap)
    while heap:
        item, i = heap[0]
        yield item
        nxt = await anext(sources[i], None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt, i))


async def chunks(items: AsyncIterator[Item], size: int) -> AsyncIterator[list[list[Item]]]:
    """Up to `size` consecutive items at a time, as runs of consecutive items of one subscription."""
    chunk: list[list[Item]] = []
    n = 0
    async for item in items:
        if chunk and chunk[-1][0].sub == item.sub:
            chunk[-1].append(item)
        else:
            chunk.append([item])
        n += 1
        if n >= size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


# -- reading the streams --------------------------------------------------------------------------------


def _start(spec_stream: str, from_seq: int | Mapping[str, int] | None,
           from_time: datetime | None) -> ConsumerConfig:
    if from_time is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=from_time)
    seq = from_seq.get(spec_stream, 1) if isinstance(from_seq, Mapping) else (from_seq or 1)
    if seq <= 1:
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)


async def _source(js: JetStreamContext, index: int, sub: Subscription, config: ConsumerConfig,
                  upto: int) -> AsyncIterator[Item]:
    """The subscription's messages up to stream sequence `upto` (the stream's end when the replay began).

    An ephemeral pull consumer without acks, fetched on demand: the merge holds at most one fetch per
    subscription, however far one stream runs ahead of another in time (a push consumer keeps
    delivering into the client, and nats-py drops what overflows its queue). Its consumer sequence
    must count up by one: a gap means a message went missing, and the replay stops rather than
    build a state without it.
    """
    spec = sub.consumer
    if upto <= 0:
        return
    config.ack_policy = AckPolicy.NONE
    config.filter_subject = spec.filter_subject
    config.inactive_threshold = 60.0  # the server removes it if this process dies mid-replay
    config.mem_storage = True
    config.num_replicas = 1
    psub = await js.pull_subscribe(spec.filter_subject, stream=spec.stream, config=config)
    name = None
    try:
        info = await psub.consumer_info()
        name = info.name
        if not info.num_pending:
            return  # nothing matches the filter from the start point on
        expect = 1
        while True:
            try:
                msgs = await psub.fetch(FETCH, timeout=IDLE_TIMEOUT_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                raise ReplayError(f"{spec.stream} ({spec.filter_subject}) delivered nothing for {IDLE_TIMEOUT_S:g}s "
                                  "with messages still pending") from None
            for m in msgs:
                meta = m.metadata
                if meta.sequence.consumer != expect:
                    raise ReplayError(f"{spec.stream} ({spec.filter_subject}): message {expect} of the replay's "
                                      f"consumer went missing (got {meta.sequence.consumer}); replay again")
                expect += 1
                seq = meta.sequence.stream
                if seq > upto:
                    return  # published after the replay began
                yield Item(meta.timestamp, spec.stream, seq, index, m)
                if seq >= upto or meta.num_pending == 0:
                    return
    finally:
        try:
            await psub.unsubscribe()
            if name is not None:
                await js.delete_consumer(spec.stream, name)
        except Exception:  # the connection may be closing; the server drops it after inactive_threshold
            pass


# -- applying --------------------------------------------------------------------------------------------


class _Applier:
    def __init__(self, pool: asyncpg.Pool, subs: list[Subscription], report: ReplayReport):
        self.pool, self.subs, self.report = pool, subs, report

    def skip(self, kind: str, item: Item, why: str) -> None:
        setattr(self.report, kind, getattr(self.report, kind) + 1)
        if len(self.report.errors) < MAX_ERRORS_KEPT:
            self.report.errors.append(f"{kind}: {item.stream} seq {item.seq} ({self.subs[item.sub].consumer.durable}): "
                                      f"{why}")

    async def chunk(self, runs: list[list[Item]]) -> None:
        parsed: list[tuple[Subscription, list[tuple[Item, Envelope[Any]]]]] = []
        for run in runs:
            sub = self.subs[run[0].sub]
            good = []
            for item in run:
                try:
                    good.append((item, received(sub, item.msg)))
                except InvalidEvent as e:
                    self.skip("invalid", item, str(e))
            if good:
                parsed.append((sub, good))
        await self._apply(parsed)

    async def _apply(self, parts: list[tuple[Subscription, list[tuple[Item, Envelope[Any]]]]]) -> None:
        """One transaction for all parts in order; if it fails, each part alone, then each event alone."""
        if not parts:
            return
        try:
            async with self.pool.acquire() as tx:
                async with tx.transaction():
                    for sub, good in parts:
                        await apply_events(tx, sub, [env for _, env in good])
            return
        except Exception as e:
            if is_outage(e):  # not the events' fault: skipping them would build a wrong state
                raise ReplayError(f"the database failed during the replay ({type(e).__name__}: {e}); "
                                  f"{self.report.schema} is incomplete: drop it and replay again") from e
            if len(parts) == 1 and len(parts[0][1]) == 1:
                item, env = parts[0][1][0]
                kind = "refused" if isinstance(e, PermanentError) else "failed"
                self.skip(kind, item, f"{env.type} {env.id}: {type(e).__name__}: {e}")
                return
        if len(parts) > 1:
            for part in parts:
                await self._apply([part])
        else:
            sub, good = parts[0]
            for one in good:
                await self._apply([(sub, [one])])


# -- the replay ------------------------------------------------------------------------------------------


async def schema_exists(database_url: str, schema: str) -> bool:
    con = await asyncpg.connect(database_url)
    try:
        return bool(await con.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))
    finally:
        await con.close()


async def replay(service: Service, *, nats_url: str, database_url: str,
                 from_seq: int | Mapping[str, int] | None = None, from_time: datetime | None = None,
                 batch_size: int = 200, progress: Callable[[ReplayReport], None] | None = None,
                 progress_every_s: float = 2.0) -> ReplayReport:
    """Rebuild `service` into `service.schema`, which must not exist yet, from its input streams.

    Args:
        from_seq: start each input stream at this sequence, or per stream ({"AGENT": 120}; others from 1).
        from_time: start each input stream at the first message stored at or after this time.
        batch_size: messages per transaction (the services' default is 200).
        progress: called every `progress_every_s` seconds with the report so far.

    Raises:
        ReplayError: the schema exists, a named stream is not an input of the service, a consumer stalls.
    """
    schema = check_schema(service.schema)
    if from_seq is not None and from_time is not None:
        raise ReplayError("give --from-seq or --from-time, not both")
    inputs = sorted({s.consumer.stream for s in service.subscriptions})
    if isinstance(from_seq, Mapping):
        unknown = sorted(set(from_seq) - set(inputs))
        if unknown:
            raise ReplayError(f"{', '.join(unknown)}: not an input stream of {service.name} "
                              f"(its inputs: {', '.join(inputs)})")
    if await schema_exists(database_url, schema):
        raise ReplayError(f"schema {schema} exists already; a replay builds a fresh schema (name another, "
                          "or drop that one)")
    report = ReplayReport(service=service.name, schema=schema)
    pool = await create_pool(database_url, schema, max_size=2)
    nc = await connect_nats(nats_url, f"replay-{service.name}")
    try:
        await migrate(pool, schema, service.migrations)
        js = nc.jetstream()
        upto: dict[str, int] = {}
        for stream in inputs:
            try:
                upto[stream] = (await js.stream_info(stream)).state.last_seq
            except NotFoundError:
                upto[stream] = 0
        sources = [_source(js, i, sub, _start(sub.consumer.stream, from_seq, from_time), upto[sub.consumer.stream])
                   for i, sub in enumerate(service.subscriptions)]
        applier = _Applier(pool, service.subscriptions, report)
        t0 = last = time.perf_counter()
        async for runs in chunks(merge(sources), max(1, batch_size)):
            for run in runs:
                report.events += len(run)
                seen = report.streams.setdefault(service.subscriptions[run[0].sub].consumer.durable,
                                                 [run[0].seq, run[0].seq])
                seen[1] = run[-1].seq
            await applier.chunk(runs)
            now = time.perf_counter()
            if progress is not None and now - last >= progress_every_s:
                report.seconds = now - t0
                progress(report)
                last = now
        report.seconds = time.perf_counter() - t0
        async with pool.acquire() as con:
            report.applied = await con.fetchval("SELECT count(*) FROM inbox")
            report.emitted = await con.fetchval("SELECT count(*) FROM outbox")
        report.duplicates = report.events - report.applied - report.invalid - report.refused - report.failed
    finally:
        await nc.close()
        await pool.close()
    return report


def load_service(name: str, schema: str) -> Service:
    """The service `services.<name>` as its own process would build it (settings from the environment,
    e.g. SETTLEMENT_FEE_BPS), on `schema`."""
    try:
        app = importlib.import_module(f"services.{name}.app")
        settings_mod = importlib.import_module(f"services.{name}.settings")
    except ModuleNotFoundError:
        raise ReplayError(f"no service {name!r}") from None
    classes = [v for v in vars(settings_mod).values()
               if isinstance(v, type) and issubclass(v, CommonSettings) and v is not CommonSettings]
    if len(classes) != 1:
        raise ReplayError(f"services.{name}.settings should define one settings class, not {len(classes)}")
    settings = classes[0](**{f"{name}_schema": schema})
    service: Service = app.create_service(settings)
    return service


async def drop_schema(database_url: str, schema: str) -> None:
    check_schema(schema)
    con = await asyncpg.connect(database_url)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await con.close()
