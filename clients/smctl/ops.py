"""`smctl ops replay` and `smctl ops digest`: rebuild a service from its streams, and show that the
rebuild equals the live state.

The replay runs inside smctl (libs.common.replay): it needs the service's code and the database, and
nothing else; no service process is involved and nothing is published. The digests of live schemas
come from the services' built-in `digest` query; the digest of a replay from smctl's own connection.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import asyncpg
from rich.table import Table
from rich.text import Text

from clients.sdk.client import SERVICES, Exchange, ExchangeError
from clients.smctl import stack as stack_mod
from libs.common.digest import differing_tables, state_digest
from libs.common.replay import ReplayError, ReplayReport, drop_schema, load_service, replay

_FROM_SEQ = re.compile(r"^(?:(?P<stream>[A-Z][A-Z0-9_]*)[:=])?(?P<seq>[0-9]+)$")


class OpsError(Exception):
    """A replay or digest that cannot be done as asked; the message says why."""


def check_service(name: str) -> str:
    if name not in SERVICES:
        raise OpsError(f"unknown service {name!r}; one of: {', '.join(SERVICES)}")
    return name


def parse_from_seq(values: list[str]) -> int | dict[str, int] | None:
    """`N` (every input stream from sequence N) or `STREAM:N ...` (those streams; the others from 1)."""
    if not values:
        return None
    parsed = []
    for v in values:
        m = _FROM_SEQ.match(v.strip())
        if m is None or int(m["seq"]) < 1:
            raise OpsError(f"--from-seq {v!r}: give a stream sequence N >= 1, or STREAM:N (e.g. AGENT:120)")
        parsed.append((m["stream"], int(m["seq"])))
    plain = [s for name, s in parsed if name is None]
    if plain and len(parsed) > 1:
        raise OpsError("--from-seq: give one N for every input stream, or STREAM:N for some, not both")
    return plain[0] if plain else {name: s for name, s in parsed if name is not None}


def parse_from_time(value: str | None) -> datetime | None:
    """An ISO 8601 time with its time zone (as everywhere else a time enters the exchange)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(f"--from-time {value!r}: not an ISO 8601 time (e.g. 2025-03-25T08:00:00Z)") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise OpsError(f"--from-time {value!r}: has no time zone (add Z or +01:00)")
    return t


def database_url(given: str | None, state_dir: Path) -> str:
    """--database-url / DATABASE_URL, else the PostgreSQL `smctl up` recorded in the state dir."""
    if given:
        return given
    infra = stack_mod.read_infra(state_dir)
    if infra is None:
        raise OpsError(f"no database: no exchange started here ({stack_mod.infra_file(state_dir)} is missing); "
                       "run `smctl up`, or name one with --database-url or DATABASE_URL")
    return infra.database_url


def default_schema(service: str) -> str:
    """The schema the service's own process would use (`<SERVICE>_SCHEMA`, else its name)."""
    return os.environ.get(f"{service.upper()}_SCHEMA") or service


def replay_schema_name(live: str, now: datetime | None = None) -> str:
    return f"{live}_replay_{(now or datetime.now(timezone.utc)):%Y%m%d%H%M%S}"


@dataclass
class ReplayOutcome:
    report: ReplayReport
    replay_digest: dict[str, Any]
    live_digest: dict[str, Any] | None
    live_note: str  # why there is no live digest, when there is none
    dropped: bool


async def live_schema(nats_url: str, service: str) -> tuple[str | None, str]:
    """The schema the running service uses (its health says), or None and why not."""
    try:
        async with await Exchange.connect(nats_url) as ex:
            return (await ex.health(service))["schema"], ""
    except ExchangeError as e:
        return None, str(e)


async def run_replay(*, nats_url: str, database_url: str, service: str, schema: str | None,
                     from_seq: int | dict[str, int] | None, from_time: datetime | None, batch_size: int,
                     drop: bool, progress: Callable[[ReplayReport], None] | None = None) -> ReplayOutcome:
    live, note = await live_schema(nats_url, service)
    base = live or default_schema(service)
    target = schema or replay_schema_name(base)
    if target == base:
        raise OpsError(f"--schema {target} is {service}'s live schema; a replay builds a fresh one")
    if not target.startswith(base + "_"):
        # the service's digest query reads its own schema and its replays only
        raise OpsError(f"--schema {target}: a replay of {service} is named {base}_<something> "
                       f"(default {replay_schema_name(base)})")
    svc = load_service(service, target)
    try:
        report = await replay(svc, nats_url=nats_url, database_url=database_url, from_seq=from_seq,
                              from_time=from_time, batch_size=batch_size, progress=progress)
    except ReplayError as e:
        raise OpsError(str(e)) from None
    try:
        con = await asyncpg.connect(database_url)
        try:
            mine = await state_digest(con, target, svc.digest)
        finally:
            await con.close()
        theirs = None
        if live is not None:
            try:
                async with await Exchange.connect(nats_url, timeout_s=60.0) as ex:
                    theirs = await ex.query(service, "digest")
            except ExchangeError as e:
                note = str(e)
    finally:
        if drop:
            await drop_schema(database_url, target)
    return ReplayOutcome(report, {"service": service, **mine}, theirs, note, drop)


async def fetch_digests(nats_url: str, service: str, schema: str | None,
                        against: str | None) -> list[dict[str, Any]]:
    async with await Exchange.connect(nats_url, timeout_s=60.0) as ex:
        out = [await ex.query(service, "digest", schema=schema)]
        if against is not None:
            out.append(await ex.query(service, "digest", schema=against))
    return out


# -- rendering ----------------------------------------------------------------------------------------


def _notes(d: dict[str, Any]) -> str:
    excluded = [f"{t}.{c}" for t, v in sorted(d["tables"].items()) for c in v.get("excluded", [])]
    parts = [f"not state: {', '.join(d.get('not_state') or []) or '-'}"]
    if excluded:
        parts.append(f"columns left out: {', '.join(excluded)}")
    return "; ".join(parts)


def digest_table(d: dict[str, Any]) -> Table:
    table = Table(title=f"digest of {d.get('service', '?')}, schema {d['schema']}", title_justify="left")
    table.add_column("TABLE")
    table.add_column("ROWS", justify="right")
    table.add_column("SHA256")
    for name, t in sorted(d["tables"].items()):
        table.add_row(name, str(t["rows"]), t["sha256"][:16])
    return table


def digest_lines(d: dict[str, Any]) -> list[Text]:
    return [Text(f"state sha256 {d['sha256']}"), Text(_notes(d), style="dim")]


def comparison_table(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> Table:
    differ = set(differing_tables(a, b))
    table = Table()
    table.add_column("TABLE")
    table.add_column(f"{labels[0].upper()} ROWS", justify="right")
    table.add_column(f"{labels[1].upper()} ROWS", justify="right")
    table.add_column("")
    for name in sorted(set(a["tables"]) | set(b["tables"])):
        ra, rb = a["tables"].get(name, {}).get("rows", "-"), b["tables"].get(name, {}).get("rows", "-")
        table.add_row(name, str(ra), str(rb), Text("differs", style="red") if name in differ
                      else Text("equal", style="green"))
    return table


def comparison_heading(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> Text:
    return Text(f"{a.get('service', '?')}: {labels[0]} schema {a['schema']}, {labels[1]} schema {b['schema']}")


def verdict(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> Text:
    differ = differing_tables(a, b)
    if not differ:
        return Text(f"state: {labels[1]} equals {labels[0]} (sha256 {a['sha256']})", style="green")
    return Text(f"state: {labels[1]} differs from {labels[0]} in {', '.join(differ)}", style="red")


def emitted_line(live: dict[str, Any], rebuilt: dict[str, Any]) -> Text | None:
    """Whether the replay derived the same events as the live run emitted (not state: a hint)."""
    a, b = live.get("emitted"), rebuilt.get("emitted")
    if not a or not b:
        return None
    if a["sha256"] == b["sha256"]:
        return Text(f"emitted: the same {a['rows']} event ids as live (kept in the replay's outbox, not published)",
                    style="dim")
    return Text(f"emitted: {b['rows']} events, live {a['rows']}; the ids differ (kept in the replay's outbox, "
                "not published)", style="dim")


def report_lines(r: ReplayReport) -> list[Text]:
    lines = [Text(f"replayed {r.events} events into {r.schema} in {r.seconds:.2f} s: {r.events_per_s:,.0f} events/s"),
             Text(f"  applied {r.applied} · duplicates {r.duplicates} · invalid {r.invalid} · refused {r.refused} · "
                  f"failed {r.failed} · emitted {r.emitted} (not published)")]
    if r.invalid or r.refused or r.failed:
        lines.append(Text("  skipped as live would dead-letter them (failed: live retries, then dead-letters):",
                          style="yellow"))
        lines += [Text(f"    {e}", style="yellow") for e in r.errors]
    reads = ", ".join(f"{c} {a}..{b}" for c, (a, b) in sorted(r.streams.items()))
    lines.append(Text(f"  read (stream seqs): {reads or 'nothing'}", style="dim"))
    return lines
