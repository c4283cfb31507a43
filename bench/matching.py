"""How fast the order book decides, against a naive matcher and HTCondor's ClassAd matching, in one run.

    .venv/bin/python bench/matching.py [--offers 100000] [--jobs 100000] [--naive-sample 200]

Offers: every price catalog in `<data dir>/prices/` (clients.agent.catalog, plus the two seed vendors),
replicated to --offers nodes, each with an availability calendar over the coming week (always on, day and
night prices, opening later, part of the node free at first, nights only) and its price spread a little
around the catalog's. Jobs: the Alibaba GPU cluster trace and the SWF log of `<data dir>/traces/`,
replicated to --jobs, arriving one after another over three days, with price caps drawn around the market
price so that some cannot match, some restricted to a region or to vendors, some preferring `soonest`.

Phases, all on the same inputs:

  continuous  every job in arrival order through `OrderBook.best` (+ `explain` when nothing fits), booking
              what it gets: matches/s, per-job decision latency p50/p99
  naive       every --naive-every-th job is decided first by `OrderBook.scan`, which checks every offer with
              the same rules, on the same book state; the two decisions must be identical
  classad     HTCondor's `classad2.ClassAd.symmetricMatch` plus its Rank on equivalent Requirements/Rank
              expressions, for a sample of job-offer pairs, against our rules on the same pairs
  clearing    the same order flow (a slice of it) cleared continuously and by a periodic call auction
              (`services.matching.clearing`): total cost, fill rate, deadline misses

It prints figures and ratios and never asserts a speed. The last line is for scripts:

    matches_per_s=… p99_ms=… speedup_vs_naive=… peak_mb=…
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import random
import resource
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clients.agent.catalog import CatalogOffer, default_data_dir, load_catalog_offers, seed_vendor_offers  # noqa: E402
from libs.common.ids import offer_id  # noqa: E402
from libs.common.manifest import JobRequest, Resources, Restrictions  # noqa: E402
from services.matching.book import Booking, OrderBook  # noqa: E402
from services.matching.domain import Match, Need, Offer, Slot, to_us  # noqa: E402

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)  # a Monday, midnight: the market opens
H = timedelta(hours=1)
HORIZON_H = 7 * 24  # calendars cover the coming week
ARRIVALS_H = 72  # jobs arrive over the first three days
ALIBABA = "alibaba-gpu-v2023/openb_pod_list_gpuspec33.csv"
SWF = "coare-saliksik-2020/DOST-ASTI_COARE-Saliksik-2020-cln.first806jobs.swf"
GIB = Decimal(2**30)
NS = UUID("6c1d3f4e-2f0b-4a52-9d7e-1b0f5a3c9e10")
# the trace's GPU types as the catalogs name them; a type no catalog sells (T4, A10, Alibaba's undisclosed
# G1-G3) becomes "any GPU", so that what cannot match is decided by price and time, not by a name
GPU_NAMES = {"V100M16": "V100", "V100M32": "V100-32GB", "P100": "P100"}


def out(line: str = "") -> None:
    print(line, flush=True)


# -- offers ---------------------------------------------------------------------------------------------------

_hours: dict[int, datetime] = {}


def hour(h: int) -> datetime:
    """The market's h-th hour (shared objects: 100,000 calendars use the same few hundred instants)."""
    t = _hours.get(h)
    if t is None:
        t = _hours[h] = T0 + h * H
    return t


_ints: dict[int, int] = {}


def scaled(price: int, factor: float) -> int:
    v = max(1, round(price * factor))
    return _ints.setdefault(v, v)  # one object per price, as a service reading them would intern them too


def calendar(c: CatalogOffer, price: int, gpu_price: int | None, kind: str, rnd: random.Random) -> tuple[Slot, ...]:
    """One node's week: the shapes of availability vendors publish."""
    def slot(a: int, b: int, f: float = 1.0, half: bool = False) -> Slot:
        vcpu, mem = (_halves(c) if half else (c.vcpu, c.memory_gib))
        return Slot(hour(a), hour(b), vcpu, mem, 0 if half else c.gpu_count,
                    scaled(price, f), scaled(gpu_price, f) if gpu_price else None)
    if kind == "always":
        return (slot(0, HORIZON_H),)
    if kind == "day-night":  # peak 08-20 dearer, nights cheaper
        out_: list[Slot] = []
        for d in range(7):
            out_ += [slot(24 * d, 24 * d + 8, 0.8), slot(24 * d + 8, 24 * d + 20, 1.25),
                     slot(24 * d + 20, 24 * d + 24, 0.8)]
        return tuple(out_)
    if kind == "later":  # opens some hours from now
        return (slot(rnd.randrange(2, 49), HORIZON_H),)
    if kind == "partial":  # half the node is in use for the first day
        return (slot(0, 24, half=True), slot(24, HORIZON_H))
    # nights only, 18-08
    return (slot(0, 8), *(slot(24 * d + 18, 24 * d + 32) for d in range(6)), slot(24 * 6 + 18, HORIZON_H))


_half: dict[tuple[Decimal, Decimal], tuple[Decimal, Decimal]] = {}


def _halves(c: CatalogOffer) -> tuple[Decimal, Decimal]:
    return _half.setdefault((c.vcpu, c.memory_gib), (c.vcpu / 2, c.memory_gib / 2))


KINDS = (("always", 50), ("day-night", 20), ("later", 15), ("partial", 10), ("nights", 5))


GDPR, NONE = frozenset({"gdpr"}), frozenset[str]()


def build_offers(n: int, seed: int) -> tuple[list[Offer], int]:
    """n nodes: the catalogs' offers in turn, each node priced within 10% of its catalog offer."""
    catalog = load_catalog_offers() + seed_vendor_offers()
    rnd = random.Random(seed)
    kinds = [k for k, w in KINDS for _ in range(w)]
    offers = []
    for i in range(n):
        c = catalog[i % len(catalog)]
        f = 1 + rnd.randrange(-20, 21) / 200  # 0.5% steps: identical nodes sometimes share a price
        price = scaled(c.price_micro_eur_per_dtu_hour, f)
        gpu_price = scaled(c.price_micro_eur_per_gpu_hour, f) if c.price_micro_eur_per_gpu_hour else None
        cal = calendar(c, price, gpu_price, rnd.choice(kinds), rnd)
        node = f"{c.node}-{i // len(catalog):04d}"
        offers.append(Offer(
            offer_id=offer_id(c.vendor, node), vendor=c.vendor, node=node, region=c.region, country=c.country,
            eu=c.eu, free_vcpu=c.vcpu, free_memory_gib=c.memory_gib, free_gpu=c.gpu_count, gpu_model=c.gpu_model,
            price_micro_eur_per_dtu_hour=min(s.price_micro_eur_per_dtu_hour for s in cal),
            price_micro_eur_per_gpu_hour=min((s.price_micro_eur_per_gpu_hour or 0 for s in cal), default=None)
            or None, available_from=cal[0].start, available_until=cal[-1].end, calendar=cal,
            attributes=GDPR if c.eu else NONE))
    return offers, len(catalog)


# -- jobs -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    source: str  # alibaba | swf
    cpu_milli: int
    memory_mib: int
    gpu: int
    gpu_model: str | None
    duration_s: int
    limit_s: int  # the user's runtime limit (SWF), else 0


def load_tasks(traces: Path) -> list[Task]:
    tasks = []
    with open(traces / ALIBABA, newline="") as f:
        for r in csv.DictReader(f):
            d = int(r["deletion_time"]) - int(r["creation_time"])
            if d <= 0 or int(r["cpu_milli"]) <= 0 or int(r["memory_mib"]) <= 0:
                continue
            spec = (r["gpu_spec"] or "").split("|")[0]
            tasks.append(Task("alibaba", int(r["cpu_milli"]), int(r["memory_mib"]), int(r["num_gpu"]),
                              GPU_NAMES.get(spec) if int(r["num_gpu"]) else None, d, 0))
    for line in open(traces / SWF):
        if line.startswith(";") or not line.strip():
            continue
        x = line.split()
        procs = int(x[7]) if int(x[7]) > 0 else int(x[4])
        run, limit = int(x[3]), int(x[8])
        if procs <= 0 or run < 0:
            continue
        tasks.append(Task("swf", procs * 1000, procs * 4096, 0, None, max(run, 60), max(limit, run, 60)))
    return tasks


def market_prices(offers: list[Offer]) -> tuple[int, dict[str | None, int]]:
    """The median DTU price of CPU nodes, and the median GPU-hour price per GPU model (None: any)."""
    cpu = statistics.median(o.price_micro_eur_per_dtu_hour for o in offers if not o.free_gpu)
    by_model: dict[str | None, list[int]] = {}
    for o in offers:
        if o.free_gpu and o.price_micro_eur_per_gpu_hour:
            by_model.setdefault((o.gpu_model or "").lower(), []).append(o.price_micro_eur_per_gpu_hour)
            by_model.setdefault(None, []).append(o.price_micro_eur_per_gpu_hour)
    return int(cpu), {k: int(statistics.median(v)) for k, v in by_model.items()}


class Jobs:
    """The i-th job of the order flow, made when it is needed (the same i gives the same job)."""

    def __init__(self, tasks: list[Task], offers: list[Offer], n: int, seed: int):
        self.tasks, self.n, self.seed = tasks, n, seed
        self.cpu_price, self.gpu_price = market_prices(offers)
        self.places = sorted({o.region for o in offers}) + sorted({o.country for o in offers}) + ["EU"]
        self.vendors = sorted({o.vendor for o in offers})

    def arrival(self, i: int) -> datetime:
        return T0 + timedelta(seconds=ARRIVALS_H * 3600 * i // self.n)

    def job_id(self, i: int) -> UUID:
        return uuid5(NS, f"job/{i}")

    def __call__(self, i: int) -> JobRequest:
        rnd = random.Random(self.seed * 1_000_003 + i)
        t = self.tasks[i % len(self.tasks)]
        now = self.arrival(i)
        if t.source == "swf":
            deadline = now + timedelta(seconds=round(t.limit_s * rnd.uniform(1.2, 3.0)))
        else:
            deadline = now + timedelta(seconds=round(t.duration_s * rnd.uniform(1.5, 4.0))) + rnd.randrange(0, 13) * H
        restrictions = Restrictions()
        roll = rnd.random()
        if roll < 0.30:
            restrictions = Restrictions(region=rnd.choice(self.places))
        elif roll < 0.35:
            restrictions = Restrictions(vendors=tuple(rnd.sample(self.vendors, 3)))
        gpu_cap = None
        if t.gpu:
            ref = self.gpu_price.get(t.gpu_model.lower() if t.gpu_model else None) or self.gpu_price[None]
            gpu_cap = scaled(ref, rnd.uniform(0.5, 2.0))
        extra: dict[str, Any] = {}
        if rnd.random() < 0.1:
            extra["preference"] = "soonest"
        return JobRequest(
            tenant=f"t{i % 50:02d}", name=f"job-{i:06d}", not_after=deadline,
            # the cap: around the market's median DTU price, from 40% to 160% of it: some cannot match
            max_micro_eur_per_dtu_hour=scaled(self.cpu_price if not t.gpu else 10 * self.cpu_price,
                                              rnd.uniform(0.4, 1.6)),
            max_micro_eur_per_gpu_hour=gpu_cap, command=("run",),
            resources=Resources(vcpu=Decimal(t.cpu_milli) / 1000, memory_gib=Decimal(t.memory_mib) / 1024,
                                gpu=t.gpu, gpu_model=t.gpu_model),
            expected_duration_s=t.duration_s, restrictions=restrictions, **extra)


# -- measuring ------------------------------------------------------------------------------------------------

def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def booking(job_id: UUID, m: Match, req: JobRequest) -> Booking:
    n = Need(req, m.start_at)
    return Booking(job_id, m.offer.offer_id, to_us(m.start_at), to_us(m.end_at), n.vcpu, n.mem, n.gpu)


# -- phases ---------------------------------------------------------------------------------------------------

@dataclass
class Continuous:
    decided: int = 0
    matched: int = 0
    seconds: float = 0.0
    lat_ms: list[float] | None = None
    reasons: Counter[str] | None = None
    sample_index_ms: list[float] | None = None
    sample_naive_ms: list[float] | None = None
    mismatches: int = 0
    cost_micro_eur: int = 0


def run_continuous(book: OrderBook, jobs: Jobs, n: int, naive_every: int) -> Continuous:
    r = Continuous(lat_ms=[], reasons=Counter(), sample_index_ms=[], sample_naive_ms=[])
    assert r.lat_ms is not None and r.reasons is not None
    assert r.sample_index_ms is not None and r.sample_naive_ms is not None
    gc.collect()
    gc.freeze()  # the inputs are long-lived: keep the collector off them, as a long-running service would
    clock = time.perf_counter
    for i in range(n):
        req, now = jobs(i), jobs.arrival(i)
        naive: Match | None = None
        if naive_every and i % naive_every == 0:
            t = clock()
            naive = book.scan(req, now)
            r.sample_naive_ms.append((clock() - t) * 1000)
        t = clock()
        m = book.best(req, now)
        if m is not None:
            book.book_raw(booking(jobs.job_id(i), m, req))
        else:
            reasons = book.explain(req, now)
        dt = clock() - t
        r.lat_ms.append(dt * 1000)
        r.seconds += dt
        r.decided += 1
        if naive_every and i % naive_every == 0:
            r.sample_index_ms.append(dt * 1000)
            if naive != m:
                r.mismatches += 1
        if m is not None:
            r.matched += 1
            r.cost_micro_eur += job_cost(req, m)
        else:
            # the last constraint that excluded offers is the one that decided (the earlier ones excluded
            # others before it was checked)
            r.reasons[reasons[-1].constraint if reasons else "no offers"] += 1
        if (i + 1) % 20_000 == 0:
            out(f"  … {i + 1:,} jobs decided ({r.matched:,} matched), {r.seconds:.1f} s in decisions")
    gc.unfreeze()
    return r


def job_cost(req: JobRequest, m: Match) -> int:
    """Expected cost of a run in micro-euros: hourly cost times expected hours."""
    hourly = req.resources.dtu_rate * m.price_micro_eur_per_dtu_hour + req.resources.gpu * (
        m.price_micro_eur_per_gpu_hour or 0)
    return int(hourly * req.expected_duration_s / 3600)


def classad_phase(book: OrderBook, jobs: Jobs, n_jobs: int, n_offers: int, seed: int) -> dict[str, Any] | None:
    """Cost per job-offer pair: ClassAd symmetricMatch + Rank against our rules, on the same pairs."""
    try:
        import classad2  # type: ignore[import-not-found]
    except ImportError as e:
        out(f"classad: the htcondor package (classad2) cannot be imported here ({e}); skipped")
        return None
    rnd = random.Random(seed)
    entries = rnd.sample(list(book._entries.values()), min(n_offers, len(book)))
    job_ix = rnd.sample(range(jobs.n), n_jobs)
    machine_req = classad2.ExprTree(
        "TARGET.RequestCpus <= MY.Cpus && TARGET.RequestMemory <= MY.Memory && TARGET.RequestGpus <= MY.Gpus "
        "&& TARGET.MaxPricePerDTU >= MY.PricePerDTU")
    job_req = classad2.ExprTree(
        "TARGET.Cpus >= MY.RequestCpus && TARGET.Memory >= MY.RequestMemory && TARGET.Gpus >= MY.RequestGpus "
        "&& (MY.WantGpuModel is undefined || toLower(TARGET.GpuModel) == MY.WantGpuModel) "
        "&& (MY.WantRegion is undefined || toLower(TARGET.Region) == MY.WantRegion "
        "|| toLower(TARGET.Country) == MY.WantRegion || (MY.WantRegion == \"eu\" && TARGET.EU)) "
        "&& (MY.Vendors is undefined || member(TARGET.Vendor, MY.Vendors)) "
        "&& TARGET.PricePerDTU <= MY.MaxPricePerDTU "
        "&& (MY.RequestGpus == 0 || TARGET.PricePerGPU <= MY.MaxPricePerGPU) "
        "&& ifThenElse(TARGET.AvailableFrom > MY.Now, TARGET.AvailableFrom, MY.Now) + MY.Duration "
        "<= TARGET.AvailableUntil "
        "&& ifThenElse(TARGET.AvailableFrom > MY.Now, TARGET.AvailableFrom, MY.Now) + MY.Duration <= MY.NotAfter")
    rank = classad2.ExprTree("-(MY.DtuRate * TARGET.PricePerDTU + MY.RequestGpus * TARGET.PricePerGPU)")
    machines = []
    for e in entries:
        o = e.offer
        machines.append(classad2.ClassAd({
            "Cpus": float(o.free_vcpu), "Memory": int(o.free_memory_gib * 1024), "Gpus": o.free_gpu,
            "GpuModel": o.gpu_model or "", "Region": o.region, "Country": o.country, "EU": o.eu, "Vendor": o.vendor,
            "PricePerDTU": o.price_micro_eur_per_dtu_hour, "PricePerGPU": o.price_micro_eur_per_gpu_hour or 0,
            "AvailableFrom": int(o.available_from.timestamp()), "AvailableUntil": int(o.available_until.timestamp()),
            "Requirements": machine_req}))
    ads, needs = [], []
    for i in job_ix:
        req, now = jobs(i), jobs.arrival(i)
        ad = classad2.ClassAd({
            "RequestCpus": float(req.resources.vcpu), "RequestMemory": int(req.resources.memory_gib * 1024),
            "RequestGpus": req.resources.gpu, "MaxPricePerDTU": req.max_micro_eur_per_dtu_hour,
            "MaxPricePerGPU": req.max_micro_eur_per_gpu_hour or 0, "DtuRate": float(req.resources.dtu_rate),
            "Now": int(now.timestamp()), "Duration": req.expected_duration_s,
            "NotAfter": int(req.not_after.timestamp()), "Requirements": job_req, "Rank": rank})
        if req.resources.gpu_model:
            ad["WantGpuModel"] = req.resources.gpu_model.lower()
        if req.restrictions.region:
            ad["WantRegion"] = req.restrictions.region.strip().lower()
        if req.restrictions.vendors:
            ad["Vendors"] = list(req.restrictions.vendors)
        ads.append(ad)
        needs.append(Need(req, now))
    clock = time.perf_counter
    t = clock()
    ca_matches = 0
    for ad in ads:
        for m in machines:
            if ad.symmetricMatch(m):
                ca_matches += 1
                rank.eval(ad, m)
    ca_s = clock() - t
    t = clock()
    ours = 0
    for nd in needs:
        for e in entries:
            if e.miss(nd) is None:
                ours += 1
                run = e.run(nd)
                assert run is not None
                e.rank(nd, run[0], run[2], run[3])
    ours_s = clock() - t
    pairs = len(ads) * len(machines)
    return {"pairs": pairs, "classad_us": ca_s / pairs * 1e6, "ours_us": ours_s / pairs * 1e6,
            "classad_fit": ca_matches, "ours_fit": ours}


def compare_mechanisms(n_offers: int, jobs: Jobs, n_jobs: int, interval_min: int, seed: int) -> None:
    """Continuous matching and periodic clearing on the same order flow and the same offers."""
    from services.matching.clearing import clear, run_cost

    offers, _ = build_offers(n_offers, seed + 1)
    reqs = [(jobs.job_id(i), jobs(i), jobs.arrival(i)) for i in range(n_jobs)]
    span = reqs[-1][2] - reqs[0][2]
    out(f"\ncontinuous vs periodic clearing on the same order flow: the first {n_jobs:,} jobs ({span} of arrivals) "
        f"on {n_offers:,} nodes built the same way; rounds every {interval_min} min, solved by HiGHS "
        "(scipy.optimize.milp): the most jobs filled, then the least total cost; each job pays the ask of its run")

    def feasible_at_arrival(book: OrderBook, req: JobRequest, at: datetime) -> bool:
        return book.best(req, at) is not None

    # continuous: each job takes the best run left when it arrives
    book = OrderBook(offers)
    cont: dict[UUID, int] = {}
    t = time.perf_counter()
    for jid, req, at in reqs:
        m = book.best(req, at)
        if m is not None:
            book.book_raw(booking(jid, m, req))
            cont[jid] = run_cost(req, m)
    cont_s = time.perf_counter() - t
    cont_unfillable = n_jobs - len(cont)

    # periodic: jobs wait for the next round; a job still unmatched is carried over while its deadline allows
    book = OrderBook(offers)
    per: dict[UUID, int] = {}
    waiting: list[tuple[UUID, JobRequest]] = []
    feasible: set[UUID] = set()
    missed = rounds = 0
    solve_s: list[float] = []
    unproven = 0
    round_sizes: list[int] = []
    step = timedelta(minutes=interval_min)
    at = reqs[0][2].replace(second=0) + step
    i = 0
    while i < len(reqs) or waiting:
        while i < len(reqs) and reqs[i][2] <= at:
            jid, req, arrived = reqs[i]
            if feasible_at_arrival(book, req, arrived):
                feasible.add(jid)
            waiting.append((jid, req))
            i += 1
        alive = [(jid, req) for jid, req in waiting
                 if at + timedelta(seconds=req.expected_duration_s) <= req.not_after]
        missed += sum(1 for jid, _ in waiting if jid in feasible and (jid, _) not in alive)
        if alive:
            t = time.perf_counter()
            result = clear(book, alive, at)
            solve_s.append(time.perf_counter() - t)
            unproven += not result.proven
            round_sizes.append(len(alive))
            rounds += 1
            for jid, m in result.matches.items():
                req = next(r for j, r in alive if j == jid)
                per[jid] = run_cost(req, m)
            # a job nothing fits now keeps waiting only if it fitted when it came (the book only fills up here)
            waiting = [(jid, req) for jid, req in alive if jid not in result.matches and jid in feasible]
        else:
            waiting = []
        at += step
        if i >= len(reqs) and not waiting:
            break
    missed += len(waiting)
    both = set(cont) & set(per)
    eur = lambda micro: f"€{micro / 1e6:,.2f}"  # noqa: E731
    out(f"  {'':<12} {'filled':>8} {'fill rate':>9} {'total cost':>14} {'per job':>9} {'same jobs':>14} "
        f"{'deadline misses':>15}")
    out(f"  {'continuous':<12} {len(cont):>8,} {len(cont) / n_jobs:>9.1%} {eur(sum(cont.values())):>14} "
        f"{eur(sum(cont.values()) / max(1, len(cont))):>9} {eur(sum(cont[j] for j in both)):>14} {0:>15}")
    out(f"  {'periodic':<12} {len(per):>8,} {len(per) / n_jobs:>9.1%} {eur(sum(per.values())):>14} "
        f"{eur(sum(per.values()) / max(1, len(per))):>9} {eur(sum(per[j] for j in both)):>14} {missed:>15,}")
    out(f"  (same jobs: the {len(both):,} jobs both filled; continuous: {cont_unfillable:,} jobs found nothing on "
        f"arrival, decided in {cont_s:.1f} s; periodic: {rounds} rounds of {statistics.fmean(round_sizes):.0f} jobs "
        f"on average, solved in {statistics.fmean(solve_s) * 1000:.0f} ms mean, {max(solve_s) * 1000:.0f} ms "
        f"max, {rounds - unproven} of {rounds} proven optimal before the solver's time limit; a deadline miss is "
        "a job that fitted when it came and found nothing before its deadline)")


# -- main -----------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--offers", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--naive-every", type=int, default=500,
                    help="decide every N-th job with the naive matcher too (0: never)")
    ap.add_argument("--classad-jobs", type=int, default=20)
    ap.add_argument("--classad-offers", type=int, default=1000)
    ap.add_argument("--clearing-jobs", type=int, default=1500)
    ap.add_argument("--clearing-offers", type=int, default=2000)
    ap.add_argument("--clearing-interval", type=int, default=2, help="minutes between clearing rounds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true",
                    help="measure the book with tracemalloc (slower, and it inflates the process's peak RSS)")
    a = ap.parse_args()

    data = default_data_dir()
    out(f"strongmoose matching benchmark: {a.offers:,} offers, {a.jobs:,} jobs; data {data.name}/")
    base_rss = rss_mb()
    if a.tracemalloc:
        tracemalloc.start()
    t = time.perf_counter()
    offers, n_catalog = build_offers(a.offers, a.seed)
    t_offers = time.perf_counter() - t
    offers_mb = tracemalloc.get_traced_memory()[0] / 2**20 if a.tracemalloc else rss_mb() - base_rss
    t = time.perf_counter()
    book = OrderBook(offers)
    t_book = time.perf_counter() - t
    book_mb = tracemalloc.get_traced_memory()[0] / 2**20 if a.tracemalloc else rss_mb() - base_rss
    tracemalloc.stop()
    how = "tracemalloc" if a.tracemalloc else "RSS growth"
    cal_kinds = Counter(len(o.calendar) for o in offers)
    out(f"offers: {n_catalog} catalog offers (every file in prices/ + 2 seed vendors) replicated to {len(offers):,} "
        f"nodes in {len({o.region for o in offers})} regions; calendars of {min(cal_kinds)}-{max(cal_kinds)} windows "
        f"over {HORIZON_H} h; built in {t_offers:.1f} s")
    out(f"book: {len(book._buckets):,} buckets, indexed in {t_book:.1f} s; memory ({how}) offers "
        f"{offers_mb:.0f} MB + index and timelines {book_mb - offers_mb:.0f} MB = {book_mb:.0f} MB")

    tasks = load_tasks(data / "traces")
    jobs = Jobs(tasks, offers, a.jobs, a.seed)
    src = Counter(t.source for t in tasks)
    out(f"jobs: {len(tasks):,} trace tasks (Alibaba {src['alibaba']:,}, SWF {src['swf']:,}) replicated to "
        f"{a.jobs:,}, arriving over {ARRIVALS_H} h; market price {jobs.cpu_price / 1e6:.4f} EUR/DTU-h, "
        f"caps 40-160% of it")
    del offers  # the book holds them

    out("\ncontinuous matching (OrderBook.best, explain when nothing fits):")
    c = run_continuous(book, jobs, a.jobs, a.naive_every)
    assert c.lat_ms is not None and c.reasons is not None
    assert c.sample_index_ms is not None and c.sample_naive_ms is not None
    matches_per_s = c.matched / c.seconds if c.seconds else 0.0
    p50, p99 = pct(c.lat_ms, 50), pct(c.lat_ms, 99)
    out(f"  decided {c.decided:,} jobs in {c.seconds:.2f} s of decisions: {c.decided / c.seconds:,.0f} decisions/s, "
        f"{c.matched:,} matched ({100 * c.matched / c.decided:.1f}%), {matches_per_s:,.0f} matches/s")
    out(f"  per-job decision latency: p50 {p50:.3f} ms, p90 {pct(c.lat_ms, 90):.3f} ms, p99 {p99:.3f} ms, "
        f"max {max(c.lat_ms):.1f} ms")
    out("  unmatched, by the constraint that excluded the last candidates: "
        + ", ".join(f"{k} {v:,}" for k, v in c.reasons.most_common()))
    speedup = float("nan")
    if c.sample_naive_ms:
        naive_mean = statistics.fmean(c.sample_naive_ms)
        index_mean = statistics.fmean(c.sample_index_ms)
        speedup = naive_mean / index_mean
        out(f"\nnaive matcher (OrderBook.scan: every offer checked) on {len(c.sample_naive_ms)} sampled jobs "
            f"(every {a.naive_every}th, same book state): mean {naive_mean:.1f} ms/job vs the book's "
            f"{index_mean:.3f} ms on the same jobs; identical decisions: "
            f"{len(c.sample_naive_ms) - c.mismatches}/{len(c.sample_naive_ms)}")
        out(f"  extrapolated, all {a.jobs:,} jobs: naive {naive_mean * a.jobs / 1000:,.0f} s vs the book's "
            f"{c.seconds:.1f} s measured ({naive_mean * a.jobs / 1000 / c.seconds:,.0f}x); "
            f"speed-up on the same jobs {speedup:,.0f}x")
    ca = classad_phase(book, jobs, a.classad_jobs, a.classad_offers, a.seed) if a.classad_jobs else None
    if ca:
        out(f"\nHTCondor ClassAds (classad2 symmetricMatch + Rank, equivalent expressions; a calendar is one "
            f"window there) on {ca['pairs']:,} job-offer pairs: {ca['classad_us']:.2f} us/pair vs our rules "
            f"{ca['ours_us']:.2f} us/pair; pairs that fit: ClassAd {ca['classad_fit']:,}, ours {ca['ours_fit']:,}")
        out(f"  one job against all {len(book):,} offers: ClassAd {ca['classad_us'] * len(book) / 1000:,.0f} ms "
            f"(every pair), the book {statistics.fmean(c.lat_ms):.3f} ms mean")

    if a.clearing_jobs:
        compare_mechanisms(a.clearing_offers, jobs, a.clearing_jobs, a.clearing_interval, a.seed)

    peak = peak_rss_mb()
    out(f"\nmemory: peak RSS {peak:.0f} MB (the whole process: interpreter, libraries, the book with "
        f"{len(book):,} offers and every booking; {base_rss:.0f} MB at start), book after matching "
        f"{rss_mb() - base_rss:.0f} MB (RSS growth)")
    out(f"matches_per_s={matches_per_s:.0f} p99_ms={p99:.3f} speedup_vs_naive={speedup:.0f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
