"""Faults under a running exchange: a service killed mid-transaction, NATS and PostgreSQL restarted, a delivery
that outlives its ack wait, events out of order, poison, an ambiguous commit, and an outage longer than a
service waits. Each test runs its own NATS and PostgreSQL (killing them disturbs no other test) and asserts
that no job is lost, nothing is applied twice and the ledger's checks pass (`Fault.exactly_once`)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.workload import FakeVendor, read_stream, subject_matches
from libs.common import subjects
from libs.common.envelope import new_envelope
from libs.common.events.agent import WorkloadReported
from libs.common.ids import job_id
from tests.fault.harness import T0, TENANT, VENDOR, Fault, fault_exchange
from tests.support import eventually

pytestmark = [pytest.mark.slow, pytest.mark.integration]


async def waiting_on_a_lock(f: Fault, query_prefix: str) -> int:
    """How many sessions wait for a lock while running a statement that starts with `query_prefix` (asked on a
    connection of its own: inside a transaction, pg_stat_activity keeps showing its first snapshot)."""
    con = await asyncpg.connect(f.servers.postgres.url)
    try:
        return await con.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                  "AND query ILIKE $1", query_prefix + "%")
    finally:
        await con.close()


async def statuses(f: Fault) -> dict[str, str]:
    return {j["name"]: j["status"] for j in await f.ex.query("intake", "jobs", tenant=TENANT)}


async def redeliveries(f: Fault) -> dict[str, int]:
    """Deliveries beyond the first, per service consumer: consumer deliveries minus the messages it matches."""
    out = {}
    for stream in ("SDK", "AGENT", "INTAKE", "MATCHING", "PLACEMENT", "METERING", "SETTLEMENT"):
        msgs = await read_stream(f.js, stream)
        for c in await f.js.consumers_info(stream):
            if c.name.split("-", 1)[0] not in f.ex.schemas:
                continue
            matching = sum(1 for m in msgs if subject_matches(c.config.filter_subject or ">", m.subject))
            if c.delivered.consumer_seq > matching:
                out[c.name] = c.delivered.consumer_seq - matching
    return out


async def test_a_service_killed_mid_transaction_applies_the_batch_once_after_its_restart(state_dir: Path) -> None:
    async with fault_exchange(state_dir, as_processes=("settlement",)) as f:
        await f.offer()
        f.start_vendor()
        await f.ex.quiet()
        blocker = await asyncpg.connect(f.servers.postgres.url)
        try:
            tx = blocker.transaction()
            await tx.start()
            # settlement will hold the jobs' money (inbox claimed, holds and transfers written) and then wait
            # to queue its FundsHeld: killed there, it has done everything but commit
            await blocker.execute("LOCK TABLE settlement.outbox IN EXCLUSIVE MODE")
            await f.submit(3)
            await eventually(lambda: waiting_on_a_lock(f, "INSERT INTO outbox"), 30,
                             "settlement inside its transaction")
            f.procs["settlement"].send_signal(signal.SIGKILL)
            f.procs["settlement"].wait(10)
            await tx.rollback()
        finally:
            await blocker.close()
        assert not [m for m in await read_stream(f.js, "SETTLEMENT") if b'"FundsHeld"' in m.data]
        f.spawn("settlement")
        await f.ready("settlement")
        # JetStream redelivers the JobMatched batch after its ack wait, to the new process
        await f.exactly_once()
        assert await f.dead_letters() == []


async def test_a_delivery_that_outlives_its_ack_wait_is_applied_once_by_two_instances(state_dir: Path) -> None:
    async with fault_exchange(state_dir, as_processes=("settlement",)) as f:
        f.procs["settlement-1"] = f.procs.pop("settlement")
        f.spawn("settlement")  # a second instance on the same durable consumers (scale-out)
        await f.offer()
        f.start_vendor()
        await f.ex.quiet()
        blocker = await asyncpg.connect(f.servers.postgres.url)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE settlement.outbox IN EXCLUSIVE MODE")
                await f.submit(1)
                # one instance waits inside its transaction past the ack wait (30 s); JetStream gives the message
                # to the other, whose inbox claim then waits for the first one's
                await eventually(lambda: waiting_on_a_lock(f, "INSERT INTO inbox"), 60,
                                 "the redelivered message claimed by the second instance")
        finally:
            await blocker.close()
        await f.exactly_once()
        assert (await redeliveries(f)).get("settlement-job-matched") == 1
        assert await f.dead_letters() == []


async def test_a_nats_restart_pauses_the_services_and_they_resume_where_they_stopped(state_dir: Path) -> None:
    async with fault_exchange(state_dir) as f:
        await f.offer()
        f.start_vendor()
        await f.submit(30)
        await eventually(lambda: _count(statuses(f), "settled", 3), 30, "the first jobs settled")
        await asyncio.to_thread(f.servers.nats.kill)  # SIGKILL: jobs in flight, relays and acks interrupted
        rts = f.ex.runtimes.values()
        await eventually(lambda: _all(not rt.ready.is_set() and rt.readiness()["nats"].startswith("reconnecting")
                                      for rt in rts), 10, "readiness saying NATS is away")
        await asyncio.to_thread(f.servers.nats.start)
        await eventually(lambda: _all(rt.ready.is_set() for rt in rts), 30, "ready again")
        await f.submit(10)
        await f.exactly_once()
        assert await f.dead_letters() == []


async def test_a_postgres_restart_pauses_the_services_without_failing_a_message(state_dir: Path) -> None:
    async with fault_exchange(state_dir) as f:
        await f.offer()
        f.start_vendor()
        await f.submit(30)
        await eventually(lambda: _count(statuses(f), "settled", 3), 30, "the first jobs settled")
        await asyncio.to_thread(f.servers.postgres.kill)  # SIGKILL: crash recovery on start
        await eventually(lambda: _all("unreachable" in rt.readiness()["database"] for rt in f.ex.runtimes.values()),
                         10, "readiness saying the database is away")
        reply = json.loads((await f.nc.request(subjects.query("intake", "health"), b"{}", timeout=5)).data)
        assert not reply["ok"] and "not ready: database unreachable" in reply["error"]
        await asyncio.sleep(2)  # the outage
        await asyncio.to_thread(f.servers.postgres.start)
        await f.exactly_once()
        assert await f.dead_letters() == []
        # messages in hand during the outage were kept in progress: no nak, no delivery counted against max_deliver
        assert await redeliveries(f) == {}


async def test_a_commit_whose_outcome_was_lost_is_resolved_by_the_inbox_not_applied_twice(state_dir: Path) -> None:
    async with fault_exchange(state_dir) as f:
        rt = f.ex.runtimes["matching"]
        original = rt._transaction
        lost: list[int] = []

        async def commit_then_lose_the_connection(sub: Any, events: list[Any]) -> Any:
            out = await original(sub, events)  # committed
            if not lost and any(e.type == "JobAccepted" for e in events):
                lost.append(len(events))
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            return out
        rt._transaction = commit_then_lose_the_connection  # type: ignore[method-assign]
        await f.offer()
        f.start_vendor()
        await f.submit(5)
        await f.exactly_once()
        assert lost, "the fault was never injected"
        assert await f.dead_letters() == []
        assert await redeliveries(f) == {}


class ReversedVendor(FakeVendor):
    """Reports the end first: succeeded, the last sample, the first, then running."""

    def reports(self, assigned: Any) -> list[Any]:
        return list(reversed(super().reports(assigned)))


async def test_events_out_of_order_and_stale_duplicates_change_nothing_twice(state_dir: Path) -> None:
    async with fault_exchange(state_dir) as f:
        await f.offer()
        f.start_vendor()
        await f.submit(1, prefix="in-order")
        await f.settled()
        f.vendor.stopped = True
        await asyncio.wait(f.tasks, timeout=5)
        f.vendor = ReversedVendor(f.js, batch=50, durable="fault-vendor", ack_wait_s=5.0)
        f.tasks = []
        f.start_vendor()
        await f.submit(4, prefix="reversed")
        await f.settled()
        await f.ex.quiet()
        wallet = await f.ex.query("settlement", "wallet", tenant=TENANT)
        invoice = await f.ex.query("settlement", "invoice", tenant=TENANT)
        # every job asked the same and used the same: disorder must not change what it costs
        assert len({line["total_micro_eur"] for line in invoice["lines"]}) == 1, invoice["lines"]
        # stale copies of every fact, published again with fresh message ids, long after the jobs settled
        for stream in ("MATCHING", "SETTLEMENT", "PLACEMENT", "METERING", "AGENT"):
            for m in await read_stream(f.js, stream):
                await f.js.publish(m.subject, m.data, headers={"Nats-Msg-Id": f"stale:{uuid.uuid4()}"})
        await f.ex.quiet()
        # a vendor that skips "running" (its reports came reversed) leaves no WorkloadStarted: that is allowed
        await f.exactly_once(optional=("WorkloadStarted",))
        assert await f.ex.query("settlement", "wallet", tenant=TENANT) == wallet
        assert await f.ex.query("settlement", "invoice", tenant=TENANT) == invoice
        assert set((await statuses(f)).values()) == {"settled"}
        assert await f.dead_letters() == []


class ShortJobVendor(FakeVendor):
    """Reports a job that ended before its first status report: usage, then succeeded, never running."""

    def reports(self, assigned: Any) -> list[Any]:
        return [e for e in super().reports(assigned)
                if not (isinstance(e.payload, WorkloadReported) and e.payload.status == "running")]


async def test_a_job_whose_running_report_never_came_is_still_metered_and_settled(state_dir: Path) -> None:
    """Placement lets a report skip `running` (a very short job, or a running report overtaken by the end), so
    no WorkloadStarted is ever published for such a workload; its meter must close all the same."""
    async with fault_exchange(state_dir) as f:
        f.vendor = ShortJobVendor(f.js, batch=50, durable="fault-vendor", ack_wait_s=5.0)
        await f.offer()
        f.start_vendor()
        await f.submit(2)
        await f.exactly_once(optional=("WorkloadStarted",))


async def test_poison_is_dead_lettered_once_per_consumer_and_the_jobs_around_it_go_through(state_dir: Path) -> None:
    async with fault_exchange(state_dir) as f:
        await f.offer()
        f.start_vendor()
        await f.submit(10)
        poison = [
            (subjects.JOB_SUBMITTED_ANY.replace("*", f"t-{TENANT}"), b"\xff\x00 not json"),
            (subjects.JOB_MATCHED_ANY.replace("*", f"t-{TENANT}"), b'{"hello": "strongmoose"}'),
            (subjects.WORKLOAD_REPORTED_ANY.replace("*", "v-evil"), new_envelope(WorkloadReported(
                workload_id=uuid.uuid4(), job_id=uuid.uuid4(), vendor=VENDOR, status="running", at=T0),
                source="agent", party=f"v-{VENDOR}", correlation_id=uuid.uuid4()).to_bytes()),
        ]
        expected: set[tuple[str, int]] = set()
        for subject, data in poison:
            ack = await f.js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
            for c in await f.js.consumers_info(ack.stream):
                if c.name.split("-", 1)[0] in f.ex.schemas and subject_matches(c.config.filter_subject or ">", subject):
                    expected.add((c.name, ack.seq))
        # well-formed, but about a workload nobody assigned: the handler says it can never be applied
        unknown = new_envelope(WorkloadReported(workload_id=uuid.uuid4(), job_id=job_id(TENANT, "nope"), vendor=VENDOR,
                                                status="succeeded", at=T0 + timedelta(seconds=1), exit_code=0),
                               source="agent", party=f"v-{VENDOR}", correlation_id=job_id(TENANT, "nope"))
        ack = await f.js.publish(subjects.subject_for(unknown), unknown.to_bytes(),
                                 headers={"Nats-Msg-Id": str(unknown.id)})
        expected.add(("placement-workload-reported", ack.seq))
        await f.submit(10)
        await f.exactly_once()
        letters = await f.dead_letters()
        got = {(m.headers["Strongmoose-Consumer"], int(m.headers["Strongmoose-Stream-Seq"])) for m in letters}
        assert got == expected and len(letters) == len(expected)
        [unknown_letter] = [m for m in letters if int(m.headers["Strongmoose-Stream-Seq"]) == ack.seq]
        assert "PermanentError: unknown workload" in unknown_letter.headers["Strongmoose-Error"]


async def test_an_outage_longer_than_a_service_waits_ends_it_for_its_supervisor(state_dir: Path) -> None:
    async with fault_exchange(state_dir, as_processes=("intake",), process_env={"MAX_OUTAGE_S": "3"}) as f:
        await asyncio.to_thread(f.servers.postgres.kill)
        # gave up after 3 s of waiting: exit 1, for its supervisor to start it again
        assert await asyncio.to_thread(f.procs["intake"].wait, 60) == 1
        assert "giving up: the database was unreachable for more than 3 s" in (state_dir / "intake.log").read_text()
        await asyncio.to_thread(f.servers.postgres.start)
        f.spawn("intake")
        await f.ready("intake")
        await f.offer()
        f.start_vendor()
        await f.submit(3)
        await f.exactly_once()


async def _count(statuses_: Any, status: str, n: int) -> bool:
    return sum(1 for s in (await statuses_).values() if s == status) >= n


async def _all(values: Any) -> bool:
    return all(values)
