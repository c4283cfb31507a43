"""Wires placement's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.placement import service, store
from services.placement.settings import PlacementSettings


def create_service(settings: PlacementSettings) -> Service:
    return Service(
        name="placement",
        schema=settings.placement_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        subscriptions=[
            Subscription(streams.PLACEMENT_FUNDS_HELD, service.place_jobs),
            Subscription(streams.PLACEMENT_WORKLOAD_REPORTED, service.follow_reports),
            Subscription(streams.PLACEMENT_JOB_CANCELLED, service.cancel_jobs),
            Subscription(streams.PLACEMENT_OFFER_LOST, service.lose_nodes),
        ],
        queries={"workloads": lambda con, req: store.list_workloads(con)},
    )
