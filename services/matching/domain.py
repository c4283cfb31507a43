"""Pure matching rules: feasibility of a job on an offer's calendar, ranking, and the per-constraint explanation.

An offer's capacity is a timeline: stretches of time, each with the node's free vCPU, memory and GPUs and
its price per DTU-hour (and per GPU-hour). An offer without a calendar is one stretch, from its
`available_from` to its `available_until`, at its price. Bookings take capacity out of the stretches they
overlap, so a node can hold one job now and another tomorrow.

A job fits an offer when every constraint holds and its expected run fits inside the offer's timeline
before `notAfter`: every stretch it runs in has enough free capacity and a price within the job's caps.
On one offer a job takes the earliest such run (a job may be booked into a later window); among offers
it takes the cheapest (or, with preference `soonest`, the earliest) run, then the run of the more reliable
vendor, then the deterministic tie-break (vendor, node, offer id). It pays the run's time-weighted
mean price per DTU-hour (and per GPU-hour), rounded up to the micro-euro: never above its cap, since every
stretch it runs in is within the cap.

The hot path works in integers (micro-vCPU, bytes, microseconds since the epoch, micro-euros); a job's
request is rounded up and an offer's capacity down, so a fit in integers is a fit in exact terms.
`services.matching.book` indexes offers so that a decision touches only the few candidates that can win;
`best_match` here scans every offer with the same rules (the reference and the benchmark's baseline).

Vendor reliability (`reliability`) is the vendor's Laplace-smoothed success ratio, (completed + 1) /
(completed + failed + 2), in parts per million: a vendor with no record scores 1/2, one success more than
failures lifts it above an unknown vendor, and a handful of outcomes moves it little. Completed: its
workloads that finished (or that ran and failed by their own exit code); failed: those that never started
(PlacementFailed: given up, node lost) or ended without an exit code (lost or killed on the vendor's side).
It only orders runs equal by the preference: it never makes a job pay more or start later.
"""

from __future__ import annotations

import heapq
import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

from libs.common.events.matching import ConstraintMiss
from libs.common.manifest import JobRequest

# the order the constraints are checked in; an offer is counted against the first one it fails
CONSTRAINTS = ("region", "vendor", "resources", "price", "availability")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_HOUR_US = 3600 * 10**6
_NEVER = 2**62  # the price of a gap in a calendar: above every cap


NO_RECORD = 500_000  # the reliability of a vendor without a record: 1/2


def reliability(completed: int, failed: int) -> int:
    """A vendor's reliability in parts per million: its Laplace-smoothed success ratio."""
    return (completed + 1) * 10**6 // (completed + failed + 2)


def to_us(t: datetime) -> int:
    """Microseconds since the epoch, exactly."""
    return (t - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class Slot:
    """A stretch of an offer's calendar with constant free capacity and price (one or more whole hours)."""

    start: datetime
    end: datetime
    vcpu: Decimal
    memory_gib: Decimal
    gpu: int
    price_micro_eur_per_dtu_hour: int
    price_micro_eur_per_gpu_hour: int | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: UUID
    vendor: str
    node: str
    region: str
    country: str
    eu: bool
    free_vcpu: Decimal  # with a calendar: the node's resources; each slot says what is free in its hours
    free_memory_gib: Decimal
    free_gpu: int
    gpu_model: str | None
    price_micro_eur_per_dtu_hour: int  # with a calendar: its lowest hourly price
    available_from: datetime
    available_until: datetime
    price_micro_eur_per_gpu_hour: int | None = None
    calendar: tuple[Slot, ...] = ()  # empty: free_* at the offer's price from available_from to available_until
    attributes: frozenset[str] = frozenset()  # compliance attributes, lower case: "gdpr", "iso27001", ...


@dataclass(frozen=True, slots=True)
class Match:
    offer: Offer
    start_at: datetime
    end_at: datetime
    # what the job pays: the run's time-weighted mean price (the offer's price when it has one price)
    price_micro_eur_per_dtu_hour: int = field(default=0, compare=False)
    price_micro_eur_per_gpu_hour: int | None = field(default=None, compare=False)


def status_on_cancel(status: str) -> str | None:
    """A pending job's status once it is cancelled, or None when the cancel changes nothing here.

    Only a waiting job leaves the book at once. A matched job keeps its reservation until placement
    says its workload was cancelled or ended (money may be held and a vendor may be running it); an
    expired, refused or cancelled job holds nothing any more.
    """
    return "cancelled" if status == "waiting" else None


def status_on_placement_failed(status: str, attempt: int, failed_attempt: int) -> str | None:
    """A pending job's status once its attempt `failed_attempt` ended before it started, or None when that
    changes nothing.

    The job's current attempt goes back to `waiting`, to be booked again without the node that failed it:
    nothing ran, so nothing was spent. A repeated or stale report (another attempt), or a job that has ended
    meanwhile (cancelled, expired, refused), stays as it is.
    """
    return "waiting" if status == "matched" and attempt == failed_attempt else None


def lost_offers(live: dict[UUID, datetime], heartbeats: list[tuple[UUID, datetime]],
                ttl: timedelta) -> tuple[list[tuple[UUID, datetime]], dict[UUID, datetime]]:
    """Which offers were lost while these heartbeats (re-publications, in stream order) came in.

    `live`: offers in the book and when each was last published. An offer is lost when a heartbeat of any
    offer comes more than `ttl` after its own last one: every vendor's heartbeat is the market's clock, and
    only the offers stream decides it, so a replay loses the same offers at the same times. Returns the
    losses (offer, last published; it was lost at that + ttl) in the order they happened, and `live` after
    the heartbeats (a lost offer that is published again is back).
    """
    live = dict(live)
    due = [(at, oid) for oid, at in live.items()]
    heapq.heapify(due)
    losses: list[tuple[UUID, datetime]] = []
    for oid, t in heartbeats:
        while due and due[0][0] + ttl < t:
            at, lost = heapq.heappop(due)
            if live.get(lost) == at:  # not published again since
                del live[lost]
                losses.append((lost, at))
        if live.get(oid) != t:
            live[oid] = t
            heapq.heappush(due, (t, oid))
    return losses, live


def region_matches(wanted: str | None, offer: Offer) -> bool:
    """`region` names a region code, a country, or "EU" (any vendor in an EU member state)."""
    if not wanted:
        return True
    w = wanted.strip().lower()
    return w in (offer.region.lower(), offer.country.lower()) or (w == "eu" and offer.eu)


# -- integer forms ----------------------------------------------------------------------------------------

def _ceil_scaled(d: Decimal, scale: int) -> int:
    return math.ceil(Decimal(d) * scale)


def _floor_scaled(d: Decimal, scale: int) -> int:
    return math.floor(Decimal(d) * scale)


class Need:
    """A job's request at a decision, in the book's integer units."""

    __slots__ = ("req", "vcpu", "mem", "gpu", "model", "cap", "gpu_cap", "dur", "earliest", "deadline",
                 "rate_num", "rate_den", "region", "vendors", "deny", "attributes", "soonest", "budget")

    def __init__(self, req: JobRequest, now: datetime):
        res, r = req.resources, req.restrictions
        self.req = req
        self.vcpu = _ceil_scaled(res.vcpu, 10**6)
        self.mem = _ceil_scaled(res.memory_gib, 2**30)
        self.gpu = res.gpu
        self.model = res.gpu_model.lower() if res.gpu_model else None
        self.cap = req.max_micro_eur_per_dtu_hour
        self.gpu_cap = req.max_micro_eur_per_gpu_hour or 0
        self.dur = req.expected_duration_s * 10**6
        self.earliest = max(to_us(now), to_us(req.earliest_start)) if req.earliest_start else to_us(now)
        self.deadline = to_us(req.not_after)
        self.rate_num, self.rate_den = Decimal(res.dtu_rate).as_integer_ratio()
        self.region = r.region.strip().lower() if r.region and r.region.strip() else None
        self.vendors = frozenset(r.vendors)
        self.deny = frozenset(r.deny_vendors)
        self.attributes = frozenset(a.lower() for a in r.attributes)
        self.soonest = req.preference == "soonest"
        self.budget = req.max_micro_eur_total

    def cost(self, price: int, gpu_price: int) -> int:
        """The hourly cost of the job at these prices, times the DTU rate's denominator (exact, comparable)."""
        return self.rate_num * price + self.gpu * self.rate_den * gpu_price

    def within_budget(self, price: int, gpu_price: int) -> bool:
        """The run's expected total (hourly cost x expected hours) is within the job's budget, if it has one."""
        if self.budget is None:
            return True
        # cost/den micro-EUR per hour x dur/3600e6 hours <= budget
        return self.cost(price, gpu_price) * self.dur <= self.budget * self.rate_den * _HOUR_US


_interned: dict[int, int] = {}
_patterns: dict[tuple[int, ...], tuple[int, ...]] = {}  # one object per calendar shape, shared by its offers


def _intern(v: int) -> int:
    """One object per value: a hundred thousand timelines repeat a few thousand capacities and prices."""
    got = _interned.get(v)
    if got is None:
        if len(_interned) > 200_000:
            _interned.clear()
            _patterns.clear()
        got = _interned[v] = v
    return got


class Timeline:
    """An offer's free capacity and price over time: stretch i spans [ts[i], ts[i+1])."""

    __slots__ = ("ts", "vc", "mem", "gpu", "p", "gp", "uniform", "span", "_open")

    def __init__(self, offer: Offer):
        ts: list[int] = []
        vc: list[int] = []
        mem: list[int] = []
        gpu: list[int] = []
        p: list[int] = []
        gp: list[int] = []
        slots = offer.calendar or (Slot(offer.available_from, offer.available_until, offer.free_vcpu,
                                        offer.free_memory_gib, offer.free_gpu, offer.price_micro_eur_per_dtu_hour,
                                        offer.price_micro_eur_per_gpu_hour),)
        for s in sorted(slots, key=lambda s: s.start):
            a, b = to_us(s.start), to_us(s.end)
            if b <= a:
                continue
            if ts and a < ts[-1]:
                a = ts[-1]  # overlapping slots: the earlier one holds (an event validates they do not overlap)
                if b <= a:
                    continue
            if ts and a > ts[-1]:  # a gap: nothing free, at no acceptable price
                vc.append(0), mem.append(0), gpu.append(0), p.append(_NEVER), gp.append(_NEVER)
                ts.append(a)
            elif not ts:
                ts.append(a)
            ts.append(_intern(b))
            vc.append(_intern(_floor_scaled(s.vcpu, 10**6)))
            mem.append(_intern(_floor_scaled(s.memory_gib, 2**30)))
            gpu.append(s.gpu)
            p.append(_intern(s.price_micro_eur_per_dtu_hour))
            gp.append(_intern(s.price_micro_eur_per_gpu_hour) if s.price_micro_eur_per_gpu_hour is not None
                      else _NEVER)
        if not ts:
            ts.append(0)
        if ts:
            ts[0] = _intern(ts[0])
        self.ts, self.vc, self.mem, self.gpu, self.p, self.gp = ts, vc, mem, gpu, p, gp
        priced = {(x, y) for x, y in zip(p, gp, strict=True) if x != _NEVER}
        self.uniform = len(priced) <= 1
        # the longest stretch without a gap: no run longer than this fits, whatever is booked
        span, run_start = 0, None
        for i in range(len(ts) - 1):
            if p[i] == _NEVER:
                run_start = None
                continue
            if run_start is None:
                run_start = ts[i]
            span = max(span, ts[i + 1] - run_start)
        self.span = span
        # per kind of job (without, with GPUs), built when needed: most offers never are
        self._open: list[tuple[list[tuple[int, ...]], list[int], int] | None] | None = None

    def _windows(self, gpu_job: bool) -> tuple[list[tuple[int, ...]], list[int], int]:
        """Where a job could run (some vCPU and memory free, at a price; for a GPU job, a GPU too): maximal
        windows (start, end, the most vCPU, memory and GPUs free in any of their stretches, and their lowest
        prices), their ends, and the longest. Built when needed and again after a booking: a booked-out node
        is passed over in a few steps, however many bookings split its timeline."""
        if self._open is None:
            self._open = [None, None]
        got = self._open[gpu_job]
        if got is None:
            got = self._open[gpu_job] = self._open_windows(gpu_job)
        return got

    def _open_windows(self, gpu_job: bool) -> tuple[list[tuple[int, ...]], list[int], int]:
        ts, vc, mem, gpu, p, gp = self.ts, self.vc, self.mem, self.gpu, self.p, self.gp
        wins: list[tuple[int, ...]] = []
        a = e = mv = mm = mg = lp = lg = -1
        for i in range(len(ts) - 1):
            if vc[i] > 0 and mem[i] > 0 and p[i] != _NEVER and (gpu[i] > 0 or not gpu_job):
                if e == ts[i]:
                    e, mv, mm, mg = ts[i + 1], max(mv, vc[i]), max(mm, mem[i]), max(mg, gpu[i])
                    lp, lg = min(lp, p[i]), min(lg, gp[i])
                    continue
                if a >= 0:
                    wins.append((a, e, mv, mm, mg, lp, lg))
                a, e, mv, mm, mg, lp, lg = ts[i], ts[i + 1], vc[i], mem[i], gpu[i], p[i], gp[i]
        if a >= 0:
            wins.append((a, e, mv, mm, mg, lp, lg))
        return wins, [w[1] for w in wins], max((w[1] - w[0] for w in wins), default=0)

    @property
    def start(self) -> int:
        return self.ts[0]

    @property
    def end(self) -> int:
        return self.ts[-1]

    def _ranges(self, n: Need, deadline: int) -> list[tuple[int, int]]:
        """The stretches worth scanning for a run of the job that ends by `deadline`, as (first, end) index
        ranges in time order: those of the windows with enough free somewhere in them and for long enough (a
        run never leaves a window: every stretch it uses has something free)."""
        wins, ends, longest = self._windows(n.gpu > 0)
        e0, dur, nv, nm, ng = n.earliest, n.dur, n.vcpu, n.mem, n.gpu
        out: list[tuple[int, int]] = []
        if dur > longest:
            return out
        ts = self.ts
        for k in range(bisect_right(ends, e0), len(wins)):  # from the first window that ends after e0
            a, e, mv, mm, mg, _, _ = wins[k]
            if a > deadline - dur:
                break
            if mv >= nv and mm >= nm and mg >= ng and min(e, deadline) - max(a, e0) >= dur:
                out.append((max(bisect_right(ts, max(a, e0)) - 1, 0), bisect_left(ts, min(e, deadline))))
        return out

    def fit(self, n: Need, deadline: int) -> int:
        """The earliest start (us) of a run of the job that ends by `deadline`, or -1."""
        ts, vc, mem, gpu, p, gp = self.ts, self.vc, self.mem, self.gpu, self.p, self.gp
        e0, dur = n.earliest, n.dur
        if dur > self.span or e0 + dur > ts[-1]:
            return -1
        nv, nm, ng, cap, gcap = n.vcpu, n.mem, n.gpu, n.cap, n.gpu_cap
        for i, stop in self._ranges(n, deadline):
            run = -1
            while i < stop:
                b = ts[i + 1]
                if vc[i] >= nv and mem[i] >= nm and gpu[i] >= ng and p[i] <= cap and (not ng or gp[i] <= gcap):
                    if run < 0:
                        a = ts[i]
                        run = a if a > e0 else e0
                        if run + dur > deadline:
                            return -1
                    if run + dur <= b:
                        return run
                else:
                    run = -1
                    if b + dur > deadline:
                        return -1
                i += 1
        return -1

    def cheapest(self, n: Need, limit: float = _NEVER) -> tuple[int, int, int | None] | None:
        """The cheapest run of the job that ends by its deadline (start, mean DTU price, mean GPU price), the
        earliest of equally cheap ones; or None. None too when no run costs `limit` (scaled as Need.cost) or
        less.

        The run's cost is linear between the times where its start or its end crosses a change of price,
        so only those starts are tried: the earliest and the latest, the changes of price, and the changes
        of price less the duration.
        """
        ts, vc, mem, gpu, p, gp = self.ts, self.vc, self.mem, self.gpu, self.p, self.gp
        e0, dur = n.earliest, n.dur
        deadline = n.deadline
        latest = deadline - dur  # the latest start
        if dur > self.span or e0 + dur > ts[-1] or e0 > latest:
            return None
        nv, nm, ng, cap, gcap = n.vcpu, n.mem, n.gpu, n.cap, n.gpu_cap
        rate, gw = n.rate_num, n.gpu * n.rate_den
        # stretches i..j-1 that can all hold the job, with room for a run starting in [a, hi]
        spans: list[tuple[int, int, int, int, int, bool]] = []  # (bound, i, j, a, hi, one price)
        for i, stop in self._ranges(n, deadline):
            while i < stop:
                if ts[i] > latest:
                    break
                if gpu[i] < ng or vc[i] < nv or mem[i] < nm or p[i] > cap or (ng and gp[i] > gcap):
                    i += 1
                    continue
                lowp = highp = p[i]
                lowg = highg = gp[i]
                j = i + 1
                while j < stop and gpu[j] >= ng and vc[j] >= nv and mem[j] >= nm \
                        and p[j] <= cap and (not ng or gp[j] <= gcap):  # stretches from the deadline on never count
                    x = p[j]
                    if x < lowp:
                        lowp = x
                    elif x > highp:
                        highp = x
                    x = gp[j]
                    if x < lowg:
                        lowg = x
                    elif x > highg:
                        highg = x
                    j += 1
                a, hi = max(ts[i], e0), min(latest, ts[j] - dur)
                if a <= hi:
                    bound = rate * lowp + (gw * lowg if gw else 0)
                    if bound <= limit:
                        spans.append((bound, i, j, a, hi, lowp == highp and lowg == highg))
                i = j
        best: tuple[int, int, int, int | None] | None = None  # cost, start, p, gp
        for bound, i, j, a, hi, same in sorted(spans):
            if best is not None and bound > best[0]:
                break
            with_gpu = gp[i] != _NEVER
            if same:  # one price throughout: the earliest start is the cheapest
                mp, mg = p[i], (gp[i] if with_gpu else None)
                cost = n.cost(mp, mg or 0)
                if best is None or (cost, a) < best[:2]:
                    best = (cost, a, mp, mg)
                continue
            cp, cg = [0], [0]  # the cost of the stretches from ts[i] up to ts[k]
            for k in range(i, j):
                w = ts[k + 1] - ts[k]
                cp.append(cp[-1] + p[k] * w)
                cg.append(cg[-1] + (gp[k] * w if with_gpu else 0))

            def at(t: int, cum: list[int], col: list[int], i: int = i, j: int = j) -> int:
                k = bisect_right(ts, t, i, j) - 1
                return cum[k - i] + col[k] * (t - ts[k])

            starts = {a, hi}
            for k in range(i + 1, j):
                if p[k] != p[k - 1] or gp[k] != gp[k - 1]:  # a change of price (bookings split stretches too)
                    for t in (ts[k], ts[k] - dur):
                        if a < t < hi:
                            starts.add(t)
            for st in sorted(starts):
                mp = -(-(at(st + dur, cp, p) - at(st, cp, p)) // dur)
                mg = -(-(at(st + dur, cg, gp) - at(st, cg, gp)) // dur) if with_gpu else None
                cost = n.cost(mp, mg or 0)
                if best is None or (cost, st) < best[:2]:
                    best = (cost, st, mp, mg)
        if best is None or best[0] > limit:
            return None
        return best[1], best[2], best[3]

    def prices(self, s: int, e: int) -> tuple[int, int | None]:
        """The time-weighted mean prices (DTU, GPU) of a run from s to e, rounded up to the micro-euro."""
        if self.uniform:
            i = bisect_right(self.ts, s) - 1
            gpu_price = self.gp[max(i, 0)]
            return self.p[max(i, 0)], (None if gpu_price == _NEVER else gpu_price)
        ts, p, gp = self.ts, self.p, self.gp
        i = max(bisect_right(ts, s) - 1, 0)
        tot = gtot = 0
        has_gpu = True
        while i < len(ts) - 1 and ts[i] < e:
            w = min(ts[i + 1], e) - max(ts[i], s)
            tot += p[i] * w
            if gp[i] == _NEVER:
                has_gpu = False
            else:
                gtot += gp[i] * w
            i += 1
        d = e - s
        return -(-tot // d), (-(-gtot // d) if has_gpu else None)

    def _cut(self, t: int) -> int:
        """Split the stretch holding t at t; the index of the stretch that starts at t."""
        ts = self.ts
        if t <= ts[0]:
            return 0
        if t >= ts[-1]:
            return len(ts) - 1
        k = bisect_left(ts, t)
        if ts[k] != t:
            ts.insert(k, t)
            for col in (self.vc, self.mem, self.gpu, self.p, self.gp):
                col.insert(k, col[k - 1])
        return k

    def take(self, s: int, e: int, vcpu: int, mem: int, gpu: int) -> None:
        """Book (or, with negative amounts, return) capacity from s to e."""
        i, j = self._cut(s), self._cut(e)
        self._open = None
        vc, m, g = self.vc, self.mem, self.gpu
        for k in range(i, j):
            vc[k] -= vcpu
            m[k] -= mem
            g[k] -= gpu
        # stretches that became alike are one again: back-to-back bookings leave no trail of splits
        self._merge(j)
        self._merge(i)

    def _merge(self, k: int) -> None:
        """Join stretch k to stretch k-1 when nothing tells them apart."""
        if 0 < k < len(self.ts) - 1 and self.vc[k] == self.vc[k - 1] and self.mem[k] == self.mem[k - 1] \
                and self.gpu[k] == self.gpu[k - 1] and self.p[k] == self.p[k - 1] and self.gp[k] == self.gp[k - 1]:
            del self.ts[k]
            for col in (self.vc, self.mem, self.gpu, self.p, self.gp):
                del col[k]


# how runs are ranked: (cost, start) or (start, cost) by the preference, then -reliability, vendor, node, id
Rank = tuple[int, int, int, str, str, UUID]


class Entry:
    """One offer as the matcher sees it: its fixed facts in integer form and its timeline."""

    __slots__ = ("offer", "tl", "vendor", "node", "oid", "region", "country", "eu", "vc", "mem", "gpu", "model",
                 "lb_p", "lb_gp", "attributes", "cal", "score")

    def __init__(self, offer: Offer, score: int = NO_RECORD):
        self.offer = offer
        self.score = score  # the vendor's reliability (ppm): ranks runs equal by the preference
        self.tl = Timeline(offer)
        # ids order as their text does (fixed-width hex): the id itself saves a string per offer
        self.vendor, self.node, self.oid = offer.vendor, offer.node, offer.offer_id
        self.region, self.country = sys.intern(offer.region.lower()), sys.intern(offer.country.lower())
        self.eu = offer.eu
        self.vc = _intern(_floor_scaled(offer.free_vcpu, 10**6))
        self.mem = _intern(_floor_scaled(offer.free_memory_gib, 2**30))
        self.gpu = offer.free_gpu
        self.model = offer.gpu_model.lower() if offer.gpu_model else None
        prices = [p for p in self.tl.p if p != _NEVER] or [offer.price_micro_eur_per_dtu_hour]
        gprices = [p for p in self.tl.gp if p != _NEVER]
        self.lb_p = min(prices)  # no run on this offer is cheaper than its lowest hourly price
        self.lb_gp = min(gprices) if gprices else _NEVER
        self.attributes = offer.attributes
        # a calendar whose price changes: its stretches and their prices as published (bookings split the
        # timeline's stretches but never change a price), for bounds on what a run in a given window costs
        self.cal: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
        if not self.tl.uniform:
            ts = tuple(self.tl.ts)
            self.cal = (_patterns.setdefault(ts, ts), tuple(self.tl.p), tuple(self.tl.gp))

    @property
    def tie(self) -> tuple[int, str, str, UUID]:
        """What decides between runs equal by the preference: the more reliable vendor, then vendor, node, id."""
        return -self.score, self.vendor, self.node, self.oid

    def region_ok(self, n: Need) -> bool:
        w = n.region
        return w is None or w == self.region or w == self.country or (w == "eu" and self.eu)

    def vendor_ok(self, n: Need) -> bool:
        return (not n.vendors or self.vendor in n.vendors) and self.vendor not in n.deny \
            and n.attributes <= self.attributes

    def shape_ok(self, n: Need) -> bool:
        return self.vc >= n.vcpu and self.mem >= n.mem and self.gpu >= n.gpu and (
            n.model is None or n.model == self.model)

    def price_ok(self, n: Need) -> bool:
        return self.lb_p <= n.cap and (not n.gpu or self.lb_gp <= n.gpu_cap) and (
            n.budget is None or n.within_budget(self.lb_p, self.lb_gp if n.gpu else 0))

    def miss(self, n: Need) -> str | None:
        """The first constraint the offer fails for the job, or None when the job fits it."""
        if not self.region_ok(n):
            return "region"
        if not self.vendor_ok(n):
            return "vendor"
        if not self.shape_ok(n):
            return "resources"
        if not self.price_ok(n):
            return "price"
        if self.run(n) is None:
            return "availability"
        return None

    def run(self, n: Need, limit: float = _NEVER) -> tuple[int, int, int, int] | None:
        """The job's run on this offer (start, end, price, GPU price), its constraints on the offer aside: the
        earliest run where the price is the same in every hour (or the job prefers `soonest`), else the
        cheapest before the deadline. With a `limit`, None also for a cheapest run that costs more."""
        if self.tl.uniform or n.soonest:
            s = self.tl.fit(n, n.deadline)
            if s < 0:
                return None
            e = s + n.dur
            p, gp = self.tl.prices(s, e)
        else:
            found = self.tl.cheapest(n, limit)
            if found is None:
                return None
            s, p, gp = found
            e = s + n.dur
        if not n.within_budget(p, gp or 0):
            return None
        return s, e, p, gp if gp is not None else 0

    def rank(self, n: Need, s: int, p: int, gp: int) -> Rank:
        cost = n.cost(p, gp)
        r = -self.score
        return (s, cost, r, self.vendor, self.node, self.oid) if n.soonest else (cost, s, r, self.vendor, self.node,
                                                                                  self.oid)

    def match(self, n: Need, run: tuple[int, int, int, int]) -> Match:
        s, e, p, gp = run
        return Match(self.offer, from_us(s), from_us(e), p, gp if self.offer.price_micro_eur_per_gpu_hour else None)


def window(req: JobRequest, offer: Offer, now: datetime) -> tuple[datetime, datetime] | None:
    """The earliest run of the job on the offer that ends before both the offer's availability and the deadline."""
    n = Need(req, now)
    run = Entry(offer).run(n)
    return None if run is None else (from_us(run[0]), from_us(run[1]))


def first_miss(req: JobRequest, offer: Offer, now: datetime) -> str | None:
    return Entry(offer).miss(Need(req, now))


def best_match(req: JobRequest, offers: list[Offer], now: datetime, by_price: bool = False,
               reliability: Mapping[str, int] | None = None) -> tuple[Match | None, list[ConstraintMiss]]:
    """The best feasible offer by scanning every one (cheapest run by hourly cost, ties: earlier start,
    the vendor's `reliability` (ppm; NO_RECORD when absent), vendor, node, offer id; or earliest start first
    with preference `soonest`), or why none fits, per constraint.

    `by_price`: the offers come in ascending DTU price, so for a job without GPUs (whose hourly cost
    follows the DTU price) the scan stops at the first price above the best feasible offer.
    """
    n = Need(req, now)
    scores = reliability or {}
    entries = [Entry(o, scores.get(o.vendor, NO_RECORD)) for o in offers]
    early_exit = by_price and not n.gpu and not n.soonest
    best: tuple[Rank, Entry, tuple[int, int, int, int]] | None = None
    misses: dict[str, list[Entry]] = {c: [] for c in CONSTRAINTS}
    for en in entries:
        if early_exit and best is not None and en.lb_p > best[2][2]:
            break
        miss = en.miss(n)
        if miss is not None:
            misses[miss].append(en)
            continue
        run = en.run(n)
        assert run is not None
        key = en.rank(n, run[0], run[2], run[3])
        if best is None or key < best[0]:
            best = (key, en, run)
    if best is not None:
        return best[1].match(n, best[2]), []
    return None, explain(n, misses)


def hourly_cost(req: JobRequest, o: Offer) -> Decimal:
    """What the job would cost per hour on the offer: its DTUs at the DTU price plus its GPUs."""
    gpus = req.resources.gpu * (o.price_micro_eur_per_gpu_hour or 0)
    return req.resources.dtu_rate * o.price_micro_eur_per_dtu_hour + gpus


def _eur(micro: int) -> str:
    return f"€{Decimal(micro) / 1_000_000:.6f}"


def explain(n: Need, misses: dict[str, list[Entry]]) -> list[ConstraintMiss]:
    """Per constraint, in the order they are checked, how many offers it excluded and the nearest miss."""
    return [ConstraintMiss(constraint=c, excluded=len(es), detail=detail(c, n, es))
            for c, es in misses.items() if es]


def detail(constraint: str, n: Need, excluded: list[Entry]) -> str:
    """The nearest miss for one constraint, in words a consumer can act on."""
    req = n.req
    r = req.restrictions
    if constraint == "region":
        return f"not in region {r.region!r}"
    if constraint == "vendor":
        parts = []
        if n.vendors:
            parts.append(f"vendor not in {list(r.vendors)}")
        if n.deny:
            parts.append(f"vendor in your deny list {sorted(n.deny)}")
        if n.attributes:
            parts.append(f"without {sorted(n.attributes)}")
        return " or ".join(parts) or "vendor excluded"
    if constraint == "resources":
        biggest = max(excluded, key=lambda e: (e.offer.free_vcpu, e.offer.free_memory_gib, e.offer.free_gpu)).offer
        return (f"needs {req.resources.vcpu} vCPU / {req.resources.memory_gib} GiB / {req.resources.gpu} GPU"
                f"{' ' + req.resources.gpu_model if req.resources.gpu_model else ''}; "
                f"largest free is {biggest.free_vcpu} vCPU / {biggest.free_memory_gib} GiB / {biggest.free_gpu} GPU")
    if constraint == "price":
        if n.budget is not None and all(e.lb_p <= n.cap and (not n.gpu or e.lb_gp <= n.gpu_cap) for e in excluded):
            cheapest = min(excluded, key=lambda e: n.cost(e.lb_p, e.lb_gp if n.gpu else 0))
            total = Decimal(n.cost(cheapest.lb_p, cheapest.lb_gp if n.gpu else 0) * n.dur) / (n.rate_den * _HOUR_US)
            return (f"the expected run costs at least {_eur(math.ceil(total))} ({cheapest.vendor}); "
                    f"your budget is {_eur(n.budget)}")
        over_gpu = [e for e in excluded if e.lb_p <= n.cap]
        if over_gpu and n.gpu:
            cheapest = min(over_gpu, key=lambda e: (e.lb_gp, e.vendor))  # the same vendor, in whatever order
            return (f"cheapest is {_eur(cheapest.lb_gp)}/GPU-h ({cheapest.vendor}); "
                    f"your cap is {_eur(n.gpu_cap)}")
        cheapest = min(excluded, key=lambda e: (e.lb_p, e.vendor))
        return (f"cheapest is {_eur(cheapest.lb_p)}/DTU-h ({cheapest.vendor}); "
                f"your cap is {_eur(n.cap)}")
    return availability_detail(n, excluded)


def availability_detail(n: Need, excluded: list[Entry]) -> str:
    """When the earliest run that the offers' calendars allow would end, against the deadline."""
    req = n.req
    where = f" in {req.restrictions.region}" if req.restrictions.region else ""
    deadline = req.not_after.isoformat()
    ends = [s + n.dur for s in (e.tl.fit(n, _NEVER) for e in excluded) if s >= 0]
    if not ends:
        return (f"no capacity{where} for the run of {req.expected_duration_s} s in the offers' calendars, "
                f"before the deadline {deadline} or after it")
    earliest_end = from_us(min(ends)).isoformat()
    return (f"capacity exists{where} only after your deadline: the run of {req.expected_duration_s} s must end by "
            f"the deadline {deadline}; earliest possible end {earliest_end}")
