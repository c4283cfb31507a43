"""Fixtures: real NATS JetStream and PostgreSQL, started once per run on free loopback ports (or the
ones named by NATS_URL / DATABASE_URL), and the five services running in this event loop on fresh
schemas per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.bus import Runtime
from libs.common.localinfra import Infra, ensure_infra
from libs.common.streams import ALL_STREAMS, ensure_streams
from tests.support import Exchange

SERVICES = ("intake", "matching", "placement", "metering", "settlement")


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    state = Path(tempfile.mkdtemp(prefix="strongmoose-test-"))
    inf = ensure_infra(state, nats_url=os.environ.get("NATS_URL"), database_url=os.environ.get("DATABASE_URL"))
    try:
        yield inf
    finally:
        inf.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest_asyncio.fixture
async def bus(infra: Infra) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A NATS connection on empty streams: every test starts from a clean bus."""
    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    for name in ALL_STREAMS:
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    for attempt in range(50):
        try:
            await ensure_streams(js)
            break
        except nats.js.errors.ServerError:  # the server may still be removing a just-deleted stream's store
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)
    try:
        yield nc, js
    finally:
        await nc.drain()


@pytest_asyncio.fixture
async def exchange(infra: Infra, bus: tuple[NATS, JetStreamContext]) -> AsyncIterator[Exchange]:
    from services.intake.app import create_service as intake
    from services.intake.settings import IntakeSettings
    from services.matching.app import create_service as matching
    from services.matching.settings import MatchingSettings
    from services.metering.app import create_service as metering
    from services.metering.settings import MeteringSettings
    from services.placement.app import create_service as placement
    from services.placement.settings import PlacementSettings
    from services.settlement.app import create_service as settlement
    from services.settlement.settings import SettlementSettings

    nc, js = bus
    tag = uuid.uuid4().hex[:8]
    schemas = {s: f"test_{tag}_{s}" for s in SERVICES}
    services = [
        intake(IntakeSettings(intake_schema=schemas["intake"])),
        matching(MatchingSettings(matching_schema=schemas["matching"])),
        placement(PlacementSettings(placement_schema=schemas["placement"])),
        metering(MeteringSettings(metering_schema=schemas["metering"])),
        settlement(SettlementSettings(settlement_schema=schemas["settlement"], settlement_fee_bps=250)),
    ]
    ex = Exchange(nc=nc, js=js, database_url=infra.database_url, schemas=schemas)
    try:  # whatever fails in here, every runtime started is stopped: none may outlive its test
        for svc in services:
            rt = Runtime(svc, infra.nats_url, infra.database_url, batch_size=100)
            ex.runtimes[svc.name] = rt
            await rt.start()
        await ex.deposit("xyz", 1_000_000_000)  # €1,000: the tests' tenant can pay for its jobs
        yield ex
        await assert_ledger_holds(infra.database_url, schemas["settlement"])  # after every scenario
    finally:
        for rt in ex.runtimes.values():
            await rt.stop()
        con = await asyncpg.connect(infra.database_url)
        try:
            for schema in schemas.values():
                await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await con.close()


async def assert_ledger_holds(database_url: str, schema: str) -> None:
    """Every ledger invariant, read straight from settlement's schema: each committed batch must leave
    the ledger balanced, whatever the test did to the services."""
    from services.settlement import store

    con = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        failed = [c for c in await store.check(con) if not c["ok"]]
    finally:
        await con.close()
    assert not failed, f"the ledger broke an invariant: {failed}"
