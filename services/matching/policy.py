"""How a matching instance shares its markets: fair share between tenants, the markets it clears
periodically, and the markets it owns. Pure: no database, no bus, no clock.

Fair share (as HTCondor's user priority): when waiting jobs are retried (capacity was freed, an offer
came, a booking failed), they are taken tenant by tenant in the order of each tenant's recent usage,
least first, and within a tenant in arrival order. A tenant's usage is the DTU-hours (plus GPU-hours) of
its bookings, each counted in full until it starts and then halved every `MATCHING_USAGE_HALF_LIFE_S`
(default a day, HTCondor's default) from its start; a booking released before it started counts nothing.
A job booked during the round adds its DTU-hours at once, so two tenants with backlogs take turns, and a
tenant that floods the market gets what the others leave. It is computed from the reservations and the
event's time only (`store.tenant_usage`), so a replay orders the same. New arrivals still take what fits
at once (continuous matching); fair share decides who gets capacity that comes free while jobs wait.

Periodic markets (`MATCHING_PERIODIC_MARKETS="de-fra=60,se-sto=300"`, seconds): a job whose region
restriction names such a market (its region code) is not matched on arrival; it waits for its round, the
interval of the epoch-aligned grid it arrived in ([k x interval, (k+1) x interval) in UTC). A round is
cleared by the first event matching handles that is dated at or after the round's end (an arrival, an
offer's heartbeat, a release): `services.matching.clearing.clear` assigns all its due jobs together. No
timer: the events' times are the clock, as for lost offers, so a replay clears the same rounds; the
agents' heartbeats (every 60 s) bound how late a round clears in a quiet market. Jobs left unfilled wait
for the next round (or expire); a job being booked again after a failed placement is matched at once.

Markets owned (`MATCHING_MARKETS="se-sto,sweden"`, empty: all): an instance takes only the offers whose
region code or country is named, and only the jobs whose region restriction names one; other jobs are
recorded as `elsewhere` (their later facts are then ignored, not retried) and other offers skipped. Each
instance has its own durable consumers (`matching-inputs-<markets>`) and its own schema
(`MATCHING_SCHEMA`), and builds its book from that schema in every transaction, so a restarted instance
carries on from what it had decided, and a new one rebuilds from the streams (its consumers start at the
streams' beginning). A job without a region restriction, or one spanning markets ("EU"), is matched only
by an instance that owns all markets.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from libs.common.manifest import JobRequest

DAY_S = 86_400.0


def _names(raw: str) -> list[str]:
    return [x.strip().lower() for x in raw.split(",") if x.strip()]


@dataclass(frozen=True)
class Policy:
    owned: frozenset[str] = frozenset()  # market names (region codes or countries), lower case; empty: all
    periodic: Mapping[str, int] = field(default_factory=dict)  # region code -> clearing interval (s)
    usage_half_life_s: float = DAY_S

    @classmethod
    def parse(cls, markets: str = "", periodic: str = "", usage_half_life_s: float = DAY_S) -> Policy:
        """From the settings' strings; a malformed one is an error naming the setting."""
        rounds: dict[str, int] = {}
        for item in _names(periodic):
            name, _, secs = item.partition("=")
            if not name or not secs.strip().isdigit() or int(secs) <= 0:
                raise ValueError(f"MATCHING_PERIODIC_MARKETS: {item!r} is not market=seconds (e.g. de-fra=60)")
            rounds[name.strip()] = int(secs)
        if usage_half_life_s <= 0:
            raise ValueError("MATCHING_USAGE_HALF_LIFE_S: must be positive")
        return cls(frozenset(_names(markets)), rounds, usage_half_life_s)

    @property
    def suffix(self) -> str:
        """What makes this instance's durable consumer names its own ("" when it owns all markets)."""
        return "-" + "_".join(sorted(self.owned)) if self.owned else ""

    def owns_offer(self, region: str, country: str) -> bool:
        return not self.owned or region.lower() in self.owned or country.lower() in self.owned

    def owns_job(self, req: JobRequest) -> bool:
        return not self.owned or market_of(req) in self.owned

    def interval(self, req: JobRequest) -> int | None:
        """The clearing interval (s) of the periodic market the job names, or None: matched continuously."""
        return self.periodic.get(market_of(req) or "")


ALL = Policy()


def market_of(req: JobRequest) -> str | None:
    """The market a job names: its region restriction, lower case (None: it names none)."""
    r = req.restrictions.region
    return r.strip().lower() if r and r.strip() else None


def round_of(t_us: int, interval_s: int) -> int:
    """The clearing round a time (us since the epoch) falls in: rounds are aligned to the epoch."""
    return t_us // (interval_s * 10**6)


def usage_of(req: JobRequest) -> Decimal:
    """What a booking adds to its tenant's usage: its DTU-hours plus GPU-hours."""
    return (req.resources.dtu_rate + req.resources.gpu) * Decimal(req.expected_duration_s) / 3600


class FairShare:
    """Waiting jobs in fair-share order: next the oldest job of the tenant with the least usage (ties: the
    older job). `charge` a job that was booked before asking for the next one."""

    def __init__(self, jobs: list[tuple[UUID, JobRequest]], usage: Mapping[str, Decimal]):
        self.usage: dict[str, Decimal] = {}
        self._queues: dict[str, deque[tuple[int, UUID, JobRequest]]] = {}
        for i, (job_id, req) in enumerate(jobs):  # jobs: in arrival order
            self._queues.setdefault(req.tenant, deque()).append((i, job_id, req))
            self.usage.setdefault(req.tenant, Decimal(usage.get(req.tenant, 0)))
        self._heap = [(self.usage[t], q[0][0], t) for t, q in self._queues.items()]
        heapq.heapify(self._heap)
        self._last: str | None = None

    def __iter__(self) -> Iterator[tuple[UUID, JobRequest]]:
        return self

    def __next__(self) -> tuple[UUID, JobRequest]:
        last = self._last
        if last is not None and self._queues[last]:  # the tenant just served, at its usage now
            heapq.heappush(self._heap, (self.usage[last], self._queues[last][0][0], last))
        self._last = None
        if not self._heap:
            raise StopIteration
        _, _, tenant = heapq.heappop(self._heap)
        self._last = tenant
        _, job_id, req = self._queues[tenant].popleft()
        return job_id, req

    def charge(self, req: JobRequest) -> None:
        self.usage[req.tenant] += usage_of(req)
