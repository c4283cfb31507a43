"""deploy/healthcheck.py, the probe of compose and Kubernetes, passes for a running service and fails
otherwise; deploy/entrypoint.sh, the image's entrypoint, starts the process a name chooses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest

from libs.common.localinfra import Infra, free_port
from libs.common.streams import ensure_streams
from libs.common.subjects import query

REPO = Path(__file__).resolve().parents[3]
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "__main__.py").is_file())


def healthcheck(*args: str, nats_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "NATS_URL": nats_url, "HEALTHCHECK_TIMEOUT_S": "2", **env})


def load_healthcheck():
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_knows_every_service_and_asks_on_its_query_subject() -> None:
    module = load_healthcheck()
    assert sorted(module.SERVICES) == SERVICES
    for service in SERVICES:
        assert module.health_subject(service) == query(service, "health")


def test_healthcheck_refuses_an_unknown_target() -> None:
    result = healthcheck("billing", nats_url="nats://127.0.0.1:1")
    assert result.returncode == 1
    assert "usage" in result.stderr


def test_healthcheck_fails_fast_when_nats_is_unreachable() -> None:
    started = time.monotonic()
    result = healthcheck("intake", nats_url=f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "intake unhealthy" in result.stderr
    assert time.monotonic() - started < 15


async def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
async def test_healthcheck_passes_once_a_service_has_started_and_fails_after_it_stops(
        infra: Infra, tmp_path: Path) -> None:
    schema = f"test_{uuid.uuid4().hex[:8]}_metering"
    log = tmp_path / "metering.log"
    env = {**os.environ, "NATS_URL": infra.nats_url, "DATABASE_URL": infra.database_url, "METERING_SCHEMA": schema}
    with open(log, "wb") as out:
        # exactly what the image's entrypoint runs for `metering`
        proc = subprocess.Popen([sys.executable, "-m", "services.metering"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        async def passes():
            result = await asyncio.to_thread(healthcheck, "metering", nats_url=infra.nats_url)
            assert proc.poll() is None, log.read_text()
            return result.returncode == 0 and "metering healthy" in result.stdout

        await _until(passes, 60, "metering to answer its health query")
    finally:
        proc.terminate()
        proc.wait(30)
        con = await asyncpg.connect(infra.database_url)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await con.close()
    assert proc.returncode == 0, "SIGTERM is a clean stop"
    result = await asyncio.to_thread(healthcheck, "metering", nats_url=infra.nats_url)
    assert result.returncode == 1
    assert "nothing answers query.metering.health" in result.stderr


@pytest.mark.integration
async def test_healthcheck_of_the_agent_passes_once_its_durable_consumer_exists(infra: Infra) -> None:
    name = f"hc{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(healthcheck, "agent", nats_url=infra.nats_url, AGENT_NAME=name)
    assert result.returncode == 1
    assert f"agent-{name}" in result.stderr
    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    try:
        await ensure_streams(js)
        # what the agent creates when it starts (clients/agent/agent.py)
        await js.add_consumer("PLACEMENT", durable_name=f"agent-{name}", filter_subject=f"placement.none.{name}")
        result = await asyncio.to_thread(healthcheck, "agent", nats_url=infra.nats_url, AGENT_NAME=name)
        assert result.returncode == 0, result.stderr
    finally:
        await js.delete_consumer("PLACEMENT", f"agent-{name}")
        await nc.close()


# -- entrypoint.sh ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `python` prints the arguments it was given instead of running them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "python $*"\n')
    (bin_dir / "python").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=10)


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_runs_the_service_named_by_argument_or_env(service: str, fake_python: dict[str, str]) -> None:
    assert entrypoint(service, env=fake_python).stdout == f"python -m services.{service}\n"
    by_env = entrypoint(env={**fake_python, "STRONGMOOSE_SERVICE": service})
    assert by_env.stdout == f"python -m services.{service}\n"


def test_entrypoint_runs_the_agent_and_any_other_command(fake_python: dict[str, str]) -> None:
    assert entrypoint("agent", env=fake_python).stdout == "python -m clients.agent\n"
    assert entrypoint("echo", "hello", env=fake_python).stdout == "hello\n"


def test_entrypoint_without_a_name_says_what_it_needs(fake_python: dict[str, str]) -> None:
    result = entrypoint(env=fake_python)
    assert result.returncode == 64
    assert "STRONGMOOSE_SERVICE" in result.stderr and "intake" in result.stderr
