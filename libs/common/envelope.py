"""The one envelope every event travels in."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict

P = TypeVar("P", bound=BaseModel)


class Payload(BaseModel):
    """Base of all event payloads: frozen, and unknown fields are ignored on read so that a producer
    can add an optional field without breaking consumers."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(BaseModel, Generic[P]):
    """An event: what happened (payload), when, to whom, and why (causation)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: UUID  # Nats-Msg-Id and inbox key
    type: str  # "JobMatched"
    version: int = 1  # a breaking change is a new payload class and version
    source: str  # "matching"
    time: AwareDatetime  # when the fact happened; handlers decide from this, not from now()
    party: str  # "t-xyz" (tenant) or "v-elastx" (vendor)
    correlation_id: UUID  # the job id (or offer id), the same for the whole life
    causation_id: UUID | None = None  # id of the event that caused this one
    traceparent: str | None = None
    payload: P

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_envelope(
    payload: Payload,
    *,
    source: str,
    party: str,
    correlation_id: UUID,
    time: datetime | None = None,
    id: UUID | None = None,
    causation_id: UUID | None = None,
) -> Envelope[Any]:
    """Wrap a payload; the type and version come from the payload class's registration."""
    from libs.common.events import type_of

    type_, version = type_of(type(payload))
    return Envelope[type(payload)](  # type: ignore[misc]
        id=id or uuid4(),
        type=type_,
        version=version,
        source=source,
        time=time or utcnow(),
        party=party,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload,
    )


def derive(cause: Envelope[Any], payload: Payload, *, source: str, party: str | None = None,
           n: int | str = 0, time: datetime | None = None, correlation_id: UUID | None = None) -> Envelope[Any]:
    """An event caused by `cause`: deterministic id, same correlation, time of the cause by default."""
    from libs.common.events import type_of
    from libs.common.ids import derived_id

    type_, _ = type_of(type(payload))
    return new_envelope(
        payload,
        source=source,
        party=party or cause.party,
        correlation_id=correlation_id or cause.correlation_id,
        time=time or cause.time,
        id=derived_id(cause.id, type_, n),
        causation_id=cause.id,
    )


class InvalidEvent(ValueError):
    """A message that is not a valid envelope of a known event type: permanent, dead-lettered."""


def parse_envelope(data: bytes | str | dict[str, Any]) -> Envelope[Any]:
    """Parse raw bytes into an envelope whose payload is the registered class for its type and version."""
    from pydantic import ValidationError

    from libs.common.events import payload_class

    try:
        raw = data if isinstance(data, dict) else json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidEvent(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("envelope must be a JSON object")
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEvent(f"version must be an integer, not {version!r}")
    cls = payload_class(str(raw.get("type")), version)
    if cls is None:
        raise InvalidEvent(f"unknown event type {raw.get('type')!r} version {raw.get('version')!r}")
    try:
        return Envelope[cls].model_validate(raw)  # type: ignore[valid-type]
    except ValidationError as e:
        raise InvalidEvent(_describe(e)) from None


def _describe(e: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
