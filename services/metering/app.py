"""Wires metering's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.metering import domain, service, store
from services.metering.settings import MeteringSettings


def rules_of(settings: MeteringSettings) -> service.Rules:
    return service.Rules(
        skew=timedelta(seconds=settings.metering_clock_skew_s),
        charge_interval_us=max(1, round(settings.metering_charge_interval_s * 1_000_000)),
        tolerance=domain.Tolerance(relative=settings.metering_dispute_tolerance,
                                   floor_micro=settings.metering_dispute_floor_micro_dtu_hours))


def create_service(settings: MeteringSettings) -> Service:
    rules = rules_of(settings)
    return Service(
        name="metering",
        schema=settings.metering_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        subscriptions=[
            Subscription(streams.METERING_USAGE_SAMPLED, functools.partial(service.record_usage, rules=rules)),
            Subscription(streams.METERING_WORKLOAD_STARTED, functools.partial(service.open_meters, rules=rules)),
            Subscription(streams.METERING_WORKLOAD_FINISHED, functools.partial(service.end_meters, rules=rules)),
            Subscription(streams.METERING_WORKLOAD_FAILED, functools.partial(service.end_meters, rules=rules)),
        ],
        queries={"meters": lambda con, req: store.list_meters(con)},
    )
