"""Connection pool per service schema."""

from __future__ import annotations

import re

import asyncpg

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise ValueError(f"schema name {schema!r} must be a lower-case SQL identifier")
    return schema


async def create_pool(database_url: str, schema: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """A pool whose connections see only `schema` (plus pg_catalog) through `search_path`."""
    check_schema(schema)
    # the schema must exist before connections use it as search_path
    con = await asyncpg.connect(database_url)
    try:
        await con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    finally:
        await con.close()
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size,
                                     server_settings={"search_path": schema})
    assert pool is not None
    return pool
