"""Event contracts: each event's JSON schema against its committed snapshot, and committed samples of
every event (as once published) still parse. A breaking change is a new payload class and version.

After a deliberate, compatible change (e.g. a new optional field) refresh the snapshots with
`UPDATE_CONTRACTS=1 pytest tests/contract`, and commit them with the change; never edit a sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from libs.common.envelope import Envelope, parse_envelope
from libs.common.events import all_events

HERE = Path(__file__).parent
SCHEMAS = HERE / "schemas"
SAMPLES = HERE / "samples"
UPDATE = os.environ.get("UPDATE_CONTRACTS") == "1"
EVENTS = sorted(all_events().items())


def schema_of(cls: type) -> dict[str, Any]:
    return Envelope[cls].model_json_schema(mode="serialization")  # type: ignore[valid-type]


@pytest.mark.parametrize(("key", "cls"), EVENTS, ids=[f"{t}.v{v}" for (t, v), _ in EVENTS])
def test_the_event_schema_equals_its_committed_snapshot(key: tuple[str, int], cls: type) -> None:
    path = SCHEMAS / f"{key[0]}.v{key[1]}.json"
    current = schema_of(cls)
    if UPDATE or not path.exists():
        SCHEMAS.mkdir(exist_ok=True)
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"no snapshot for {key}; one was written to {path.name}: review and commit it")
    assert current == json.loads(path.read_text()), (
        f"the schema of {key[0]} v{key[1]} changed: a breaking change needs a new version; "
        "a compatible one needs UPDATE_CONTRACTS=1 and a commit of the snapshot")


def test_every_registered_event_has_a_committed_sample() -> None:
    have = {p.name.rsplit(".", 2)[0] for p in SAMPLES.glob("*.json")}
    assert {f"{t}.v{v}" for (t, v), _ in EVENTS} <= have


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_a_committed_sample_still_parses(path: Path) -> None:
    env = parse_envelope(path.read_bytes())
    assert f"{env.type}.v{env.version}" == path.name.rsplit(".", 2)[0]
