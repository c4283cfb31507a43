"""Periodic clearing: the call auction's result is optimal (most jobs filled, then least total cost)."""

from __future__ import annotations

import itertools
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.manifest import JobRequest
from services.matching.book import OrderBook
from services.matching.clearing import clear, run_cost
from services.matching.domain import Offer
from tests.unit.services.test_matching_domain import NOW, H, job, offer


def ids(n: int) -> list[UUID]:
    return [UUID(int=1000 + i) for i in range(n)]


def continuous(offers: list[Offer], jobs: list[JobRequest]) -> tuple[int, int]:
    """First come, first served: (jobs filled, total cost)."""
    book = OrderBook(offers)
    filled = total = 0
    for jid, req in zip(ids(len(jobs)), jobs, strict=True):
        m = book.best(req, NOW)
        if m is not None:
            book.book(jid, m.offer.offer_id, m.start_at, m.end_at, req)
            filled += 1
            total += run_cost(req, m)
    return filled, total


def test_clearing_fills_a_job_that_first_come_first_served_would_leave_out() -> None:
    # A (8 vCPU, 10 EUR) and B (4 vCPU, 20 EUR), one job at a time each; the second job needs 8 vCPU
    a = offer(vendor="a", vcpu="8", memory_gib="32", price_eur="10", available_until=NOW + 2 * H)
    b = offer(vendor="b", vcpu="4", memory_gib="16", price_eur="20", available_until=NOW + 2 * H)
    small, big = job(vcpu="4", not_after=NOW + 2 * H, duration_s=7200), job(vcpu="8", not_after=NOW + 2 * H,
                                                                             duration_s=7200)
    assert continuous([a, b], [small, big]) == (1, 2 * 4 * 10 * 10**6)  # the small job took A: the big one waits
    got = clear(OrderBook([a, b]), list(zip(ids(2), [small, big], strict=True)), NOW)
    assert got.unmatched == []
    assert {j: m.offer.vendor for j, m in got.matches.items()} == {ids(2)[0]: "b", ids(2)[1]: "a"}
    assert got.total_micro_eur == (2 * 4 * 20 + 2 * 8 * 10) * 10**6  # 160 + 160 EUR
    assert got.prices == {"se-sto": 20 * 10**6}  # the marginal accepted ask


def test_clearing_gives_the_cheaper_offer_to_the_job_that_saves_most_with_it() -> None:
    # one job at a time each: A at 10, B at 12 EUR per DTU-hour; a 1-DTU job and a 4-DTU job, one hour each
    a = offer(vendor="a", vcpu="4", memory_gib="16", price_eur="10", available_until=NOW + H)
    b = offer(vendor="b", vcpu="4", memory_gib="16", price_eur="12", available_until=NOW + H)
    one, four = job(vcpu="1", not_after=NOW + H), job(vcpu="4", memory_gib="16", not_after=NOW + H)
    # first come, first served: the 1-DTU job takes A (10), the 4-DTU job pays 48 on B: 58 EUR
    assert continuous([a, b], [one, four]) == (2, 58 * 10**6)
    got = clear(OrderBook([a, b]), list(zip(ids(2), [one, four], strict=True)), NOW)
    assert got.total_micro_eur == 52 * 10**6  # 12 + 40: the hand-checked optimum
    assert got.matches[ids(2)[1]].offer.vendor == "a"


def test_an_offer_with_room_for_several_jobs_takes_them_all() -> None:
    big = offer(vendor="a", vcpu="8", memory_gib="32", price_eur="10", available_until=NOW + H)
    dear = offer(vendor="b", vcpu="8", memory_gib="32", price_eur="30", available_until=NOW + H)
    jobs = [job(vcpu="4", memory_gib="16", not_after=NOW + H) for _ in range(2)]
    got = clear(OrderBook([big, dear]), list(zip(ids(2), jobs, strict=True)), NOW)
    assert {m.offer.vendor for m in got.matches.values()} == {"a"}
    assert got.total_micro_eur == 2 * 4 * 10 * 10**6


def test_a_job_nothing_fits_is_left_for_a_later_round() -> None:
    got = clear(OrderBook([offer(price_eur="60")]), [(ids(1)[0], job(cap_eur=50))], NOW)
    assert (got.matches, got.unmatched, got.total_micro_eur) == ({}, ids(1), 0)


# -- against brute force ------------------------------------------------------------------------------------

small_offers = st.lists(st.builds(
    lambda i, vcpu, price: offer(vendor=f"v{i}", node="n", offer_id=UUID(int=i + 1), vcpu=vcpu,
                                 memory_gib=str(int(vcpu) * 4), price_eur=str(price), available_until=NOW + 2 * H),
    st.integers(0, 10**6), st.sampled_from(["2", "4", "8"]), st.integers(5, 30)), min_size=1, max_size=4,
    unique_by=lambda o: o.offer_id)
small_jobs = st.lists(st.builds(
    lambda vcpu, cap, hours: job(vcpu=vcpu, memory_gib=str(int(vcpu) * 4), cap_eur=cap, duration_s=hours * 1800,
                                 not_after=NOW + 2 * H),
    st.sampled_from(["2", "4", "8"]), st.integers(5, 40), st.integers(1, 4)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(small_offers, small_jobs)
def test_clearing_is_optimal_against_every_possible_assignment(offers: list[Offer], jobs: list[JobRequest]) -> None:
    """Brute force over every assignment of the jobs to offers (or to none) that fits side by side in the
    offers' free capacity: none fills more jobs, and none fills as many for less."""
    book = OrderBook(offers)
    runs = [{m.offer.offer_id: m for m in book.top(req, NOW, len(offers))} for req in jobs]
    best: tuple[int, int] | None = None  # (-filled, cost)
    for choice in itertools.product(*[[None, *r] for r in runs]):
        load: dict[UUID, int] = {}
        for req, oid in zip(jobs, choice, strict=True):
            if oid is not None:
                load[oid] = load.get(oid, 0) + int(req.resources.vcpu)
        if any(load[o.offer_id] > int(o.free_vcpu) for o in offers if o.offer_id in load):
            continue  # every run on an offer overlaps the others (they all start now): they must fit together
        cost = sum(run_cost(req, r[oid]) for req, r, oid in zip(jobs, runs, choice, strict=True) if oid is not None)
        key = (-sum(oid is not None for oid in choice), cost)
        best = key if best is None or key < best else best
    assert best is not None
    got = clear(OrderBook(offers), list(zip(ids(len(jobs)), jobs, strict=True)), NOW)
    assert (-len(got.matches), got.total_micro_eur) == best
