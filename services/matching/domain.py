"""Pure matching rules: feasibility of a job on an offer, ranking, and the per-constraint explanation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from libs.common.events.matching import ConstraintMiss
from libs.common.manifest import JobRequest

# the order the constraints are checked in; an offer is counted against the first one it fails
CONSTRAINTS = ("region", "vendor", "resources", "price", "availability")


@dataclass(frozen=True)
class Offer:
    offer_id: UUID
    vendor: str
    node: str
    region: str
    country: str
    eu: bool
    free_vcpu: Decimal
    free_memory_gib: Decimal
    free_gpu: int
    gpu_model: str | None
    price_micro_eur_per_dtu_hour: int
    available_from: datetime
    available_until: datetime
    price_micro_eur_per_gpu_hour: int | None = None


@dataclass(frozen=True)
class Match:
    offer: Offer
    start_at: datetime
    end_at: datetime


def region_matches(wanted: str | None, offer: Offer) -> bool:
    """`region` names a region code, a country, or "EU" (any vendor in an EU member state)."""
    if not wanted:
        return True
    w = wanted.strip().lower()
    return w in (offer.region.lower(), offer.country.lower()) or (w == "eu" and offer.eu)


def window(req: JobRequest, offer: Offer, now: datetime) -> tuple[datetime, datetime] | None:
    """The earliest run of the job on the offer that ends before both the offer and the deadline."""
    start = max(now, offer.available_from)
    end = start + timedelta(seconds=req.expected_duration_s)
    if end > offer.available_until or end > req.not_after:
        return None
    return start, end


def first_miss(req: JobRequest, offer: Offer, now: datetime) -> str | None:
    r, res = req.restrictions, req.resources
    if not region_matches(r.region, offer):
        return "region"
    if r.vendors and offer.vendor not in r.vendors:
        return "vendor"
    if (offer.free_vcpu < res.vcpu or offer.free_memory_gib < res.memory_gib or offer.free_gpu < res.gpu
            or (res.gpu_model and (offer.gpu_model or "").lower() != res.gpu_model.lower())):
        return "resources"
    if offer.price_micro_eur_per_dtu_hour > req.max_micro_eur_per_dtu_hour:
        return "price"
    if res.gpu and (offer.price_micro_eur_per_gpu_hour is None
                    or offer.price_micro_eur_per_gpu_hour > (req.max_micro_eur_per_gpu_hour or 0)):
        return "price"
    if window(req, offer, now) is None:
        return "availability"
    return None


def best_match(req: JobRequest, offers: list[Offer], now: datetime,
               by_price: bool = False) -> tuple[Match | None, list[ConstraintMiss]]:
    """The cheapest feasible offer by hourly cost (ties: earlier start, vendor, node, offer id), or why
    none fits, per constraint.

    `by_price`: the offers come in ascending DTU price, so for a job without GPUs (whose hourly cost
    follows the DTU price) the scan stops at the first price above the best feasible offer.
    """
    misses: dict[str, list[Offer]] = {c: [] for c in CONSTRAINTS}
    best: Match | None = None
    early_exit = by_price and not req.resources.gpu
    for o in offers:
        if early_exit and best is not None and o.price_micro_eur_per_dtu_hour > best.offer.price_micro_eur_per_dtu_hour:
            break
        miss = first_miss(req, o, now)
        if miss is not None:
            misses[miss].append(o)
            continue
        start, end = window(req, o, now)  # type: ignore[misc]
        cand = Match(o, start, end)
        if best is None or _rank(cand, req) < _rank(best, req):
            best = cand
    if best is not None:
        return best, []
    return None, [ConstraintMiss(constraint=c, excluded=len(os), detail=_detail(c, req, os, now))
                  for c, os in misses.items() if os]


def hourly_cost(req: JobRequest, o: Offer) -> Decimal:
    """What the job would cost per hour on the offer: its DTUs at the DTU price plus its GPUs."""
    gpus = req.resources.gpu * (o.price_micro_eur_per_gpu_hour or 0)
    return req.resources.dtu_rate * o.price_micro_eur_per_dtu_hour + gpus


def _rank(m: Match, req: JobRequest) -> tuple[Decimal, datetime, str, str, str]:
    o = m.offer
    return (hourly_cost(req, o), m.start_at, o.vendor, o.node, str(o.offer_id))


def _eur(micro: int) -> str:
    return f"€{Decimal(micro) / 1_000_000:.6f}"


def _detail(constraint: str, req: JobRequest, excluded: list[Offer], now: datetime) -> str:
    """The nearest miss for one constraint, in words a consumer can act on."""
    r = req.restrictions
    if constraint == "region":
        return f"not in region {r.region!r}"
    if constraint == "vendor":
        return f"vendor not in {list(r.vendors)}"
    if constraint == "resources":
        biggest = max(excluded, key=lambda o: (o.free_vcpu, o.free_memory_gib))
        return (f"needs {req.resources.vcpu} vCPU / {req.resources.memory_gib} GiB / {req.resources.gpu} GPU; "
                f"largest free is {biggest.free_vcpu} vCPU / {biggest.free_memory_gib} GiB / {biggest.free_gpu} GPU")
    if constraint == "price":
        cheapest = min(excluded, key=lambda o: o.price_micro_eur_per_dtu_hour)
        return (f"cheapest is {_eur(cheapest.price_micro_eur_per_dtu_hour)}/DTU-h ({cheapest.vendor}); "
                f"your cap is {_eur(req.max_micro_eur_per_dtu_hour)}")
    earliest_end = min(max(now, o.available_from) + timedelta(seconds=req.expected_duration_s) for o in excluded)
    return (f"the run of {req.expected_duration_s} s cannot end before the deadline {req.not_after.isoformat()} "
            f"and the offers' windows; earliest possible end {earliest_end.isoformat()}")
