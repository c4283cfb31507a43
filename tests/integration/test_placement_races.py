"""Placement's consumers run side by side: the match of a job (FundsHeld) and the loss of its node (OfferLost)
may be handled in two transactions at the same moment. Whichever commits first, the workload must end given
up (PlacementFailed, so that matching books the job elsewhere), never left assigned on a node that is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from libs.common.envelope import Envelope, new_envelope
from libs.common.events.matching import JobMatched, OfferLost
from libs.common.events.settlement import FundsHeld
from libs.common.ids import derived_id, job_id, offer_id
from libs.common.localinfra import Infra
from services.placement import service
from tests.integration.test_ledger import T0, request
from tests.support import migrated_schema

pytestmark = pytest.mark.integration

MIGRATIONS = Path(service.__file__).parent / "migrations"


@pytest_asyncio.fixture
async def two_connections(infra: Infra) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """Two connections on one fresh placement schema: two consumers' transactions."""
    schema = f"test_placement_{uuid.uuid4().hex[:10]}"
    await migrated_schema(infra.database_url, schema, MIGRATIONS)
    cons = [await asyncpg.connect(infra.database_url, server_settings={"search_path": schema}) for _ in range(2)]
    try:
        yield cons[0], cons[1]
    finally:
        await cons[0].execute(f"DROP SCHEMA {schema} CASCADE")
        for con in cons:
            await con.close()


def funds_held(name: str) -> Envelope[Any]:
    r = request("xyz", name)
    jid = job_id("xyz", name)
    match = JobMatched(job_id=jid, request=r, offer_id=offer_id("elastx", "n1"), vendor="elastx", node="n1",
                       region="se-sto", price_micro_eur_per_dtu_hour=38_000, dtu_rate=r.resources.dtu_rate,
                       start_at=T0, end_at=T0 + timedelta(hours=1))
    return new_envelope(FundsHeld(job_id=jid, tenant="xyz", amount_micro_eur=50_000, match=match),
                        source="settlement", party="t-xyz", correlation_id=jid, time=T0 + timedelta(seconds=1),
                        id=derived_id(jid, "FundsHeld"))


def withdrawn() -> Envelope[Any]:
    oid = offer_id("elastx", "n1")
    return new_envelope(OfferLost(offer_id=oid, vendor="elastx", node="n1", last_published_at=T0,
                                  lost_at=T0 + timedelta(seconds=2), cause="withdrawn", reason="maintenance"),
                        source="matching", party="v-elastx", correlation_id=oid, time=T0 + timedelta(seconds=2))


@pytest.mark.parametrize("first", ["placed", "lost"])
async def test_a_match_placed_while_its_node_is_lost_is_given_up_whichever_commits_first(
        two_connections: tuple[asyncpg.Connection, asyncpg.Connection], first: str) -> None:
    place_con, lose_con = two_connections
    first_con, second_con = (place_con, lose_con) if first == "placed" else (lose_con, place_con)
    handlers = {place_con: (service.place_jobs, [funds_held("j1")]), lose_con: (service.lose_nodes, [withdrawn()])}
    first_tx = first_con.transaction()
    await first_tx.start()
    out = await handlers[first_con][0](first_con, handlers[first_con][1])

    async def second() -> list[Envelope[Any]]:
        async with second_con.transaction():
            return await handlers[second_con][0](second_con, handlers[second_con][1])
    racing = asyncio.create_task(second())
    await asyncio.sleep(0.3)  # the second transaction runs while the first has not committed
    await first_tx.commit()
    out += await racing

    [workload] = await place_con.fetch("SELECT status, reason FROM workloads")
    assert workload["status"] == "unplaced", (workload, [e.type for e in out])
    assert "withdrawn by its vendor" in workload["reason"] and workload["reason"].endswith(
        ": maintenance")
    assert [e.type for e in out].count("PlacementFailed") == 1
