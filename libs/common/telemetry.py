"""Tracing set-up: one trace per job across services, carried as a W3C `traceparent`.

Spans are exported to the console when `STRONGMOOSE_TRACE_CONSOLE=1`; otherwise they only carry the
context from event to event (an OTLP exporter can be added to the provider without code changes here).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False


def setup(service: str) -> None:
    """Configure logging and the tracer provider once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("STRONGMOOSE_TRACE_CONSOLE") == "1":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


@contextmanager
def span(name: str, traceparent: str | None, **attributes: Any) -> Iterator[trace.Span]:
    """A span continuing the trace of `traceparent` (the causing event's)."""
    ctx = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    token = context.attach(ctx) if ctx is not None else None
    try:
        with trace.get_tracer("strongmoose").start_as_current_span(name, attributes=attributes) as s:
            yield s
    finally:
        if token is not None:
            context.detach(token)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
