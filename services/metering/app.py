"""Wires metering's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.metering import service, store
from services.metering.settings import MeteringSettings


def create_service(settings: MeteringSettings) -> Service:
    return Service(
        name="metering",
        schema=settings.metering_schema,
        migrations=Path(__file__).parent / "migrations",
        subscriptions=[
            Subscription(streams.METERING_USAGE_SAMPLED, service.record_usage),
            Subscription(streams.METERING_WORKLOAD_STARTED, service.open_meters),
            Subscription(streams.METERING_WORKLOAD_FINISHED, service.end_meters),
            Subscription(streams.METERING_WORKLOAD_FAILED, service.end_meters),
        ],
        queries={"meters": lambda con, req: store.list_meters(con)},
    )
