"""Inbox: the record of events a handler has applied, claimed in the same transaction as their effects."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.common.envelope import Envelope


async def claim_many(tx: asyncpg.Connection, handler: str, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """Claim the events not yet applied by `handler`; returns those, in the given order.

    An event already claimed was committed before and only its ack was lost: it is skipped.
    Duplicates inside one batch are claimed once.
    """
    if not events:
        return []
    rows = await tx.fetch(
        "INSERT INTO inbox (handler, event_id) SELECT $1, unnest($2::uuid[]) "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        handler,
        [e.id for e in events],
    )
    fresh = {r["event_id"] for r in rows}
    out: list[Envelope[Any]] = []
    for e in events:
        if e.id in fresh:
            out.append(e)
            fresh.discard(e.id)
    return out
