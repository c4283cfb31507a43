"""Container health check: is this strongmoose process up and answering on NATS?

    python deploy/healthcheck.py <service>   # intake, matching, placement, metering or settlement
    python deploy/healthcheck.py agent       # the vendor agent

A service passes when it answers the request-reply query `query.<service>.health` with `{"ok": true}`.
It subscribes to that subject only after its migrations, streams and durable consumers are in place,
so a pass means "started and reachable over the bus", not merely "process alive". The vendor agent
answers no queries: it passes when its durable consumer `agent-<AGENT_NAME>` exists on the PLACEMENT
stream, which it creates once connected.

Env: NATS_URL (default nats://127.0.0.1:4222), AGENT_NAME (default demo), HEALTHCHECK_TIMEOUT_S
(default 3). Exit status 0 = healthy, 1 = not (Docker reserves 2). Only nats-py is imported, not the
strongmoose packages: the check runs every few seconds in every container and must stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import nats

SERVICES = ("intake", "matching", "placement", "metering", "settlement")
AGENT = "agent"


def health_subject(service: str) -> str:
    # spelled as libs.common.subjects.query(service, "health"); a unit test keeps the two equal
    return f"query.{service}.health"


async def _quiet(*_: object) -> None:
    """nats-py logs every connection error by default; the exit status and one line say enough."""


async def check(target: str, nats_url: str, timeout_s: float) -> str:
    """Return a one-line reason the target is unhealthy, or "" when it is healthy."""
    nc = await nats.connect(nats_url, name=f"healthcheck-{target}", connect_timeout=timeout_s,
                            allow_reconnect=False, max_reconnect_attempts=0, error_cb=_quiet)
    try:
        if target == AGENT:
            durable = f"agent-{os.environ.get('AGENT_NAME', 'demo')}"
            try:
                await nc.jetstream(timeout=timeout_s).consumer_info("PLACEMENT", durable)
            except nats.js.errors.NotFoundError:
                return f"no durable consumer {durable} on stream PLACEMENT yet"
            return ""
        try:
            msg = await nc.request(health_subject(target), b"{}", timeout=timeout_s)
        except nats.errors.NoRespondersError:
            return f"nothing answers {health_subject(target)}"
        body = json.loads(msg.data)
        if isinstance(body, dict) and body.get("ok") is True:
            return ""
        return f"{health_subject(target)} answered {msg.data[:200]!r}"
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    targets = (*SERVICES, AGENT)
    if len(argv) != 1 or argv[0] not in targets:
        print(f"usage: healthcheck.py {{{','.join(targets)}}}", file=sys.stderr)
        return 1
    target = argv[0]
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "3"))
    try:
        # the total is bounded too: a probe that hangs is worse than one that fails
        reason = asyncio.run(asyncio.wait_for(check(target, url, timeout_s), timeout=3 * timeout_s))
    except Exception as e:  # connection refused, timeout, bad reply: all mean "not healthy now"
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if reason:
        print(f"{target} unhealthy ({url}): {reason}", file=sys.stderr)
        return 1
    print(f"{target} healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
