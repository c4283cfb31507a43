"""smctl ops replay / digest without servers: arguments, clear errors, and how digests are shown."""

import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from clients.smctl.main import app
from clients.smctl.ops import (
    OpsError,
    comparison_heading,
    comparison_table,
    digest_lines,
    digest_table,
    emitted_line,
    parse_from_seq,
    parse_from_time,
    replay_schema_name,
    report_lines,
    verdict,
)
from libs.common.replay import ReplayReport

runner = CliRunner()


def digest(schema: str, **tables: tuple[int, str]) -> dict[str, Any]:
    return {"service": "settlement", "schema": schema, "sha256": "f" * 64 if "x" in schema else "a" * 64,
            "tables": {k: {"rows": n, "sha256": h * 64} for k, (n, h) in tables.items()},
            "not_state": ["inbox", "outbox", "schema_migrations"], "emitted": {"rows": 3, "sha256": "e" * 64}}


def shown(*renderables: Any) -> str:
    console = Console(record=True, width=160)
    for r in renderables:
        console.print(r)
    return console.export_text()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def test_from_seq_is_one_sequence_for_every_stream_or_one_per_named_stream() -> None:
    assert parse_from_seq([]) is None
    assert parse_from_seq(["120"]) == 120
    assert parse_from_seq(["AGENT:120", "SDK=7"]) == {"AGENT": 120, "SDK": 7}
    for bad in (["0"], ["agent:3"], ["AGENT:"], ["12", "SDK:3"]):
        with pytest.raises(OpsError, match="--from-seq"):
            parse_from_seq(bad)


def test_from_time_without_a_zone_is_utc() -> None:
    with pytest.raises(OpsError, match="has no time zone"):
        parse_from_time("2025-03-25T08:00:00")
    assert parse_from_time("2025-03-25T08:00:00Z") == datetime(2025, 3, 25, 8, tzinfo=timezone.utc)
    with pytest.raises(OpsError, match="not an ISO 8601 time"):
        parse_from_time("yesterday")


def test_a_replay_schema_is_named_after_the_live_one_and_the_time() -> None:
    assert replay_schema_name("settlement", datetime(2025, 3, 25, 8, 1, 2, tzinfo=timezone.utc)) == (
        "settlement_replay_20250325080102")


def test_replay_of_an_unknown_service_names_the_services() -> None:
    result = runner.invoke(app, ["ops", "replay", "billing"])
    assert result.exit_code == 1
    assert "unknown service 'billing'" in result.output and "settlement" in result.output


def test_replay_refuses_both_starting_points() -> None:
    result = runner.invoke(app, ["ops", "replay", "intake", "--from-seq", "3", "--from-time", "2025-03-25T08:00:00Z"])
    assert result.exit_code == 1
    assert "not both" in result.output


def test_replay_without_a_database_says_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = runner.invoke(app, ["ops", "replay", "intake", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no database" in result.output and "--database-url" in result.output


def test_digest_without_an_exchange_says_how_to_start_it(closed_port_url: str) -> None:
    result = runner.invoke(app, ["--nats-url", closed_port_url, "ops", "digest", "intake"])
    assert result.exit_code == 1
    assert "is the exchange running? (smctl up)" in result.output
    assert "Traceback" not in result.output


def test_a_digest_shows_rows_and_hash_per_table_and_what_is_not_state() -> None:
    d = digest("settlement", transfers=(12, "1"), holds=(3, "2"))
    d["tables"]["holds"]["excluded"] = ["note"]
    text = shown(digest_table(d), *digest_lines(d))
    assert "digest of settlement, schema settlement" in text
    assert "transfers" in text and "12" in text and "1" * 16 in text
    assert f"state sha256 {'a' * 64}" in text
    assert "not state: inbox, outbox, schema_migrations; columns left out: holds.note" in text


def test_a_comparison_names_the_tables_that_differ() -> None:
    live = digest("settlement", transfers=(12, "1"), holds=(3, "2"), accounts=(5, "3"))
    rebuilt = digest("settlement_replay_x", transfers=(10, "9"), holds=(3, "2"), accounts=(5, "3"))
    labels = ("live", "replay")
    text = shown(comparison_heading(live, rebuilt, labels), comparison_table(live, rebuilt, labels),
                 verdict(live, rebuilt, labels))
    assert "settlement: live schema settlement, replay schema settlement_replay_x" in text
    rows = [ln.replace("│", " ").split() for ln in text.splitlines()]
    lines = {r[0]: " ".join(r) for r in rows if r and r[0] in live["tables"]}
    assert "differs" in lines["transfers"] and "12" in lines["transfers"] and "10" in lines["transfers"]
    assert "equal" in lines["holds"] and "equal" in lines["accounts"]
    assert "state: replay differs from live in transfers" in text
    assert "state: replay equals live" in shown(verdict(live, live, ("live", "replay")))
    assert "the same 3 event ids as live" in shown(emitted_line(live, rebuilt))


def test_a_replay_report_says_how_fast_and_what_it_skipped() -> None:
    r = ReplayReport(service="intake", schema="intake_replay_x", events=5000, applied=4990, duplicates=8, invalid=2,
                     seconds=2.0, emitted=400, streams={"intake-job-submitted": [1, 900]},
                     errors=["invalid: SDK seq 2 (intake-job-submitted): not JSON"])
    text = shown(*report_lines(r))
    assert "replayed 5000 events into intake_replay_x in 2.00 s: 2,500 events/s" in text
    assert "applied 4990 · duplicates 8 · invalid 2 · refused 0 · failed 0 · emitted 400 (not published)" in text
    assert "invalid: SDK seq 2" in text and "intake-job-submitted 1..900" in text
