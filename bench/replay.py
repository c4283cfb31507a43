"""Replay speed, and whether each service's rebuild equals its live state after a loaded run.

    .venv/bin/python bench/replay.py [--jobs 1000] [--batch 200]

Starts its own NATS + PostgreSQL (or uses NATS_URL / DATABASE_URL), runs the five services in this
event loop with the fake vendor of bench/pipeline.py, settles --jobs jobs built from the trace (in one
burst, as the pipeline benchmark does), waits until every consumer is drained, then replays each
service into a fresh schema (libs.common.replay, as `smctl ops replay` does) and prints per service:
the events read, seconds, events/s, and the digest comparison with the live schema. It prints figures;
it never asserts speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import asyncpg  # noqa: E402
import nats  # noqa: E402
from pipeline import (  # noqa: E402
    SERVICES,
    FakeVendor,
    ask,
    cancel_all,
    delete_streams,
    drained,
    make_services,
    manifest,
    offer_events,
    stop_runtime,
    trace_tasks,
    wait_for,
)

from clients.agent.catalog import default_data_dir  # noqa: E402
from libs.common.bus import Runtime  # noqa: E402
from libs.common.digest import differing_tables, state_digest  # noqa: E402
from libs.common.envelope import new_envelope  # noqa: E402
from libs.common.events.sdk import DepositRequested, JobSubmitted  # noqa: E402
from libs.common.ids import job_id  # noqa: E402
from libs.common.localinfra import Infra, ensure_infra  # noqa: E402
from libs.common.replay import drop_schema, load_service, replay  # noqa: E402
from libs.common.streams import ALL_STREAMS, ensure_streams  # noqa: E402
from libs.common.subjects import subject_for  # noqa: E402


async def publish_all(js: Any, envs: list[Any]) -> None:
    futs = [await js.publish_async(subject_for(e), e.to_bytes(), headers={"Nats-Msg-Id": str(e.id)}) for e in envs]
    await asyncio.gather(*futs)


async def run(infra: Infra, args: argparse.Namespace) -> None:
    tasks = trace_tasks(default_data_dir() / "traces")
    nc = await nats.connect(infra.nats_url, name="bench-replay")
    js = nc.jetstream()
    await delete_streams(js, list(ALL_STREAMS))
    await ensure_streams(js)
    tag = uuid.uuid4().hex[:8]
    schemas = {s: f"bench_{tag}_{s}" for s in SERVICES}
    runtimes: list[Runtime] = []
    vendor = FakeVendor(nc.jetstream(), batch=200)
    bg: list[asyncio.Task[Any]] = []
    replicas: list[str] = []
    try:
        for svc in make_services(schemas):
            rt = Runtime(svc, infra.nats_url, infra.database_url, batch_size=args.batch)
            await rt.start()
            runtimes.append(rt)
        bg.append(asyncio.create_task(vendor.run(), name="fake-vendor"))
        t_start = datetime.now(timezone.utc).replace(microsecond=0)
        chosen = [tasks[i % len(tasks)] for i in range(args.jobs)]
        offers = offer_events(args.vendors, args.nodes, chosen, t_start)
        await publish_all(js, offers)
        await wait_for(lambda: _at_least(nc, "matching", "offers", len(offers)), 30, "offers in the book", 0.1)
        docs = [manifest(i, task, t_start + timedelta(days=200), "rp") for i, task in enumerate(chosen)]
        tenants = sorted({d["metadata"]["namespace"] for d in docs})
        await publish_all(js, [new_envelope(DepositRequested(tenant=t, amount_micro_eur=10**12, reference="bench"),
                                            source="sdk", party=f"t-{t}", correlation_id=uuid.uuid4())
                               for t in tenants])
        t0 = time.perf_counter()
        await publish_all(js, [new_envelope(JobSubmitted(manifest=d), source="sdk",
                                            party=f"t-{d['metadata']['namespace']}",
                                            correlation_id=job_id(d["metadata"]["namespace"], d["metadata"]["name"]))
                               for d in docs])

        seen: list[int] = []

        async def quiet() -> bool:  # drained, and no stream grew over the last three looks
            if not await drained(js, infra.database_url, schemas):
                seen.clear()
                return False
            seen.append(sum([(await js.stream_info(n)).state.messages for n in ALL_STREAMS]))
            return len(seen) >= 3 and len(set(seen[-3:])) == 1
        await wait_for(quiet, args.timeout, "quiescence", 0.5)
        live_s = time.perf_counter() - t0
        statuses = Counter(j["status"] for j in await ask(nc, "intake", "jobs", timeout=30))
        print(f"live: {args.jobs} jobs, quiet after {live_s:.1f} s, {dict(statuses)}; {seen[-1]} messages in the "
              "streams")
        vendor.stopped = True
        await cancel_all(bg)
        # the services stay up (idle) while the replays run, as in production
        print(f"{'service':<11} {'events':>7} {'seconds':>8} {'events/s':>9}  {'applied':>7} {'dup':>4} "
              f"{'skipped':>7} {'emitted':>7}  digest vs live")
        sum_events, sum_s = 0, 0.0
        for name in SERVICES:
            replica = f"{schemas[name]}_replay"
            replicas.append(replica)
            svc = load_service(name, replica)
            r = await replay(svc, nats_url=infra.nats_url, database_url=infra.database_url, batch_size=args.batch)
            con = await asyncpg.connect(infra.database_url)
            try:
                live = await state_digest(con, schemas[name], svc.digest)
                mine = await state_digest(con, replica, svc.digest)
            finally:
                await con.close()
            differ = differing_tables(live, mine)
            verdict = "equal" if not differ else "DIFFERS: " + ", ".join(
                f"{t} ({live['tables'].get(t, {}).get('rows', 0)} live rows)" for t in differ)
            print(f"{name:<11} {r.events:>7} {r.seconds:>8.2f} {r.events_per_s:>9.0f}  {r.applied:>7} "
                  f"{r.duplicates:>4} {r.invalid + r.refused + r.failed:>7} {r.emitted:>7}  {verdict}")
            if differ and args.show_diff:
                await show_diff(infra.database_url, schemas[name], replica, differ, args.show_diff)
            sum_events += r.events
            sum_s += r.seconds
        print(f"{'all':<11} {sum_events:>7} {sum_s:>8.2f} {sum_events / sum_s:>9.0f}")
    finally:
        vendor.stopped = True
        await cancel_all(bg)
        for rt in reversed(runtimes):
            await stop_runtime(rt)
        await delete_streams(js, list(ALL_STREAMS))
        await nc.close()
        for s in [*schemas.values(), *replicas]:
            await drop_schema(infra.database_url, s)


async def show_diff(database_url: str, live: str, rebuilt: str, tables: list[str], n: int) -> None:
    """Up to n rows per table that only one side has, side by side by their first column."""
    con = await asyncpg.connect(database_url)
    try:
        for t in tables:
            a = {r[0] for r in await con.fetch(f"SELECT to_jsonb(x)::text FROM {live}.{t} x")}
            b = {r[0] for r in await con.fetch(f"SELECT to_jsonb(x)::text FROM {rebuilt}.{t} x")}
            print(f"    {t}: {len(a - b)} rows only live, {len(b - a)} only in the replay")
            for row in sorted(a - b)[:n]:
                print(f"      live   {row}")
            for row in sorted(b - a)[:n]:
                print(f"      replay {row}")
    finally:
        await con.close()


async def _at_least(nc: Any, service: str, what: str, n: int) -> bool:
    return len(await ask(nc, service, what)) >= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=200, help="services' and the replays' batch size")
    ap.add_argument("--vendors", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--show-diff", type=int, default=0, metavar="N", help="print N differing rows per table")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    state = Path(tempfile.mkdtemp(prefix="strongmoose-replay-"))
    infra = ensure_infra(state, nats_url=os.environ.get("NATS_URL"), database_url=os.environ.get("DATABASE_URL"))
    try:
        asyncio.run(run(infra, args))
    finally:
        infra.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
