"""localinfra starts NATS JetStream and PostgreSQL locally, restarts them with their data, and stops them."""

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from libs.common import localinfra
from libs.common.localinfra import Infra, ensure_infra

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def server_pids(infra: Infra) -> list[int]:
    pids = []
    for server in (infra.nats, infra.postgres):
        proc = psutil.Process(server.pid)
        pids += [proc.pid] + [child.pid for child in proc.children(recursive=True)]
    return pids


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"pid {pid} still running"
        except psutil.NoSuchProcess:
            pass


async def publish(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="LOCALINFRA", subjects=["localinfra.>"])
        ack = await js.publish("localinfra.hello", b"kept")
        assert (ack.stream, ack.seq) == ("LOCALINFRA", 1)
    finally:
        await nc.close()


async def assert_message_kept(url: str) -> None:
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_msg("LOCALINFRA", 1)
        assert msg.data == b"kept"
    finally:
        await nc.close()


async def assert_rows(url: str, expected: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select 1") == 1
        assert [r["v"] for r in await conn.fetch("select v from kept order by v")] == expected
    finally:
        await conn.close()


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Not pytest's own: a pytest session started meanwhile closes its folder to other users, and the
    PostgreSQL server runs as an unprivileged one when we are root."""
    path = Path(tempfile.mkdtemp(prefix="strongmoose-localinfra-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_start_restart_kill_stop(tmp_path):
    infra = ensure_infra(tmp_path, sync_interval="always")
    try:
        assert infra.started == ["nats", "postgres"]
        assert infra.nats_url.startswith("nats://127.0.0.1:")
        assert infra.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert infra.database_url.endswith("/strongmoose")
        assert "sync_interval: always" in (tmp_path / "nats.conf").read_text()

        await publish(infra.nats_url)
        conn = await asyncpg.connect(infra.database_url)
        assert await conn.fetchval("show max_connections") == "200"
        await conn.execute("create table kept (v text); insert into kept values ('a')")
        await conn.close()

        infra.nats.restart()
        infra.postgres.restart()
        assert infra.nats.url == infra.nats_url and infra.postgres.url == infra.database_url
        await assert_message_kept(infra.nats_url)
        await assert_rows(infra.database_url, ["a"])

        conn = await asyncpg.connect(infra.database_url)
        await conn.execute("insert into kept values ('b')")
        await conn.close()
        infra.nats.kill()
        infra.postgres.kill()
        infra.nats.restart()
        infra.postgres.restart()
        await assert_message_kept(infra.nats_url)
        await assert_rows(infra.database_url, ["a", "b"])
        pids = server_pids(infra)
    finally:
        infra.stop()
    assert_gone(pids)
    infra.stop()  # idempotent


async def test_stop_from_another_process_and_reuse_state_dir(tmp_path):
    infra = ensure_infra(tmp_path)
    try:
        await publish(infra.nats_url)
        conn = await asyncpg.connect(infra.database_url)
        await conn.execute("create table kept (v text); insert into kept values ('a')")
        await conn.close()
        pids = server_pids(infra)
        (tmp_path / "infra.json").write_text(json.dumps(infra.to_json()))
        stop = "import json, sys; from libs.common.localinfra import Infra; " \
               "Infra.from_json(json.load(open(sys.argv[1]))).stop()"
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", stop, str(tmp_path / "infra.json")],
                                cwd=REPO, check=True)
        assert_gone(pids)
    finally:
        infra.stop()  # reaps our children; nothing left to stop

    again = ensure_infra(tmp_path)
    try:
        await assert_message_kept(again.nats_url)
        await assert_rows(again.database_url, ["a"])
    finally:
        again.stop()


def test_given_urls_start_nothing(tmp_path):
    infra = ensure_infra(tmp_path, nats_url="nats://127.0.0.1:4222",
                         database_url="postgresql://postgres@127.0.0.1:5432/strongmoose")
    assert infra.started == [] and infra.nats is None and infra.postgres is None
    assert Infra.from_json(infra.to_json()) == infra
    infra.stop()
    assert not (tmp_path / "pgdata").exists()


def test_sync_interval_is_validated(tmp_path):
    with pytest.raises(ValueError):
        localinfra.start_nats(tmp_path, sync_interval="sometimes")


def test_free_port_is_bindable():
    port = localinfra.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
