"""The order book: open offers indexed so that a job's decision touches only the offers that can win.

Offers are bucketed by market (region), vendor and resource shape (vCPU, memory, GPU count and model);
inside a bucket they are kept sorted by their lowest hourly price, and each offer carries its timeline
of free capacity per hour (`domain.Timeline`). A decision:

1. picks the candidate buckets once per kind of request (region, vendor lists, shape; cached until the
   set of buckets changes): a bucket in the wrong region, of a vendor not allowed, or too small is never
   looked at offer by offer;
2. walks the candidates best-first: a heap holds, per opened bucket, the lowest cost any of its remaining
   offers could give the job (its next offer's lowest price, times the job's DTUs, plus its GPUs at the
   bucket's lowest GPU price); buckets are opened in the order of their own lowest cost; where prices change
   by the hour, a bound that the cheapest hour alone does not make tight is raised, once it could rule
   offers out, to the least mean a run of the job's duration in its window could pay (`_run_bound`);
3. stops as soon as that bound exceeds the best run found (or the job's price cap): nothing left can be
   cheaper. Ties are still examined, so the winner is exactly the one `domain.best_match` picks by
   scanning every offer (ties: earlier start, the vendor's reliability, vendor, node, offer id).

The explanation of a job that fits nowhere counts whole buckets for region, vendor and resources, and
only looks at single offers for price and availability.

Pure: no database, no bus, no clock. The service builds a book from its schema in each transaction; the
benchmark builds one from the price catalogs.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from uuid import UUID

from libs.common.events.matching import ConstraintMiss
from libs.common.manifest import JobRequest
from services.matching.domain import (
    _HOUR_US,
    _NEVER,
    CONSTRAINTS,
    NO_RECORD,
    Entry,
    Match,
    Need,
    Offer,
    Rank,
    explain,
    to_us,
)

_INF = float("inf")
_PER_BUCKET = 4  # offers per bucket tried for the availability explanation's earliest possible end


class _Bucket:
    """Offers of one market, vendor, shape and calendar shape, sorted by lowest hourly price.

    Offers with one price in every hour bound a job's cost by that price. Offers whose price changes by the
    hour share a bucket with the offers of the same calendar shape (the same stretches), so that the bound
    for a job can look at the stretches inside the job's window only: `suf[k][j]` is the lowest price of
    stretch j among entries k.. (a bound that is tight when the vendor's prices move together).
    """

    __slots__ = ("proto", "keys", "gps", "entries", "_gp", "_suf", "_gps_sorted", "span", "end", "cal_ts")

    def __init__(self, proto: Entry):
        self.proto = proto  # any member: region, vendor and shape are the same for all
        self.keys: list[int] = []  # lowest hourly DTU price of each entry, ascending
        self.gps: list[int] = []  # and its lowest GPU-hour price
        self.entries: list[Entry] = []
        self._gp: list[int] | None = None  # the lowest GPU price from each position on (built when needed)
        self._suf: list[tuple[list[int], list[int]]] | None = None
        self._gps_sorted: list[int] | None = None
        self.span = 0  # the longest run any member's calendar could hold
        self.end = 0  # the end of the latest calendar
        self.cal_ts = proto.cal[0] if proto.cal else None

    def add(self, e: Entry) -> None:
        i = bisect_right(self.keys, e.lb_p)
        self.keys.insert(i, e.lb_p)
        self.gps.insert(i, e.lb_gp)
        self.entries.insert(i, e)
        self._gp = self._suf = self._gps_sorted = None
        self.span = max(self.span, e.tl.span)
        self.end = max(self.end, e.tl.end)

    def remove(self, e: Entry) -> None:
        i = bisect_left(self.keys, e.lb_p)
        while i < len(self.entries) and self.entries[i] is not e:
            i += 1
        if i < len(self.entries):
            del self.keys[i]
            del self.gps[i]
            del self.entries[i]
        self._gp = self._suf = self._gps_sorted = None
        self.span = max((x.tl.span for x in self.entries), default=0)
        self.end = max((x.tl.end for x in self.entries), default=0)

    @property
    def gp(self) -> list[int]:
        """gp[k]: the lowest GPU-hour price among entries k.. (a bound that is tight when a vendor's DTU and GPU
        prices rise together, as they do for nodes priced per machine)."""
        if self._gp is None:
            out = [0] * len(self.entries)
            low = _NEVER
            for k in range(len(self.gps) - 1, -1, -1):
                low = min(low, self.gps[k])
                out[k] = low
            self._gp = out
        return self._gp

    @property
    def gps_sorted(self) -> list[int]:
        if self._gps_sorted is None:
            self._gps_sorted = sorted(self.gps)
        return self._gps_sorted

    @property
    def min_gp(self) -> int:
        return self.gp[0] if self.entries else _NEVER

    @property
    def suf(self) -> list[tuple[list[int], list[int]]]:
        if self._suf is None:
            out: list[tuple[list[int], list[int]]] = [([], [])] * len(self.entries)
            lp: list[int] | None = None
            lg: list[int] | None = None
            for k in range(len(self.entries) - 1, -1, -1):
                cal = self.entries[k].cal
                assert cal is not None
                lp = list(cal[1]) if lp is None else [min(x, y) for x, y in zip(lp, cal[1], strict=True)]
                lg = list(cal[2]) if lg is None else [min(x, y) for x, y in zip(lg, cal[2], strict=True)]
                out[k] = (lp, lg)
            self._suf = out
        return self._suf

    def window(self, n: Need) -> tuple[int, int]:
        """The stretches of this bucket's calendar shape that a run of the job may use: [lo, hi)."""
        assert self.cal_ts is not None
        return (max(bisect_right(self.cal_ts, n.earliest) - 1, 0),
                min(bisect_left(self.cal_ts, n.deadline), len(self.cal_ts) - 1))

    def bound(self, n: Need, k: int, lo: int, hi: int) -> tuple[int, bool]:
        """The lowest cost (scaled as Need.cost) any entry from position k on could give a run of the job
        (_NEVER when none of them has an hour within the job's caps), and whether some run could cost just
        that (else `run_bound` may be higher)."""
        rate, gw = n.rate_num, n.gpu * n.rate_den
        if self.cal_ts is None:
            return rate * self.keys[k] + (gw * self.gp[k] if gw else 0), True
        p, g = self.suf[k]
        return _window_bound(n, self.cal_ts, p, g, lo, hi)

    def run_bound(self, n: Need, k: int, lo: int, hi: int) -> int:
        """A tighter (and dearer to compute) `bound` for a bucket with hourly prices: see `_run_bound`."""
        assert self.cal_ts is not None
        p, g = self.suf[k]
        return _run_bound(n, self.cal_ts, p, g, lo, hi)


def _window_bound(n: Need, ts: tuple[int, ...], p: tuple[int, ...] | list[int], g: tuple[int, ...] | list[int],
                  lo: int, hi: int) -> tuple[int, bool]:
    """The lowest hourly cost among stretches lo..hi-1 priced within the job's caps (_NEVER if none is): a
    run's mean cost is never below the cheapest stretch it runs in. And whether a whole run fits in the job's
    window inside a stretch at that cost (when it does not, `_run_bound` is higher)."""
    rate, gw, cap, gcap, dur = n.rate_num, n.gpu * n.rate_den, n.cap, n.gpu_cap, n.dur
    first, last = n.earliest, n.deadline
    low, longest = _NEVER, 0
    for j in range(lo, hi):
        x = p[j]
        if x <= cap:
            if gw:
                y = g[j]
                if y > gcap:
                    continue
                c = rate * x + gw * y
            else:
                c = rate * x
            if c < low or (c == low and longest < dur):
                a, b = ts[j], ts[j + 1]
                part = (b if b < last else last) - (a if a > first else first)
                longest = part if c < low or part > longest else longest
                low = c
    return low, longest >= dur


def _run_bound(n: Need, ts: tuple[int, ...], p: tuple[int, ...] | list[int], g: tuple[int, ...] | list[int],
               lo: int, hi: int) -> int:
    """The lowest cost of a run of the job over stretches lo..hi-1 (stretch j: ts[j] to ts[j+1]) at these
    hourly prices, or _NEVER if no run fits: a run lasts the job's duration inside its window, uses no stretch
    priced above a cap, and pays at least the time-weighted mean of its stretches' costs. Tighter than
    `_window_bound` when the job runs longer than the cheap stretches, or only the dear hours are in reach."""
    rate, gw, cap, gcap, dur = n.rate_num, n.gpu * n.rate_den, n.cap, n.gpu_cap, n.dur
    low = _NEVER
    k = lo
    while k < hi:
        first = k  # stretches first..k-1, all within the caps: a run stays inside them
        costs: list[int] = []
        while k < hi and p[k] <= cap and (not gw or g[k] <= gcap):
            costs.append(rate * p[k] + (gw * g[k] if gw else 0))
            k += 1
        a, b = max(ts[first], n.earliest), min(ts[k], n.deadline)
        k += 1
        if b - a < dur or not costs or min(costs) >= low:
            continue
        cheapest = min(costs)
        at: list[int] = []  # where each stretch's part of [a, b] starts, and b
        cost: list[int] = []
        longest = 0  # the longest part at the cheapest cost
        for m, c in enumerate(costs, first):
            x, y = max(ts[m], a), min(ts[m + 1], b)
            if x < y:
                at.append(x)
                cost.append(c)
                if c == cheapest:
                    longest = max(longest, y - x)
        if longest >= dur:  # a whole run fits in the cheapest stretch
            low = cheapest
            continue
        at.append(b)
        cum = [0]
        for i, c in enumerate(cost):
            cum.append(cum[-1] + c * (at[i + 1] - at[i]))

        def spent(t: int, at: list[int] = at, cost: list[int] = cost, cum: list[int] = cum) -> int:
            i = min(bisect_right(at, t) - 1, len(cost) - 1)
            return cum[i] + cost[i] * (t - at[i])

        # a run's cost is linear in its start between the starts where it or its end crosses a change
        latest = b - dur
        starts = {a, latest, *(x for x in at if a < x < latest), *(x - dur for x in at if a < x - dur < latest)}
        least = min(spent(t + dur) - spent(t) for t in starts)
        low = min(low, -(-least // dur))
    return low


@dataclass(frozen=True, slots=True)
class Booking:
    job_id: UUID
    offer_id: UUID
    start: int  # us
    end: int  # us
    vcpu: int  # micro-vCPU
    mem: int  # bytes
    gpu: int
    deadline: int = 0  # us: until when it holds once `end` has passed and it was not released (`advance`)


class OrderBook:
    """Offers with their free capacity over time, and the bookings on them."""

    def __init__(self, offers: Iterable[Offer] = (), reliability: Mapping[str, int] | None = None):
        self._reliability = dict(reliability or {})  # vendor -> reliability (ppm), see domain.reliability
        self._entries: dict[UUID, Entry] = {}
        self._buckets: dict[tuple[object, ...], _Bucket] = {}
        self._bookings: dict[UUID, Booking] = {}
        self._candidates: dict[tuple[object, ...], tuple[list[_Bucket], int]] = {}
        self._markets: dict[tuple[object, ...], list[_Bucket]] = {}
        self._regions: dict[str | None, tuple[list[_Bucket], int, list[Entry]]] = {}
        self._ending: list[tuple[int, UUID]] = []  # (end, job) of bookings that hold on past their end
        for o in offers:
            self.add(o)

    def __len__(self) -> int:
        return len(self._entries)

    def offers(self) -> Iterator[Offer]:
        return (e.offer for e in self._entries.values())

    def offer(self, offer_id: UUID) -> Offer | None:
        e = self._entries.get(offer_id)
        return e.offer if e else None

    def fits(self, m: Match, req: JobRequest) -> bool:
        """Whether the run still fits its offer: the job's request is free in every stretch it covers."""
        e = self._entries.get(m.offer.offer_id)
        if e is None:
            return False
        n = Need(req, m.start_at)
        tl, s, t = e.tl, to_us(m.start_at), to_us(m.end_at)
        i = max(bisect_right(tl.ts, s) - 1, 0)
        while i < len(tl.ts) - 1 and tl.ts[i] < t:
            if tl.vc[i] < n.vcpu or tl.mem[i] < n.mem or tl.gpu[i] < n.gpu:
                return False
            i += 1
        return True

    def entry(self, offer_id: UUID) -> Entry | None:
        """An offer as the matcher sees it: its integer facts and its timeline of free capacity."""
        return self._entries.get(offer_id)

    # -- changing the book -------------------------------------------------------------------------------

    def add(self, offer: Offer) -> None:
        """Add an offer, or replace it (capacity, calendar, price); its bookings stay on it."""
        old = self._entries.pop(offer.offer_id, None)
        if old is not None:
            self._bucket_of(old).remove(old)
        e = Entry(offer, self._reliability.get(offer.vendor, NO_RECORD))
        self._entries[offer.offer_id] = e
        key = self._key(e)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(e)
        b.add(e)
        self._forget()  # a new bucket, or a bucket's lowest price changed
        if old is not None:  # a re-published offer: its bookings stay on it
            for bk in self._bookings.values():
                if bk.offer_id == offer.offer_id:
                    e.tl.take(bk.start, bk.end, bk.vcpu, bk.mem, bk.gpu)

    def remove(self, offer_id: UUID) -> None:
        e = self._entries.pop(offer_id, None)
        if e is not None:
            self._bucket_of(e).remove(e)
            self._forget()

    def book(self, job_id: UUID, offer_id: UUID, start: datetime, end: datetime, req: JobRequest) -> None:
        """Take the job's resources out of the offer from start to end (and on to its deadline if it is
        still booked once `end` has passed: see `advance`)."""
        n = Need(req, start)
        self.book_raw(Booking(job_id, offer_id, to_us(start), to_us(end), n.vcpu, n.mem, n.gpu, n.deadline))

    def book_raw(self, bk: Booking) -> None:
        if bk.job_id in self._bookings:
            return
        if bk.deadline > bk.end:
            heapq.heappush(self._ending, (bk.end, bk.job_id))
        self._bookings[bk.job_id] = bk
        e = self._entries.get(bk.offer_id)
        if e is not None:
            e.tl.take(bk.start, bk.end, bk.vcpu, bk.mem, bk.gpu)

    def release(self, job_id: UUID) -> bool:
        """Return a job's booking to its offer."""
        bk = self._bookings.pop(job_id, None)
        if bk is None:
            return False
        e = self._entries.get(bk.offer_id)
        if e is not None:
            e.tl.take(bk.start, bk.end, -bk.vcpu, -bk.mem, -bk.gpu)
        return True

    def advance(self, now: datetime) -> None:
        """Bookings whose end has passed without a release hold their capacity on until the job's deadline,
        when its workload is stopped: a job that overruns its expected duration is never double-booked.
        Time only moves forward here."""
        t = to_us(now)
        while self._ending and self._ending[0][0] <= t:
            end, job_id = heapq.heappop(self._ending)
            bk = self._bookings.get(job_id)
            if bk is None or bk.end != end or bk.deadline <= end:
                continue
            self._bookings[job_id] = replace(bk, end=bk.deadline)
            e = self._entries.get(bk.offer_id)
            if e is not None:
                e.tl.take(bk.end, bk.deadline, bk.vcpu, bk.mem, bk.gpu)

    # -- deciding ----------------------------------------------------------------------------------------

    def best(self, req: JobRequest, now: datetime) -> Match | None:
        """The job's best run: the one `domain.best_match` finds by scanning every offer."""
        n = Need(req, now)
        found = self._best(n)
        return None if found is None else found[1].match(n, found[2])

    def top(self, req: JobRequest, now: datetime, k: int) -> list[Match]:
        """The job's k best runs, each on another offer, best first (what a call auction chooses from)."""
        n = Need(req, now)
        return [e.match(n, run) for _, e, run in self._top(n, k)]

    def _best(self, n: Need) -> tuple[Rank, Entry, tuple[int, int, int, int]] | None:
        found = self._top(n, 1)
        return found[0] if found else None

    def _top(self, n: Need, want: int) -> list[tuple[Rank, Entry, tuple[int, int, int, int]]]:
        cands, floor_gp = self._candidate_buckets(n)  # sorted by their lowest price
        rate, cap, gcap = n.rate_num, n.cap, n.gpu_cap
        gw = n.gpu * n.rate_den  # the weight of the GPU price in a cost (0 without GPUs)
        weak_gp = floor_gp if gw else 0
        over_budget = (n.budget * n.rate_den * _HOUR_US) if n.budget is not None else None
        dur, last_start = n.dur, n.deadline - n.dur
        found: list[tuple[Rank, Entry, tuple[int, int, int, int]]] = []  # best first
        best: tuple[Rank, Entry, tuple[int, int, int, int]] | None = None  # the want-th
        best_cost: float = _INF  # once `want` runs are found: what a run must not exceed to be among them
        # (bound, bucket index, position, whether the bound is as tight as it gets: `run_bound` would not raise it)
        heap: list[tuple[int, int, int, bool]] = []
        windows: dict[int, tuple[int, int]] = {}  # per opened bucket with hourly prices: its stretches in reach
        nxt, nc = 0, len(cands)
        while True:
            # open every bucket that could hold something as cheap as the heap's top; in the order of their
            # lowest price their bounds with the lowest GPU price of all candidates never decrease
            top = heap[0][0] if heap else _INF
            while nxt < nc:
                b = cands[nxt]
                lbp = b.keys[0]
                if lbp > cap:
                    nxt = nc  # no later bucket has an offer within the cap
                    break
                if rate * lbp + gw * weak_gp > top:
                    break
                nxt += 1
                if (gw and b.min_gp > gcap) or dur > b.span or n.earliest + dur > b.end:
                    continue  # no GPU-hour within the cap here, or no calendar long enough
                lo = hi = 0
                if b.cal_ts is not None:
                    lo, hi = windows[nxt - 1] = b.window(n)
                    if lo >= hi:
                        continue
                bound, tight = b.bound(n, 0, lo, hi)
                if bound < _NEVER:
                    heapq.heappush(heap, (bound, nxt - 1, 0, tight))
                    top = heap[0][0]
            if not heap:
                break
            bound, i, k, tight = heapq.heappop(heap)
            if bound > best_cost or (over_budget is not None and bound * dur > over_budget):
                break  # nothing left can be cheaper than the best run (or within the budget)
            b = cands[i]
            lo, hi = windows.get(i, (0, 0))
            if not tight and best_cost < _INF:  # tighten the bound only where that may rule entries out
                tb = b.run_bound(n, k, lo, hi)
                if tb > bound:
                    if tb < _NEVER and tb <= best_cost:
                        heapq.heappush(heap, (tb, i, k, True))
                    continue  # else none of the bucket's entries from k on can be among the best
            e = b.entries[k]
            if k + 1 < len(b.entries) and b.keys[k + 1] <= cap:
                nb, nb_tight = b.bound(n, k + 1, lo, hi)
                if nb < _NEVER:
                    heapq.heappush(heap, (nb, i, k + 1, nb_tight))
            if gw and e.lb_gp > gcap:
                continue  # its own GPU price puts it out of the cap
            if e.cal is not None:
                own, exact = _window_bound(n, *e.cal, lo, hi)
                if own > best_cost or (not exact and best_cost < _INF and _run_bound(n, *e.cal, lo, hi) > best_cost):
                    continue  # a run in its own hours in reach within the caps costs more than the best (or none fits)
            if over_budget is not None and not e.price_ok(n):
                continue
            if dur > e.tl.span or e.tl.ts[-1] - dur < n.earliest or last_start < e.tl.ts[0]:
                continue  # its calendar cannot hold the run before the deadline
            if best is not None and bound == best_cost and not n.soonest and best[0][1] == n.earliest \
                    and e.tie > best[1].tie:
                continue  # at best a tie on cost and start, lost on the tie-break
            run = e.run(n, best_cost)
            if run is None:
                continue
            key = e.rank(n, run[0], run[2], run[3])
            if best is None or key < best[0]:
                found.insert(bisect_right([f[0] for f in found], key), (key, e, run))
                del found[want:]
                if len(found) == want:
                    best = found[-1]
                    if not n.soonest or best[2][0] == n.earliest:
                        best_cost = n.cost(best[2][2], best[2][3])
        return found

    def scan(self, req: JobRequest, now: datetime) -> Match | None:
        """The naive matcher: every offer is checked (the benchmark's baseline; same rules, same winner)."""
        n = Need(req, now)
        best: tuple[Rank, Entry, tuple[int, int, int, int]] | None = None
        for e in self._entries.values():
            if e.miss(n) is not None:
                continue
            run = e.run(n)
            assert run is not None
            key = e.rank(n, run[0], run[2], run[3])
            if best is None or key < best[0]:
                best = (key, e, run)
        return None if best is None else best[1].match(n, best[2])

    def explain(self, req: JobRequest, now: datetime) -> list[ConstraintMiss]:
        """Why the job fits no offer: per constraint, how many offers it excluded and the nearest miss.

        Meant for a job that `best` found no run for: every offer that passes the constraints before
        availability is then counted against availability without being tried again. Region, vendor and
        resources are decided per bucket, price by the buckets' price order; the availability detail (the
        earliest possible end) looks at the cheapest few offers of each bucket.
        """
        n = Need(req, now)
        misses: dict[str, list[Entry]] = {c: [] for c in CONSTRAINTS}
        counts = dict.fromkeys(CONSTRAINTS, 0)
        region, in_region, outside = self._region(n)
        counts["region"] = len(self._entries) - in_region
        misses["region"] = outside
        market = self._market(n)
        counts["vendor"] = in_region - sum(len(b.entries) for b in market)
        if counts["vendor"]:
            misses["vendor"] = [next(b.proto for b in region if not b.proto.vendor_ok(n))]
        for b in market:
            if not b.proto.shape_ok(n):
                counts["resources"] += len(b.entries)
                misses["resources"].append(b.proto)  # one shape per bucket: any member says how big it is
                continue
            k = bisect_right(b.keys, n.cap)  # entries[k:] cost more per DTU-hour than the cap
            if k < len(b.entries):
                misses["price"].append(b.entries[k])
            if n.budget is not None:
                priced = [e for e in b.entries[:k] if e.price_ok(n)]
                misses["price"].extend([e for e in b.entries[:k] if not e.price_ok(n)][:1])
            elif n.gpu:
                gcap = n.gpu_cap
                within = bisect_right(b.gps_sorted, gcap) if k == len(b.entries) else sum(map(gcap.__ge__, b.gps[:k]))
                if within < k:  # within the DTU cap, above the GPU cap: the cheapest of those
                    g = min(x for x in b.gps[:k] if x > gcap)
                    misses["price"].append(b.entries[b.gps.index(g)])
                counts["availability"] += within
                counts["price"] += len(b.entries) - within
                misses["availability"].extend(islice((e for e in b.entries[:k] if e.lb_gp <= gcap), _PER_BUCKET))
                continue
            else:
                priced = b.entries[:k]
            counts["price"] += len(b.entries) - len(priced)
            counts["availability"] += len(priced)
            misses["availability"].extend(priced[:_PER_BUCKET])
        reasons = explain(n, misses)
        return [r.model_copy(update={"excluded": counts[r.constraint]}) for r in reasons]

    def analyse(self, req: JobRequest, now: datetime) -> tuple[dict[str, int], list[ConstraintMiss], Match | None]:
        """Every offer checked against the job, matched or not: per constraint how many offers it excluded and
        the nearest miss (the constraints that excluded none included, with no detail), how many fit, and the
        best run now. A scan of the whole book: for `smctl explain`, not for deciding."""
        n = Need(req, now)
        misses: dict[str, list[Entry]] = {c: [] for c in CONSTRAINTS}
        fit = 0
        for e in self._entries.values():
            miss = e.miss(n)
            if miss is None:
                fit += 1
            else:
                misses[miss].append(e)
        reasons = {r.constraint: r for r in explain(n, misses)}
        counts = {c: len(es) for c, es in misses.items()} | {"fit": fit}
        every = [reasons.get(c) or ConstraintMiss(constraint=c, excluded=0, detail="") for c in CONSTRAINTS]
        return counts, every, self.best(req, now)

    def decide(self, req: JobRequest, now: datetime) -> tuple[Match | None, list[ConstraintMiss]]:
        """The best run, or why there is none (as `domain.best_match` over every offer)."""
        m = self.best(req, now)
        return (m, []) if m is not None else (None, self.explain(req, now))

    # -- the index ---------------------------------------------------------------------------------------

    def _forget(self) -> None:
        self._candidates.clear()
        self._markets.clear()
        self._regions.clear()

    @staticmethod
    def _key(e: Entry) -> tuple[object, ...]:
        return (e.region, e.country, e.eu, e.vendor, e.attributes, e.vc, e.mem, e.gpu, e.model,
                e.cal[0] if e.cal else None)

    def _bucket_of(self, e: Entry) -> _Bucket:
        return self._buckets[self._key(e)]

    def _region(self, n: Need) -> tuple[list[_Bucket], int, list[Entry]]:
        """The buckets in the job's region, how many offers they hold, and one offer outside it (if any)."""
        got = self._regions.get(n.region)
        if got is None:
            inside = [b for b in self._buckets.values() if b.entries and b.proto.region_ok(n)]
            outside = next((b.proto for b in self._buckets.values() if b.entries and not b.proto.region_ok(n)), None)
            got = self._regions[n.region] = (inside, sum(len(b.entries) for b in inside),
                                             [outside] if outside else [])
        return got

    def _market(self, n: Need) -> list[_Bucket]:
        """The buckets in the job's region of the vendors it accepts, by lowest price."""
        where = (n.region, n.vendors, n.deny, n.attributes)
        market = self._markets.get(where)
        if market is None:
            market = [b for b in self._region(n)[0] if b.proto.vendor_ok(n)]
            market.sort(key=lambda b: b.keys[0])  # re-sorted whenever a price changes (_forget)
            self._markets[where] = market
        return market

    def _candidate_buckets(self, n: Need) -> tuple[list[_Bucket], int]:
        """Buckets whose region, vendor and shape admit the job, by lowest price; and their lowest GPU price."""
        key = (n.region, n.vendors, n.deny, n.attributes, n.vcpu, n.mem, n.gpu, n.model)
        got = self._candidates.get(key)
        if got is None:
            fit = [b for b in self._market(n) if b.proto.shape_ok(n)]
            got = (fit, min((b.min_gp for b in fit), default=0) if n.gpu else 0)
            if len(self._candidates) > 50_000:  # many kinds of request: start over rather than grow
                self._candidates.clear()
            self._candidates[key] = got
        return got
