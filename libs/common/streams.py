"""Streams and durable consumers: the only place their names, retention, `max_deliver`, `ack_wait`
and the duplicate window are spelled. `ensure_streams()` creates or updates them idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from libs.common import subjects as s

DUPLICATE_WINDOW_S = 120.0  # a relay re-publish after a crash lands inside this window and is dropped
MAX_AGE_S = 30 * 24 * 3600.0  # streams are the audit log: keep a month (limits retention)

# stream -> subjects; each source publishes its facts to its own stream
STREAMS: dict[str, list[str]] = {
    "SDK": ["sdk.>"],
    "AGENT": ["agent.>"],
    "INTAKE": ["intake.>"],
    "MATCHING": ["matching.>"],
    "PLACEMENT": ["placement.>"],
    "METERING": ["metering.>"],
    "SETTLEMENT": ["settlement.>"],
    "DLQ": ["dlq.>"],
}

# stream -> {source stream: subjects}: a service whose decisions depend on the order between facts from
# several sources reads them from one stream the server fills from theirs, so that it and a replay of it
# see one total order. Matching: which offer a job gets depends on the offers, arrivals and releases
# before it.
SOURCED: dict[str, dict[str, list[str]]] = {
    "MATCHING_IN": {
        "AGENT": [s.OFFER_CHANGES_ANY],
        "INTAKE": [s.JOB_ACCEPTED_ANY, s.JOB_CANCELLED_ANY],
        "PLACEMENT": [s.WORKLOAD_FINISHED_ANY, s.WORKLOAD_FAILED_ANY, s.WORKLOAD_CANCELLED_ANY,
                      s.PLACEMENT_FAILED_ANY],
        "SETTLEMENT": [s.INSUFFICIENT_FUNDS_ANY],
    },
}

ALL_STREAMS: list[str] = [*STREAMS, *SOURCED]  # what a clean bus deletes, and where every durable consumer is


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: `<consumer>-<entity>-<verb>` on one subject filter."""

    durable: str
    stream: str
    filter_subject: str
    max_deliver: int = 8
    ack_wait_s: float = 30.0
    max_ack_pending: int = 2000

    @property
    def service(self) -> str:
        return self.durable.split("-", 1)[0]

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self.filter_subject,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
        )


def _c(durable: str, stream: str, filter_subject: str) -> ConsumerSpec:
    return ConsumerSpec(durable, stream, filter_subject)


# every durable consumer of every service
INTAKE_JOB_SUBMITTED = _c("intake-job-submitted", "SDK", s.JOB_SUBMITTED_ANY)
INTAKE_MATCHING = _c("intake-job-matching", "MATCHING", "matching.>")
INTAKE_PLACEMENT = _c("intake-workload-placement", "PLACEMENT", "placement.>")
INTAKE_METERING = _c("intake-meter-closed", "METERING", s.METER_CLOSED_ANY)
INTAKE_SETTLEMENT = _c("intake-job-settlement", "SETTLEMENT", "settlement.>")
INTAKE_JOB_CANCEL = _c("intake-job-cancel", "SDK", s.JOB_CANCEL_REQUESTED_ANY)

# everything matching consumes, in the one order of MATCHING_IN (SOURCED)
MATCHING_INPUTS = _c("matching-inputs", "MATCHING_IN", ">")

PLACEMENT_FUNDS_HELD = _c("placement-funds-held", "SETTLEMENT", s.FUNDS_HELD_ANY)  # placed once paid for
PLACEMENT_WORKLOAD_REPORTED = _c("placement-workload-reported", "AGENT", s.WORKLOAD_REPORTED_ANY)
PLACEMENT_JOB_CANCELLED = _c("placement-job-cancelled", "INTAKE", s.JOB_CANCELLED_ANY)
PLACEMENT_OFFER_LOST = _c("placement-offer-lost", "MATCHING", s.OFFER_LOST_ANY)

METERING_WORKLOAD_STARTED = _c("metering-workload-started", "PLACEMENT", s.WORKLOAD_STARTED_ANY)
METERING_WORKLOAD_FINISHED = _c("metering-workload-finished", "PLACEMENT", s.WORKLOAD_FINISHED_ANY)
METERING_WORKLOAD_FAILED = _c("metering-workload-failed", "PLACEMENT", s.WORKLOAD_FAILED_ANY)
METERING_USAGE_SAMPLED = _c("metering-usage-sampled", "AGENT", s.USAGE_SAMPLED_ANY)

SETTLEMENT_JOB_MATCHED = _c("settlement-job-matched", "MATCHING", s.JOB_MATCHED_ANY)
# progress and close readings through ONE consumer, so a job's readings are charged in stream order
# (live and in a replay alike)
SETTLEMENT_METER_READINGS = _c("settlement-meter-readings", "METERING", "metering.meter.>")
SETTLEMENT_DEPOSIT = _c("settlement-wallet-deposit", "SDK", s.DEPOSIT_REQUESTED_ANY)
SETTLEMENT_WORKLOAD_CANCELLED = _c("settlement-workload-cancelled", "PLACEMENT", s.WORKLOAD_CANCELLED_ANY)
SETTLEMENT_PAYOUT = _c("settlement-vendor-payout", "SDK", s.PAYOUT_REQUESTED_ANY)
SETTLEMENT_DISPUTE_RESOLUTION = _c("settlement-dispute-resolve", "SDK", s.DISPUTE_RESOLUTION_ANY)
SETTLEMENT_PLACEMENT_FAILED = _c("settlement-placement-failed", "PLACEMENT", s.PLACEMENT_FAILED_ANY)
SETTLEMENT_JOB_EXPIRED = _c("settlement-job-expired", "MATCHING", s.JOB_EXPIRED_ANY)


def agent_assignments(vendor: str) -> ConsumerSpec:
    """The vendor agent's own durable consumer on its assignment subject."""
    return ConsumerSpec(f"agent-{vendor}-assigned", "PLACEMENT", s.workload_assigned_to(vendor),
                        max_deliver=5, ack_wait_s=60.0)


async def ensure_streams(js: JetStreamContext, replicas: int | None = None) -> None:
    """Create every stream, or bring an existing one to this configuration (idempotent).

    `replicas` (`STREAM_REPLICAS`, 3 on a NATS cluster) is set by the services; a client passing None
    keeps an existing stream's replica count and creates missing ones with one replica.
    """
    for name, subjects in STREAMS.items():
        await _put_stream(js, StreamConfig(name=name, subjects=subjects), replicas)
    for name, sources in SOURCED.items():
        # a transform to "" keeps the subject: one filter per subject wanted from the source
        await _put_stream(js, StreamConfig(name=name, sources=[
            StreamSource(name=src, subject_transforms=[SubjectTransform(src=f, dest="") for f in filters])
            for src, filters in sources.items()]), replicas)


async def _put_stream(js: JetStreamContext, config: StreamConfig, replicas: int | None) -> None:
    """Create the stream, or bring it to `config`, with the retention every stream here has."""
    config.retention = RetentionPolicy.LIMITS
    config.storage = StorageType.FILE
    config.max_age = MAX_AGE_S
    config.duplicate_window = DUPLICATE_WINDOW_S
    config.num_replicas = replicas or 1
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        if replicas is None:
            config.num_replicas = info.config.num_replicas
        await js.update_stream(config)
