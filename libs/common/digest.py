"""A service's state as a digest, so that an operator can show that a rebuilt schema equals the live one.

The state of a service is every table of its schema except the bookkeeping every schema has (inbox,
outbox, migrations), with every column except those a service declares as legitimately different
between a live run and a replay (`StateTable.exclude`, e.g. a serial number that records processing
order). A table or column added by a later migration is part of the digest without anyone declaring it.

Each row is rendered by PostgreSQL as canonical JSON (`to_jsonb`, times in UTC), rows are sorted by
that text, and hashed: the same rows give the same sha256 whichever run wrote them and in whatever
order. All tables are read in one repeatable-read snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from libs.common.db import check_schema

BOOKKEEPING = ("inbox", "outbox", "schema_migrations")


@dataclass(frozen=True)
class StateTable:
    """How one table enters its service's digest; a table not declared enters with every column.

    Attributes:
        exclude: columns left out: processing-order artefacts (a bigserial), nothing a decision reads.
        skip: the table is not state at all (a cache, a work queue).
    """

    exclude: tuple[str, ...] = ()
    skip: bool = False


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _hash_rows(con: asyncpg.Connection, sql: str, *args: Any) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    async for r in con.cursor(sql, *args, prefetch=2000):
        h.update(r[0].encode())
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


async def state_digest(con: asyncpg.Connection, schema: str,
                       tables: Mapping[str, StateTable] | None = None) -> dict[str, Any]:
    """The digest of `schema`: per table its row count and sha256, and one sha256 over all of them.

    Also `emitted`: the count and sha256 of the event ids in the outbox (what the service emitted; not
    part of the state, but a replay that derives the same events shows the same figure).

    Raises:
        ValueError: `schema` is not a schema name, or holds no tables.
    """
    check_schema(schema)
    tables = tables or {}
    async with con.transaction(isolation="repeatable_read", readonly=True):
        await con.execute("SET LOCAL TimeZone = 'UTC'")  # times render the same whoever asks
        names = [r["relname"] for r in await con.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname", schema)]
        if not names:
            raise ValueError(f"schema {schema!r} does not exist or holds no tables")
        out: dict[str, Any] = {}
        for name in names:
            rule = tables.get(name, StateTable())
            if name in BOOKKEEPING or rule.skip:
                continue
            rows = f"SELECT (to_jsonb(t) - $1::text[])::text AS r FROM {_ident(schema)}.{_ident(name)} t"
            n, sha = await _hash_rows(con, f'SELECT r FROM ({rows}) s ORDER BY r COLLATE "C"', list(rule.exclude))
            out[name] = {"rows": n, "sha256": sha, **({"excluded": list(rule.exclude)} if rule.exclude else {})}
        emitted = None
        if "outbox" in names:
            n, sha = await _hash_rows(con, f"SELECT event_id::text FROM {_ident(schema)}.outbox ORDER BY 1")
            emitted = {"rows": n, "sha256": sha}
    total = hashlib.sha256("".join(f"{k} {v['rows']} {v['sha256']}\n" for k, v in sorted(out.items())).encode())
    return {"schema": schema, "sha256": total.hexdigest(), "tables": out,
            "not_state": [n for n in names if n not in out], "emitted": emitted}


def differing_tables(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The tables whose rows differ between two digests (also a table only one of them has)."""
    ta, tb = a["tables"], b["tables"]
    return sorted(t for t in set(ta) | set(tb) if ta.get(t, {}).get("sha256") != tb.get(t, {}).get("sha256"))
