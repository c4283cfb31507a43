"""Wires intake's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.intake import service, store
from services.intake.settings import IntakeSettings


def create_service(settings: IntakeSettings) -> Service:
    return Service(
        name="intake",
        schema=settings.intake_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        subscriptions=[
            Subscription(streams.INTAKE_JOB_SUBMITTED, service.submit_jobs, time_from_stream=True),
            Subscription(streams.INTAKE_JOB_CANCEL, service.cancel_jobs, time_from_stream=True),
            Subscription(streams.INTAKE_MATCHING, service.record_facts),
            Subscription(streams.INTAKE_PLACEMENT, service.record_facts),
            Subscription(streams.INTAKE_METERING, service.record_facts),
            Subscription(streams.INTAKE_SETTLEMENT, service.record_facts),
        ],
        queries={"jobs": lambda con, req: store.list_jobs(con, req.get("tenant")),
                 "job": lambda con, req: store.get_job(con, str(req["tenant"]), str(req["name"]))},
    )
