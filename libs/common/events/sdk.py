"""Commands from consumers (SDK, smctl): the raw manifest, validated by intake."""

from __future__ import annotations

from typing import Any

from libs.common.envelope import Payload
from libs.common.events import event


@event("JobSubmitted", subject="sdk.job.submitted")
class JobSubmitted(Payload):
    """A consumer submitted a manifest; intake decides whether it is a valid job."""

    manifest: dict[str, Any]
