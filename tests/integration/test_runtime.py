"""The batch consumer runtime every service runs on, with a tiny service of its own."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.js import JetStreamContext

from libs.common import outbox
from libs.common.bus import OUTAGE_RETRIES_WHILE_UP, PermanentError, Runtime, Service, Subscription
from libs.common.db import create_pool
from libs.common.envelope import Envelope, derive, new_envelope
from libs.common.events.intake import JobRejected
from libs.common.events.sdk import JobSubmitted
from libs.common.localinfra import Infra
from libs.common.manifest import FieldError
from libs.common.migrate import migrate
from libs.common.streams import ConsumerSpec
from tests.support import eventually

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "runtime_migrations"


def submission(n: int, **manifest: Any) -> Envelope[Any]:
    return new_envelope(JobSubmitted(manifest={"n": n, **manifest}), source="sdk", party="t-rt",
                        correlation_id=uuid.uuid4())


class Probe:
    """A handler that records what it applied (in its own table, in the batch transaction)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def handle(self, tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
        self.batches.append(len(events))
        for ev in events:
            m = ev.payload.manifest
            if m.get("poison") == "permanent":
                raise PermanentError("this one can never be applied")
            if m.get("poison") == "transient":
                raise ConnectionError("the database went away (pretend)")
            await tx.execute("INSERT INTO applied (event_id, n) VALUES ($1, $2)", ev.id, m["n"])
        return [derive(ev, JobRejected(tenant="rt", name=f"n{ev.payload.manifest['n']}",
                                       errors=[FieldError(field="x", reason="probe")]), source="intake")
                for ev in events]


@pytest.fixture
async def probe_runtime(infra: Infra, bus: tuple[Any, JetStreamContext]) -> Any:
    schema = f"test_{uuid.uuid4().hex[:8]}_rt"
    probe = Probe()
    spec = ConsumerSpec("intake-probe-submitted", "SDK", "sdk.job.submitted.*", max_deliver=2, ack_wait_s=5)
    service = Service(name="intake", schema=schema, migrations=MIGRATIONS,
                      subscriptions=[Subscription(spec, probe.handle)])
    rt = Runtime(service, infra.nats_url, infra.database_url, batch_size=50)
    await rt.start()
    try:
        yield rt, probe, schema
    finally:
        await rt.stop()
        con = await asyncpg.connect(infra.database_url)
        await con.execute(f"DROP SCHEMA {schema} CASCADE")
        await con.close()


async def applied(infra: Infra, schema: str) -> list[int]:
    con = await asyncpg.connect(infra.database_url)
    try:
        return [r["n"] for r in await con.fetch(f"SELECT n FROM {schema}.applied ORDER BY n")]
    finally:
        await con.close()


async def dead_letters(js: JetStreamContext) -> list[Any]:
    info = await js.stream_info("DLQ")
    return [await js.get_msg("DLQ", s) for s in range(info.state.first_seq, info.state.last_seq + 1)
            if info.state.messages]


async def test_a_poison_message_in_a_batch_is_isolated_and_the_rest_is_applied_once(
        probe_runtime: Any, infra: Infra, bus: Any) -> None:
    rt, probe, schema = probe_runtime
    _, js = bus
    events = [submission(n) for n in range(1, 6)] + [submission(99, poison="permanent")] + \
             [submission(n) for n in range(6, 11)]
    for ev in events:
        await js.publish("sdk.job.submitted.t-rt", ev.to_bytes(), headers={"Nats-Msg-Id": str(ev.id)})
    assert await eventually(lambda: _eq(applied(infra, schema), list(range(1, 11))), what="ten applied")
    [letter] = await eventually(lambda: dead_letters(js), what="the dead letter")
    assert letter.subject == "dlq.intake-probe-submitted.sdk.job.submitted.t-rt"
    assert letter.headers["Strongmoose-Error"] == "PermanentError: this one can never be applied"
    assert letter.headers["Strongmoose-Stream"] == "SDK" and letter.headers["Strongmoose-Stream-Seq"] == "6"
    # every applied event's outgoing event was published once, in order, with its id as Nats-Msg-Id
    out = await eventually(lambda: _count(js, "INTAKE", 10), what="ten published")
    assert out


async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_deliver(
        probe_runtime: Any, infra: Infra, bus: Any) -> None:
    rt, probe, schema = probe_runtime
    _, js = bus
    ev = submission(1, poison="transient")
    await js.publish("sdk.job.submitted.t-rt", ev.to_bytes(), headers={"Nats-Msg-Id": str(ev.id)})
    [letter] = await eventually(lambda: dead_letters(js), what="the dead letter")
    assert "ConnectionError: the database went away" in letter.headers["Strongmoose-Error"]
    # a connection error while the database answers is retried in place a few times (it may have been a
    # connection that died with a restart); then each delivery counts: delivered max_deliver = 2 times, parked
    assert probe.batches.count(1) == 2 * (1 + OUTAGE_RETRIES_WHILE_UP)
    assert await applied(infra, schema) == []


async def test_the_relay_republishing_committed_rows_adds_nothing_to_the_stream(
        probe_runtime: Any, infra: Infra, bus: Any) -> None:
    rt, probe, schema = probe_runtime
    _, js = bus
    for n in range(3):
        ev = submission(n)
        await js.publish("sdk.job.submitted.t-rt", ev.to_bytes(), headers={"Nats-Msg-Id": str(ev.id)})
    await eventually(lambda: _count(js, "INTAKE", 3), what="three published")
    # a relay that crashed after publishing but before recording it publishes the same rows again
    pool = await create_pool(infra.database_url, schema)
    try:
        async with pool.acquire() as con:
            await con.execute("UPDATE outbox SET published_at = NULL")
            assert await outbox.Relay(pool, js, schema).publish_pending(con) == 3
    finally:
        await pool.close()
    assert (await js.stream_info("INTAKE")).state.messages == 3  # the duplicate window dropped them


async def test_migrations_apply_once(infra: Infra) -> None:
    schema = f"test_{uuid.uuid4().hex[:8]}_mig"
    pool = await create_pool(infra.database_url, schema)
    try:
        first = await migrate(pool, schema, MIGRATIONS)
        assert first == ["common/0001_inbox_outbox.sql", "0001_applied.sql"]
        assert await migrate(pool, schema, MIGRATIONS) == []
    finally:
        async with pool.acquire() as con:
            await con.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def _eq(got: Any, want: list[int]) -> bool:
    return await got == want


async def _count(js: JetStreamContext, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages == n
