"""Every event payload, registered by type and version with the subject it is published on.

A payload module per source (`sdk`, `agent`, `intake`, ...). The registry maps
(type, version) -> class for parsing, and class -> (type, version, subject prefix) for publishing.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from libs.common.envelope import Payload

T = TypeVar("T", bound=type[Payload])

_BY_NAME: dict[tuple[str, int], type[Payload]] = {}
_BY_CLASS: dict[type[Payload], tuple[str, int, str]] = {}


def event(type_: str, *, subject: str, version: int = 1) -> Callable[[T], T]:
    """Register a payload class as event `type_` (version `version`), published on `<subject>.<party>`."""

    def register(cls: T) -> T:
        key = (type_, version)
        if key in _BY_NAME:
            raise ValueError(f"event {type_} v{version} registered twice")
        _BY_NAME[key] = cls
        _BY_CLASS[cls] = (type_, version, subject)
        return cls

    return register


def payload_class(type_: str, version: int) -> type[Payload] | None:
    _load()
    return _BY_NAME.get((type_, version))


def type_of(cls: type[Payload]) -> tuple[str, int]:
    _load()
    t, v, _ = _BY_CLASS[cls]
    return t, v


def subject_prefix(cls: type[Payload]) -> str:
    _load()
    return _BY_CLASS[cls][2]


def all_events() -> dict[tuple[str, int], type[Payload]]:
    _load()
    return dict(_BY_NAME)


def _load() -> None:
    # import the payload modules once, so the registry is complete whoever asks first
    from libs.common.events import agent, intake, matching, metering, placement, sdk, settlement  # noqa: F401
