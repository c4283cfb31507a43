"""Periodic clearing: a call auction that assigns the jobs gathered over an interval all at once.

Where continuous matching gives each arriving job the best run left at that moment (first come, first
served), a clearing round looks at all the round's jobs together and chooses the assignment that fills
the most jobs and, among those, costs least in total, as a day-ahead power market clears the bids of a
whole day at once. The round is a 0-1 integer program solved exactly by HiGHS (`scipy.optimize.milp`,
relative gap 0):

- a variable per job and candidate run: the job's `len(jobs)` best runs on distinct offers
  (`OrderBook.top`). A job never needs more: the other jobs sit on at most one offer each, so one of its
  candidates is always untouched by them, and no dearer than any run outside them;
- each job gets at most one run;
- capacity: on every offer, wherever two or more candidate runs overlap in time, the runs chosen there
  fit side by side in what is free, per resource (vCPU, memory, GPUs); a run on its own always fits;
- the objective is lexicographic: the most jobs filled, then the least total cost (each run's hourly
  cost times its expected hours, in micro-euros). One solve does both: every run counts its cost less a
  weight larger than all the round's costs together, so one more job filled always wins. The solver
  proves its result within a relative gap of `COST_GAP` of that objective: the number filled exactly,
  the total cost within about jobs² x 10⁻⁶ times the dearest run (exact on small rounds). A solve that
  reaches its time limit keeps the best assignment found and says so (`Cleared.proven`). A job left
  unfilled waits for the next round (or expires there).

The matching service clears the markets named in `MATCHING_PERIODIC_MARKETS` this way, a round per
interval (`services.matching.policy`); the benchmark compares it with continuous matching.

The solution is booked run by run, each checked against the book in integers first, so a rounding in
the solver can never book capacity twice (such a job would wait for the next round).

Clearing price rule: pay as asked. Each job pays the ask of the run it is given (the time-weighted mean
of the offer's hourly prices over that run), as in continuous matching: a vendor receives exactly its
ask and a consumer never pays above its caps. The offers are not one good (regions, shapes and hours
differ), so a single uniform price would either pay some vendors below their ask or charge some
consumers above their cap. Each market's clearing price (`Cleared.prices`) is published as the marginal
accepted ask per DTU-hour in that region: what the dearest run that the round needed there asked.

Pure: no database, no bus, no clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from libs.common.manifest import JobRequest
from services.matching.book import OrderBook
from services.matching.domain import Match, Need, to_us


def run_cost(req: JobRequest, m: Match) -> int:
    """What a run costs in micro-euros: its hourly cost at the run's prices times its expected hours,
    rounded up."""
    hourly = req.resources.dtu_rate * m.price_micro_eur_per_dtu_hour + req.resources.gpu * (
        m.price_micro_eur_per_gpu_hour or 0)
    return math.ceil(hourly * Decimal(req.expected_duration_s) / 3600)


@dataclass(frozen=True)
class Cleared:
    """A round's result: the runs given, the jobs left for a later round, and the market prices."""

    matches: dict[UUID, Match]
    unmatched: list[UUID]
    total_micro_eur: int
    prices: dict[str, int] = field(default_factory=dict)  # region -> marginal accepted ask per DTU-hour
    proven: bool = True  # the solver proved its result optimal (within COST_GAP) before its time limit


COST_GAP = 1e-6  # the solver's relative gap on the (weighted) objective


def clear(book: OrderBook, jobs: list[tuple[UUID, JobRequest]], now: datetime,
          time_limit_s: float = 10.0) -> Cleared:
    """Assign the round's jobs together (fill the most, then cost the least) and book the result."""
    if not jobs:
        return Cleared({}, [], 0)
    k = len(jobs)
    runs: list[list[Match]] = [book.top(req, now, k) for _, req in jobs]
    var: list[tuple[int, Match]] = [(j, m) for j, ms in enumerate(runs) for m in ms]
    if not var:
        return Cleared({}, [job_id for job_id, _ in jobs], 0)
    needs = [Need(req, now) for _, req in jobs]
    rows: list[dict[int, float]] = [{} for _ in range(k)]  # sparse rows of the constraint matrix, all "<= 1"
    for v, (j, _) in enumerate(var):  # one run per job at most
        rows[j][v] = 1.0
    by_offer: dict[UUID, list[int]] = {}
    for v, (_, m) in enumerate(var):
        by_offer.setdefault(m.offer.offer_id, []).append(v)
    for oid, vs in by_offer.items():
        if len(vs) > 1:
            rows += _capacity_rows(book, oid, vs, var, needs)
    a = lil_matrix((len(rows), len(var)))
    for r, row in enumerate(rows):
        for v, coef in row.items():
            a[r, v] = coef
    constraint = LinearConstraint(a.tocsr(), -np.inf, 1.0)
    ones = np.ones(len(var))
    costs = np.array([float(run_cost(jobs[j][1], m)) for j, m in var])
    later = (costs.max() + 1) * (k + 1)  # a job left out costs more than all the round's runs together
    best = milp(costs - later, integrality=ones, bounds=Bounds(0, 1), constraints=[constraint],
                options={"mip_rel_gap": COST_GAP, "time_limit": time_limit_s})
    if best.x is None:
        raise RuntimeError(f"clearing: the solver found no assignment ({best.message})")
    x = best.x
    proven = best.status == 0
    matches: dict[UUID, Match] = {}
    total = 0
    prices: dict[str, int] = {}
    for v in np.flatnonzero(x > 0.5).tolist():
        j, m = var[v]
        job_id, req = jobs[j]
        if job_id in matches or not book.fits(m, req):
            continue  # a rounding in the solver: never book capacity twice (the job waits for the next round)
        matches[job_id] = m
        total += run_cost(req, m)
        book.book(job_id, m.offer.offer_id, m.start_at, m.end_at, req)
        prices[m.offer.region] = max(prices.get(m.offer.region, 0), m.price_micro_eur_per_dtu_hour)
    unmatched = [job_id for job_id, _ in jobs if job_id not in matches]
    return Cleared(matches, unmatched, total, prices, proven)


def _capacity_rows(book: OrderBook, offer_id: UUID, vs: list[int], var: list[tuple[int, Match]],
                   needs: list[Need]) -> list[dict[int, float]]:
    """Wherever two or more of these runs on one offer overlap, the chosen ones fit in what is free there:
    per resource, the sum of their requests over the free amount is at most 1."""
    e = book.entry(offer_id)
    assert e is not None
    tl = e.tl
    spans = [(to_us(var[v][1].start_at), to_us(var[v][1].end_at)) for v in vs]
    cuts = sorted({t for span in spans for t in span})
    out: list[dict[int, float]] = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        here = [v for v, (s, t) in zip(vs, spans, strict=True) if s < b and a < t]
        if len(here) < 2:
            continue
        i = max(bisect_right(tl.ts, a) - 1, 0)
        free_vc, free_mem, free_gpu = tl.vc[i], tl.mem[i], tl.gpu[i]
        while i + 1 < len(tl.ts) - 1 and tl.ts[i + 1] < b:  # the least free anywhere in [a, b)
            i += 1
            free_vc, free_mem, free_gpu = min(free_vc, tl.vc[i]), min(free_mem, tl.mem[i]), min(free_gpu, tl.gpu[i])
        for free, amounts in ((free_vc, [needs[var[v][0]].vcpu for v in here]),
                              (free_mem, [needs[var[v][0]].mem for v in here]),
                              (free_gpu, [needs[var[v][0]].gpu for v in here])):
            if sum(amounts) > free:  # (each run fits on its own, so free > 0 wherever one is a candidate)
                out.append({v: x / free for v, x in zip(here, amounts, strict=True) if x})
    return out
