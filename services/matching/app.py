"""Wires matching's use cases to its durable consumers and query endpoints."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from libs.common import streams
from libs.common.bus import Service, Subscription
from libs.common.events.agent import OfferPublished, OfferWithdrawn
from services.matching import service, store
from services.matching.settings import MatchingSettings


def create_service(settings: MatchingSettings) -> Service:
    rules = settings.policy()
    # one consumer of everything matching hears, in the one order of its stream (streams.SOURCED): live and
    # a replay decide the same; vendors' offers are dated by the stream, not by the vendor
    subscriptions = [
        Subscription(streams.MATCHING_INPUTS,
                     functools.partial(service.consume, ttl_s=settings.matching_offer_ttl_s, rules=rules),
                     time_from_stream=(OfferPublished, OfferWithdrawn)),
    ]
    return Service(
        name="matching",
        schema=settings.matching_schema,
        migrations=Path(__file__).parent / "migrations",
        digest=store.DIGEST,
        # an instance owning some markets consumes on durable consumers of its own (policy: scale-out)
        subscriptions=[replace(s, consumer=replace(s.consumer, durable=s.consumer.durable + rules.suffix))
                       for s in subscriptions],
        queries={"offers": lambda con, req: store.list_offers(con, req.get("vendor"), req.get("region")),
                 "vendors": lambda con, req: store.list_vendors(con),
                 "explain": service.explain_job},
        serialize=True,  # one writer decides the book: no capacity is booked twice
    )
