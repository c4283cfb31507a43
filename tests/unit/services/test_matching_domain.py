"""Matching rules: which offers can run a job, which one wins, and why none could."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from libs.common.manifest import JobRequest, Resources, Restrictions
from services.matching.domain import (
    CONSTRAINTS,
    Match,
    Offer,
    best_match,
    first_miss,
    hourly_cost,
    region_matches,
    status_on_cancel,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
EUR = 1_000_000  # micro-euros


def job(*, region: str | None = None, vendors: tuple[str, ...] = (), vcpu: str = "1", memory_gib: str = "4",
        gpu: int = 0, gpu_model: str | None = None, cap_eur: int = 50, duration_s: int = 3600,
        not_after: datetime = NOW + 24 * H, gpu_cap_eur: int | None = None, **extra: Any) -> JobRequest:
    return JobRequest(
        tenant="xyz", name="j", not_after=not_after, max_micro_eur_per_dtu_hour=cap_eur * EUR, command=("true",),
        max_micro_eur_per_gpu_hour=(gpu_cap_eur if gpu_cap_eur is not None else 10) * EUR if gpu else None,
        resources=Resources(vcpu=Decimal(vcpu), memory_gib=Decimal(memory_gib), gpu=gpu, gpu_model=gpu_model),
        expected_duration_s=duration_s, restrictions=Restrictions(region=region, vendors=vendors), **extra)


_ids = itertools.count(1)


def offer(*, vendor: str = "elastx", node: str = "n1", region: str = "se-sto", country: str = "Sweden",
          eu: bool = True, vcpu: str = "8", memory_gib: str = "32", gpu: int = 0, gpu_model: str | None = None,
          price_eur: str = "40", available_from: datetime = NOW - H, available_until: datetime = NOW + 48 * H,
          offer_id: UUID | None = None, gpu_price_eur: str = "2") -> Offer:
    return Offer(
        offer_id=offer_id or UUID(int=next(_ids)), vendor=vendor, node=node, region=region, country=country, eu=eu,
        free_vcpu=Decimal(vcpu), free_memory_gib=Decimal(memory_gib), free_gpu=gpu, gpu_model=gpu_model,
        price_micro_eur_per_dtu_hour=int(Decimal(price_eur) * EUR), available_from=available_from,
        available_until=available_until,
        price_micro_eur_per_gpu_hour=int(Decimal(gpu_price_eur) * EUR) if gpu else None)


NORWAY = dict(region="no-osl", country="Norway", eu=False)
FINLAND = dict(region="fi-hel", country="Finland", eu=True)


def misses_by_constraint(req: JobRequest, offers: list[Offer]) -> dict[str, tuple[int, str]]:
    match, reasons = best_match(req, offers, NOW)
    assert match is None
    return {r.constraint: (r.excluded, r.detail) for r in reasons}


# --- region ----------------------------------------------------------------------------------------------


def test_a_region_matches_the_offers_region_code() -> None:
    assert region_matches("se-sto", offer())
    assert not region_matches("se-sto", offer(**NORWAY))


def test_a_region_matches_the_offers_country_whatever_its_case() -> None:
    assert region_matches("Sweden", offer())
    assert region_matches(" sweden ", offer())
    assert not region_matches("Sweden", offer(**FINLAND))


def test_region_eu_matches_any_vendor_in_an_eu_member_state_and_no_other() -> None:
    assert region_matches("EU", offer())
    assert region_matches("eu", offer(**FINLAND))
    assert not region_matches("EU", offer(**NORWAY))


def test_no_region_restriction_matches_everywhere() -> None:
    assert region_matches(None, offer(**NORWAY))
    assert region_matches("", offer(**NORWAY))


def test_an_offer_outside_the_wanted_region_is_excluded_for_region() -> None:
    assert first_miss(job(region="Sweden"), offer(**NORWAY), NOW) == "region"
    assert first_miss(job(region="Sweden"), offer(), NOW) is None


# --- vendor ----------------------------------------------------------------------------------------------


def test_only_vendors_on_the_allow_list_are_eligible() -> None:
    req = job(vendors=("elastx", "safespring"))
    assert first_miss(req, offer(vendor="safespring"), NOW) is None
    assert first_miss(req, offer(vendor="citycloud"), NOW) == "vendor"


def test_an_empty_allow_list_allows_every_vendor() -> None:
    assert first_miss(job(), offer(vendor="citycloud"), NOW) is None


# --- resources -------------------------------------------------------------------------------------------


def test_an_offer_with_too_few_free_vcpus_is_excluded_for_resources() -> None:
    assert first_miss(job(vcpu="4"), offer(vcpu="3.5"), NOW) == "resources"
    assert first_miss(job(vcpu="4"), offer(vcpu="4"), NOW) is None  # exactly enough is enough


def test_an_offer_with_too_little_free_memory_is_excluded_for_resources() -> None:
    assert first_miss(job(memory_gib="16"), offer(memory_gib="15.5"), NOW) == "resources"


def test_an_offer_with_too_few_gpus_is_excluded_for_resources() -> None:
    assert first_miss(job(gpu=2), offer(gpu=1, gpu_model="a100"), NOW) == "resources"
    assert first_miss(job(gpu=2), offer(gpu=2, gpu_model="a100"), NOW) is None


def test_a_wanted_gpu_model_must_match_whatever_its_case() -> None:
    assert first_miss(job(gpu=1, gpu_model="A100"), offer(gpu=1, gpu_model="a100"), NOW) is None
    assert first_miss(job(gpu=1, gpu_model="a100"), offer(gpu=1, gpu_model="h100"), NOW) == "resources"
    assert first_miss(job(gpu=1, gpu_model="a100"), offer(gpu=1, gpu_model=None), NOW) == "resources"


# --- price -----------------------------------------------------------------------------------------------


def test_a_gpu_job_is_excluded_for_price_when_the_gpu_hour_costs_more_than_its_gpu_cap() -> None:
    assert first_miss(job(gpu=1, gpu_cap_eur=3), offer(gpu=1, gpu_price_eur="2"), NOW) is None
    assert first_miss(job(gpu=1, gpu_cap_eur=1), offer(gpu=1, gpu_price_eur="2"), NOW) == "price"


def test_a_gpu_job_ranks_offers_by_dtus_plus_gpus_per_hour() -> None:
    # 1 DTU + 1 GPU: a costs 40 + 5 = 45 EUR/h, b costs 44 + 0.5 = 44.5 EUR/h -> b, though its DTU price is higher
    a = offer(vendor="a", gpu=1, price_eur="40", gpu_price_eur="5")
    b = offer(vendor="b", gpu=1, price_eur="44", gpu_price_eur="0.5")
    match, _ = best_match(job(gpu=1, gpu_cap_eur=10), [a, b], NOW)
    assert match is not None and match.offer.vendor == "b"


def test_an_offer_priced_above_the_cap_is_excluded_for_price() -> None:
    assert first_miss(job(cap_eur=50), offer(price_eur="50.000001"), NOW) == "price"


def test_an_offer_priced_exactly_at_the_cap_is_eligible() -> None:
    assert first_miss(job(cap_eur=50), offer(price_eur="50"), NOW) is None


# --- availability ----------------------------------------------------------------------------------------


def test_a_job_whose_run_cannot_end_before_its_deadline_is_excluded_for_availability() -> None:
    # 1 h from 12:00 ends 13:00, after a 12:30 deadline
    assert first_miss(job(not_after=NOW + H / 2), offer(), NOW) == "availability"


def test_a_run_ending_exactly_at_the_deadline_fits() -> None:
    match, _ = best_match(job(not_after=NOW + H), [offer()], NOW)
    assert match is not None and match.end_at == NOW + H


def test_a_run_that_would_outlast_the_offers_window_is_excluded_for_availability() -> None:
    assert first_miss(job(), offer(available_until=NOW + H / 2), NOW) == "availability"


def test_an_offer_open_now_is_booked_from_now_for_the_expected_duration() -> None:
    match, reasons = best_match(job(duration_s=5400), [offer()], NOW)
    assert reasons == []
    assert match is not None
    assert (match.start_at, match.end_at) == (NOW, NOW + timedelta(seconds=5400))


def test_an_offer_whose_window_starts_later_is_booked_from_its_start() -> None:
    later = offer(available_from=NOW + 3 * H, available_until=NOW + 10 * H)
    match, _ = best_match(job(), [later], NOW)
    assert match == Match(offer=later, start_at=NOW + 3 * H, end_at=NOW + 4 * H)


def test_a_later_window_that_pushes_the_end_past_the_deadline_is_excluded_for_availability() -> None:
    # starts 15:00, ends 16:00; the deadline is 15:30
    later = offer(available_from=NOW + 3 * H, available_until=NOW + 10 * H)
    assert first_miss(job(not_after=NOW + 3.5 * H), later, NOW) == "availability"


# --- ranking ---------------------------------------------------------------------------------------------


def test_the_cheapest_feasible_offer_wins() -> None:
    cheap = offer(vendor="safespring", price_eur="30")
    offers = [offer(price_eur="45"), cheap, offer(price_eur="30.000001")]
    match, _ = best_match(job(), offers, NOW)
    assert match is not None and match.offer == cheap


def test_a_cheaper_offer_that_fails_a_constraint_does_not_win() -> None:
    ok = offer(price_eur="49")
    offers = [offer(price_eur="1", **NORWAY), offer(price_eur="2", vcpu="0.5"), ok]
    match, _ = best_match(job(region="Sweden"), offers, NOW)
    assert match is not None and match.offer == ok


def test_at_equal_price_the_earlier_start_wins() -> None:
    later = offer(vendor="aaa", available_from=NOW + 2 * H)
    sooner = offer(vendor="zzz")
    match, _ = best_match(job(), [later, sooner], NOW)
    assert match is not None and match.offer == sooner


def test_a_cheaper_offer_wins_even_if_it_starts_later() -> None:
    later_cheaper = offer(price_eur="30", available_from=NOW + 2 * H)
    match, _ = best_match(job(), [offer(price_eur="31"), later_cheaper], NOW)
    assert match is not None and match.start_at == NOW + 2 * H


def test_ties_are_broken_by_vendor_then_node_then_offer_id_whatever_the_order_of_offers() -> None:
    a = offer(vendor="elastx", node="n2", offer_id=UUID(int=9))
    b = offer(vendor="elastx", node="n1", offer_id=UUID(int=8))
    c = offer(vendor="elastx", node="n1", offer_id=UUID(int=7))
    d = offer(vendor="safespring", node="a0", offer_id=UUID(int=1))
    for perm in itertools.permutations([a, b, c, d]):
        match, _ = best_match(job(), list(perm), NOW)
        assert match is not None and match.offer == c


# --- explanation -----------------------------------------------------------------------------------------


def test_no_offers_at_all_gives_no_match_and_no_reasons() -> None:
    assert best_match(job(), [], NOW) == (None, [])


def test_a_match_carries_no_reasons() -> None:
    _, reasons = best_match(job(), [offer(**NORWAY), offer()], NOW)
    assert reasons == []


def test_the_explanation_counts_per_constraint_how_many_offers_it_excluded() -> None:
    req = job(region="EU", vendors=("elastx", "safespring"), vcpu="4", cap_eur=50, not_after=NOW + 2 * H)
    offers = [
        offer(**NORWAY), offer(**NORWAY),  # region x2
        offer(vendor="citycloud"),  # vendor
        offer(vcpu="2"), offer(vcpu="2"), offer(memory_gib="2"),  # resources x3
        offer(price_eur="60"),  # price
        offer(available_from=NOW + 3 * H),  # availability: would end 16:00, deadline 14:00
    ]
    got = misses_by_constraint(req, offers)
    assert {c: n for c, (n, _) in got.items()} == {"region": 2, "vendor": 1, "resources": 3, "price": 1,
                                                   "availability": 1}
    _, reasons = best_match(req, offers, NOW)
    assert [r.constraint for r in reasons] == list(CONSTRAINTS)  # in the order they are checked
    assert sum(r.excluded for r in reasons) == len(offers)


def test_an_offer_failing_several_constraints_is_counted_once_against_the_first() -> None:
    # wrong region AND too expensive AND too small: counted under region only
    got = misses_by_constraint(job(region="Sweden"), [offer(price_eur="99", vcpu="0.1", **NORWAY)])
    assert {c: n for c, (n, _) in got.items()} == {"region": 1}


def test_constraints_that_excluded_nothing_are_not_listed() -> None:
    assert set(misses_by_constraint(job(cap_eur=10), [offer(price_eur="20")])) == {"price"}


def test_the_price_explanation_names_the_cheapest_offer_against_the_cap() -> None:
    offers = [offer(vendor="elastx", price_eur="60"), offer(vendor="safespring", price_eur="55.5")]
    n, detail = misses_by_constraint(job(cap_eur=50), offers)["price"]
    assert n == 2
    assert detail == "cheapest is €55.500000/DTU-h (safespring); your cap is €50.000000"


def test_the_region_explanation_names_the_wanted_region() -> None:
    assert misses_by_constraint(job(region="Sweden"), [offer(**NORWAY)])["region"] == (1, "not in region 'Sweden'")


def test_the_vendor_explanation_names_the_allow_list() -> None:
    got = misses_by_constraint(job(vendors=("elastx",)), [offer(vendor="citycloud")])
    assert got["vendor"] == (1, "vendor not in ['elastx']")


def test_the_resources_explanation_compares_the_need_with_the_largest_free_offer() -> None:
    offers = [offer(vcpu="2", memory_gib="8"), offer(vcpu="3", memory_gib="6")]
    _, detail = misses_by_constraint(job(vcpu="4", memory_gib="16"), offers)["resources"]
    assert detail == "needs 4 vCPU / 16 GiB / 0 GPU; largest free is 3 vCPU / 6 GiB / 0 GPU"


def test_the_availability_explanation_gives_the_earliest_possible_end() -> None:
    # the earliest start is 14:00, so the earliest end 15:00; the deadline is 13:30
    offers = [offer(available_from=NOW + 2 * H), offer(available_from=NOW + 5 * H)]
    n, detail = misses_by_constraint(job(not_after=NOW + 1.5 * H), offers)["availability"]
    assert n == 2
    assert "run of 3600 s" in detail
    assert "deadline 2025-03-01T13:30:00+00:00" in detail
    assert detail.endswith("earliest possible end 2025-03-01T15:00:00+00:00")


# --- properties ------------------------------------------------------------------------------------------


def feasible(req: JobRequest, o: Offer, now: datetime) -> bool:
    """The rules written out once more, independently of the module, from the manifest's documentation."""
    r, res = req.restrictions, req.resources
    if r.region and r.region.strip().lower() not in {o.region.lower(), o.country.lower()} \
            and not (r.region.strip().lower() == "eu" and o.eu):
        return False
    if r.vendors and o.vendor not in r.vendors:
        return False
    if o.free_vcpu < res.vcpu or o.free_memory_gib < res.memory_gib or o.free_gpu < res.gpu:
        return False
    if res.gpu_model and (o.gpu_model or "").lower() != res.gpu_model.lower():
        return False
    if o.price_micro_eur_per_dtu_hour > req.max_micro_eur_per_dtu_hour:
        return False
    if res.gpu and (o.price_micro_eur_per_gpu_hour is None
                    or o.price_micro_eur_per_gpu_hour > (req.max_micro_eur_per_gpu_hour or 0)):
        return False
    start = max(now, o.available_from)
    end = start + timedelta(seconds=req.expected_duration_s)
    return end <= o.available_until and end <= req.not_after


PLACES = [("se-sto", "Sweden", True), ("fi-hel", "Finland", True), ("no-osl", "Norway", False)]
quarter_hours = st.integers(min_value=-4, max_value=16).map(lambda k: NOW + k * H / 4)

offers_st = st.builds(
    lambda place, vendor, node, vcpu, mem, gpu, model, price, start, length, n: Offer(
        offer_id=UUID(int=n), vendor=vendor, node=node, region=place[0], country=place[1], eu=place[2],
        free_vcpu=Decimal(vcpu), free_memory_gib=Decimal(mem), free_gpu=gpu, gpu_model=model,
        price_micro_eur_per_dtu_hour=price, available_from=start, available_until=start + length * H / 2),
    place=st.sampled_from(PLACES),
    vendor=st.sampled_from(["elastx", "safespring", "citycloud"]),
    node=st.sampled_from(["n1", "n2"]),
    vcpu=st.sampled_from(["0.5", "1", "2", "4"]),
    mem=st.sampled_from(["1", "4", "8"]),
    gpu=st.integers(0, 2),
    model=st.sampled_from([None, "a100", "h100"]),
    price=st.integers(1, 8).map(lambda p: p * 10 * EUR),  # few distinct prices, so ties happen
    start=quarter_hours,
    length=st.integers(1, 12),
    n=st.integers(0, 2**32),
).filter(lambda o: o.available_until > o.available_from)

jobs_st = st.builds(
    lambda region, vendors, vcpu, mem, gpu, model, cap, dur, deadline: job(
        region=region, vendors=vendors, vcpu=vcpu, memory_gib=mem, gpu=gpu, gpu_model=model, cap_eur=cap,
        duration_s=dur, not_after=NOW + deadline * H / 4),
    region=st.sampled_from([None, "Sweden", "se-sto", "EU", "Norway"]),
    vendors=st.sampled_from([(), ("elastx",), ("elastx", "safespring")]),
    vcpu=st.sampled_from(["0.5", "1", "2"]),
    mem=st.sampled_from(["1", "4", "8"]),
    gpu=st.integers(0, 1),
    model=st.sampled_from([None, "A100"]),
    cap=st.integers(10, 80),
    dur=st.sampled_from([900, 1800, 3600, 7200]),
    deadline=st.integers(1, 40),
)


@given(jobs_st, st.lists(offers_st, max_size=12, unique_by=lambda o: o.offer_id))
def test_best_match_returns_the_cheapest_feasible_offer_or_explains_every_offer(req: JobRequest,
                                                                              offers: list[Offer]) -> None:
    match, reasons = best_match(req, offers, NOW)
    ok = [o for o in offers if feasible(req, o, NOW)]
    if not ok:
        assert match is None
        assert sum(r.excluded for r in reasons) == len(offers)
        assert all(r.excluded > 0 and r.constraint in CONSTRAINTS for r in reasons)
        return
    assert match is not None and reasons == []
    assert feasible(req, match.offer, NOW)  # never an offer that fails a constraint
    assert hourly_cost(req, match.offer) == min(hourly_cost(req, o) for o in ok)
    assert match.start_at == max(NOW, match.offer.available_from)
    assert match.end_at == match.start_at + timedelta(seconds=req.expected_duration_s)
    assert match.end_at <= req.not_after and match.end_at <= match.offer.available_until


@given(jobs_st, st.lists(offers_st, max_size=8, unique_by=lambda o: o.offer_id), st.randoms())
def test_the_winner_does_not_depend_on_the_order_of_the_offers(req: JobRequest, offers: list[Offer],
                                                               rnd: object) -> None:
    shuffled = list(offers)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert best_match(req, offers, NOW)[0] == best_match(req, shuffled, NOW)[0]


@given(jobs_st, offers_st)
def test_first_miss_agrees_with_the_written_out_rules(req: JobRequest, o: Offer) -> None:
    assert (first_miss(req, o, NOW) is None) == feasible(req, o, NOW)


def test_a_copy_of_an_offer_with_another_id_is_a_distinct_candidate() -> None:
    a = offer(offer_id=UUID(int=2))
    b = replace(a, offer_id=UUID(int=1))
    match, _ = best_match(job(), [a, b], NOW)
    assert match is not None and match.offer.offer_id == UUID(int=1)


@given(jobs_st, st.lists(offers_st, max_size=12, unique_by=lambda o: o.offer_id))
def test_scanning_offers_in_price_order_picks_the_same_winner_as_a_full_scan(req: JobRequest,
                                                                            offers: list[Offer]) -> None:
    by_price = sorted(offers, key=lambda o: (o.price_micro_eur_per_dtu_hour, o.offer_id))
    assert best_match(req, by_price, NOW, by_price=True)[0] == best_match(req, offers, NOW)[0]


# --- cancelling ------------------------------------------------------------------------------------------


def test_only_a_waiting_job_leaves_the_book_when_it_is_cancelled() -> None:
    assert status_on_cancel("waiting") == "cancelled"
    # a matched job keeps its reservation until placement says its workload was cancelled or ended
    for status in ("matched", "expired", "refused", "cancelled"):
        assert status_on_cancel(status) is None
