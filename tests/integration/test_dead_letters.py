"""`smctl ops dlq`: an operator sees what was refused and why, and can send it again."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from libs.common.envelope import new_envelope
from libs.common.events.sdk import JobSubmitted
from libs.common.ids import job_id
from libs.common.localinfra import Infra
from tests.e2e.test_seed_job import seed_manifest
from tests.support import Exchange, eventually

pytestmark = pytest.mark.integration


async def smctl(infra: Infra, *args: str) -> tuple[int, str]:
    """Run the CLI as a user does, without blocking the services running in this event loop."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "smctl"), *args, env={**os.environ, "NATS_URL": infra.nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_an_empty_dead_letter_stream_lists_nothing_and_a_missing_letter_is_named(exchange: Exchange,
                                                                                      infra: Infra) -> None:
    code, out = await smctl(infra, "ops", "dlq", "list", "-o", "json")
    assert code == 0 and json.loads(out) == [], out
    for seq in ("0", "999"):
        code, out = await smctl(infra, "ops", "dlq", "show", seq)
        assert code == 1 and f"no dead letter {seq}" in out, out
        code, out = await smctl(infra, "ops", "dlq", "redrive", seq)
        assert code == 1 and f"no dead letter {seq}" in out and "unexpected" not in out, out


async def test_a_poison_message_is_listed_with_its_consumer_and_reason(exchange: Exchange, infra: Infra) -> None:
    await exchange.js.publish("sdk.job.submitted.t-xyz", b"{not json", headers={"Nats-Msg-Id": "poison"})

    async def listed() -> list[dict[str, object]]:
        code, out = await smctl(infra, "ops", "dlq", "list", "-o", "json")
        assert code == 0, out
        return json.loads(out)
    [letter] = await eventually(listed, what="the dead letter in the list")
    assert letter["consumer"] == "intake-job-submitted"
    assert letter["original_subject"] == "sdk.job.submitted.t-xyz"
    assert "invalid event: not JSON" in str(letter["error"])
    code, out = await smctl(infra, "ops", "dlq", "show", str(letter["seq"]))
    assert code == 0 and "{not json" in out


async def test_a_redriven_dead_letter_is_applied_and_leaves_the_dead_letter_stream(exchange: Exchange,
                                                                                  infra: Infra) -> None:
    # a valid submission that was dead-lettered (say, while the database was away too long)
    env = new_envelope(JobSubmitted(manifest=seed_manifest()), source="sdk", party="t-xyz",
                       correlation_id=job_id("xyz", "my-first-sparkjob"))
    ack = await exchange.js.publish(
        "dlq.intake-job-submitted.sdk.job.submitted.t-xyz", env.to_bytes(),
        headers={"Strongmoose-Consumer": "intake-job-submitted", "Strongmoose-Error": "ConnectionError: gone",
                 "Strongmoose-Subject": "sdk.job.submitted.t-xyz", "Strongmoose-Stream": "SDK",
                 "Strongmoose-Stream-Seq": "1"})
    code, out = await smctl(infra, "ops", "dlq", "redrive", str(ack.seq), str(ack.seq))  # the second is gone
    assert code == 1 and f"redrove {ack.seq} to sdk.job.submitted.t-xyz" in out, out
    assert f"no dead letter {ack.seq}" in out, out
    job = await exchange.wait_status("xyz", "my-first-sparkjob", "accepted", "waiting")
    assert job["timeline"][0]["type"] == "JobAccepted"
    code, out = await smctl(infra, "ops", "dlq", "list", "-o", "json")
    assert json.loads(out) == []


async def test_redrive_without_naming_letters_asks_for_them(infra: Infra) -> None:
    code, out = await smctl(infra, "ops", "dlq", "redrive")
    assert code == 1 and "name the dead letters to redrive" in out
