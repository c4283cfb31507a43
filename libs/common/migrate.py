"""Numbered SQL migrations, applied once each under an advisory lock at start-up."""

from __future__ import annotations

from pathlib import Path

import asyncpg

COMMON = Path(__file__).parent / "migrations"


async def migrate(pool: asyncpg.Pool, schema: str, migrations_dir: Path) -> list[str]:
    """Apply the common migrations (inbox, outbox) and then the service's own, in order.

    Returns the names applied now. Files are never edited once merged: a change is a new file.
    """
    files = [("common/" + p.name, p) for p in sorted(COMMON.glob("*.sql"))]
    files += [(p.name, p) for p in sorted(migrations_dir.glob("*.sql"))]
    applied: list[str] = []
    async with pool.acquire() as con:
        async with con.transaction():
            # one migrator per schema at a time, even with several replicas starting together
            await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
            await con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await con.fetch("SELECT name FROM schema_migrations")}
            for name, path in files:
                if name in done:
                    continue
                await con.execute(path.read_text())
                await con.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
    return applied
