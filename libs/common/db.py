"""Connection pool per service schema, and telling a database outage from a failing statement."""

from __future__ import annotations

import asyncio
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


# Errors that say the database, or the way to it, failed, not the statement: the same work succeeds once it is
# back. Class 08 (connection), 57 (shut down, starting up), 53 (too many connections, out of memory), a socket
# error, and the client's own "the connection is closed / broken mid-operation".
_OUTAGE_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
                  asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
                  asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


def is_outage(e: BaseException) -> bool:
    """Whether `e` (or what caused it) is a lost or refused database connection rather than a bad statement.

    Such a failure is ambiguous when it happens during COMMIT: the transaction may or may not have been
    committed. Callers retry the whole transaction, which is safe only because it is idempotent (the inbox
    claim, derived ids, `ON CONFLICT DO NOTHING`), never by replaying part of it.
    """
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, _OUTAGE_ERRORS):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


async def reachable(database_url: str, timeout: float = 5.0) -> bool:
    """Whether the database accepts a new connection and answers a query now."""
    try:
        con = await asyncpg.connect(database_url, timeout=timeout)
    except Exception:  # noqa: BLE001 - refused, starting up, timed out: all mean "not now"
        return False
    try:
        return await con.fetchval("SELECT 1", timeout=timeout) == 1
    except Exception:  # noqa: BLE001
        return False
    finally:
        con.terminate()
