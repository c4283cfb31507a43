"""Wires matching's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from services.matching import service, store
from services.matching.settings import MatchingSettings


def create_service(settings: MatchingSettings) -> Service:
    return Service(
        name="matching",
        schema=settings.matching_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        subscriptions=[
            Subscription(streams.MATCHING_OFFER_PUBLISHED, service.publish_offers, time_from_stream=True),
            Subscription(streams.MATCHING_JOB_ACCEPTED, service.accept_jobs),
            Subscription(streams.MATCHING_WORKLOAD_FINISHED, service.release_capacity),
            Subscription(streams.MATCHING_WORKLOAD_FAILED, service.release_capacity),
            Subscription(streams.MATCHING_FUNDS_INSUFFICIENT, service.release_capacity),
            Subscription(streams.MATCHING_JOB_CANCELLED, service.cancel_jobs),
            Subscription(streams.MATCHING_WORKLOAD_CANCELLED, service.release_capacity),
        ],
        queries={"offers": lambda con, req: store.list_offers(con, req.get("vendor"), req.get("region")),
                 "vendors": lambda con, req: store.list_vendors(con),
                 "explain": service.explain_job},
        serialize=True,  # one writer decides the book: no capacity is booked twice
    )
