"""The order book's bounds: never above what a run of the job on any offer they cover costs, so pruning by them
never changes a decision."""

from __future__ import annotations

from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.manifest import JobRequest
from services.matching.book import OrderBook, _run_bound, _window_bound
from services.matching.domain import _NEVER, Need, Offer
from tests.unit.services.test_matching_book import cal, cal_offer, calendar_offers_st
from tests.unit.services.test_matching_domain import NOW, H, job, jobs_st

long_jobs_st = st.builds(lambda req, hours: req.model_copy(update={"expected_duration_s": hours * 1800}),
                         jobs_st, st.integers(1, 16))


@settings(max_examples=300, deadline=None)
@given(st.one_of(jobs_st, long_jobs_st), st.lists(calendar_offers_st, min_size=1, max_size=8,
                                                  unique_by=lambda o: o.offer_id),
       st.lists(st.tuples(st.integers(0, 7), st.integers(-2, 12), st.integers(1, 6)), max_size=6),
       st.sampled_from(["cheapest", "soonest"]))
def test_a_bucket_bound_is_never_above_the_cost_of_a_run_on_its_entries(
        req: JobRequest, offers: list[Offer], bookings: list[tuple[int, int, int]], preference: str) -> None:
    req = req.model_copy(update={"preference": preference})
    book = OrderBook(offers)
    for i, (k, start, hours) in enumerate(bookings):
        book.book(UUID(int=10**6 + i), offers[k % len(offers)].offer_id, NOW + start * H,
                  NOW + (start + hours) * H, job(vcpu="0.5", memory_gib="1"))
    n = Need(req, NOW)
    for b in book._buckets.values():
        if b.cal_ts is None or not b.entries:
            continue
        lo, hi = b.window(n)
        costs = [n.cost(run[2], run[3]) if (run := e.run(n)) is not None else _NEVER for e in b.entries]
        for k in range(len(b.entries)):
            simple, tight = b.bound(n, k, lo, hi)
            bound = b.run_bound(n, k, lo, hi)
            assert simple <= bound <= min(costs[k:])
            if tight:
                assert simple == bound


def test_a_long_run_is_bounded_by_the_mean_of_the_hours_it_must_cover() -> None:
    # 4 h at 20 EUR then 4 h at 40: an 8 h run pays their mean, whatever the cheapest single hour costs
    o = cal_offer(cal((0, 4, "4", "20"), (4, 8, "4", "40")))
    n = Need(job(duration_s=8 * 3600, cap_eur=50, not_after=NOW + 8 * H), NOW)
    entry = OrderBook([o]).entry(o.offer_id)
    assert entry is not None and entry.cal is not None
    ts, p, g = entry.cal
    assert _window_bound(n, ts, p, g, 0, len(ts) - 1) == (20 * 10**6, False)
    assert _run_bound(n, ts, p, g, 0, len(ts) - 1) == 30 * 10**6
    # hours above the cap break a calendar: no run fits on either side
    n = Need(job(duration_s=8 * 3600, cap_eur=30, not_after=NOW + 8 * H), NOW)
    assert _run_bound(n, ts, p, g, 0, len(ts) - 1) == _NEVER
