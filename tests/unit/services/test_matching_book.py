"""The order book: its index finds exactly the run a scan of every offer finds, calendars and bookings included."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.manifest import JobRequest
from services.matching.book import OrderBook
from services.matching.domain import NO_RECORD, Offer, Slot, best_match, reliability
from tests.unit.services.test_matching_domain import EUR, NOW, H, job, jobs_st, offer, offers_st

# -- calendars ---------------------------------------------------------------------------------------------


def cal(*windows: tuple[int, int, str, str]) -> tuple[Slot, ...]:
    """Windows (from hour, to hour, vCPU free, EUR per DTU-hour) relative to NOW; 4 GiB per vCPU."""
    return tuple(Slot(start=NOW + a * H, end=NOW + b * H, vcpu=Decimal(v), memory_gib=Decimal(v) * 4, gpu=0,
                      price_micro_eur_per_dtu_hour=int(Decimal(p) * EUR)) for a, b, v, p in windows)


def cal_offer(calendar: tuple[Slot, ...], **kw: object) -> Offer:
    o = offer(**kw)  # type: ignore[arg-type]
    return replace(o, calendar=calendar,
                   price_micro_eur_per_dtu_hour=min(s.price_micro_eur_per_dtu_hour for s in calendar),
                   available_from=min(s.start for s in calendar), available_until=max(s.end for s in calendar))


def test_a_job_that_fits_only_a_later_window_is_booked_there() -> None:
    # 2 vCPU free now for an hour, then nothing, then 8 vCPU from 15:00; the job needs 4 vCPU for 2 h
    o = cal_offer(cal((0, 1, "2", "40"), (3, 10, "8", "40")))
    match, reasons = best_match(job(vcpu="4", memory_gib="4", duration_s=7200), [o], NOW)
    assert reasons == []
    assert match is not None and (match.start_at, match.end_at) == (NOW + 3 * H, NOW + 5 * H)
    assert OrderBook([o]).best(job(vcpu="4", memory_gib="4", duration_s=7200), NOW) == match


def test_a_job_that_does_not_fit_before_its_deadline_is_refused_with_that_reason() -> None:
    o = cal_offer(cal((0, 1, "2", "40"), (3, 10, "8", "40")))
    req = job(region="Sweden", vcpu="4", memory_gib="4", duration_s=7200, not_after=NOW + 4 * H)
    match, reasons = best_match(req, [o], NOW)
    assert match is None
    [r] = reasons
    assert (r.constraint, r.excluded) == ("availability", 1)
    assert r.detail.startswith("capacity exists in Sweden only after your deadline")
    assert r.detail.endswith("earliest possible end 2025-03-01T17:00:00+00:00")
    assert OrderBook([o]).decide(req, NOW) == (None, reasons)


def test_a_run_may_span_adjacent_windows_and_pays_their_time_weighted_price() -> None:
    # 40 EUR for the first hour, 20 for the next: a 2 h run that must end by 14:00 pays 30 per DTU-hour
    o = cal_offer(cal((0, 1, "4", "40"), (1, 5, "4", "20")))
    match = OrderBook([o]).best(job(duration_s=7200, not_after=NOW + 2 * H), NOW)
    assert match is not None and match.start_at == NOW
    assert match.price_micro_eur_per_dtu_hour == 30 * EUR


def test_a_cheapest_job_waits_for_cheaper_hours_before_its_deadline_and_a_soonest_one_does_not() -> None:
    # day at 40, night at 20 from 18:00: a 2 h run that may end by midnight runs at night
    o = cal_offer(cal((0, 6, "4", "40"), (6, 12, "4", "20"), (12, 18, "4", "40")))
    cheapest = OrderBook([o]).best(job(duration_s=7200, not_after=NOW + 12 * H), NOW)
    assert cheapest is not None
    assert (cheapest.start_at, cheapest.price_micro_eur_per_dtu_hour) == (NOW + 6 * H, 20 * EUR)
    soonest = OrderBook([o]).best(job(duration_s=7200, not_after=NOW + 12 * H, preference="soonest"), NOW)
    assert soonest is not None and (soonest.start_at, soonest.price_micro_eur_per_dtu_hour) == (NOW, 40 * EUR)
    # a deadline at 19:00 allows an hour of night: the run straddles the change of price and pays the mean
    part = OrderBook([o]).best(job(duration_s=7200, not_after=NOW + 7 * H), NOW)
    assert part is not None and (part.start_at, part.price_micro_eur_per_dtu_hour) == (NOW + 5 * H, 30 * EUR)


def test_hours_priced_above_the_cap_are_skipped() -> None:
    # peak hours at 60 EUR, above the cap of 50: the run starts when the price falls
    o = cal_offer(cal((0, 2, "4", "60"), (2, 8, "4", "30")))
    match = OrderBook([o]).best(job(cap_eur=50), NOW)
    assert match is not None and match.start_at == NOW + 2 * H and match.price_micro_eur_per_dtu_hour == 30 * EUR


def test_a_booking_takes_capacity_only_for_its_hours() -> None:
    o = offer(vcpu="4", memory_gib="16")
    book = OrderBook([o])
    first = book.best(job(vcpu="4", duration_s=7200), NOW)
    assert first is not None and first.start_at == NOW
    book.book(UUID(int=1), o.offer_id, first.start_at, first.end_at, job(vcpu="4"))
    second = book.best(job(vcpu="4"), NOW)
    assert second is not None and second.start_at == NOW + 2 * H  # right after the first, on the same node
    assert book.best(job(vcpu="4", not_after=NOW + 2 * H), NOW) is None
    assert book.release(UUID(int=1))
    again = book.best(job(vcpu="4"), NOW)
    assert again is not None and again.start_at == NOW


def test_a_republished_offer_keeps_its_bookings() -> None:
    o = offer(vcpu="4", memory_gib="16", price_eur="40")
    book = OrderBook([o])
    book.book(UUID(int=1), o.offer_id, NOW, NOW + 2 * H, job(vcpu="4"))
    book.add(replace(o, price_micro_eur_per_dtu_hour=30 * EUR))
    m = book.best(job(vcpu="4"), NOW)
    assert m is not None and m.start_at == NOW + 2 * H and m.price_micro_eur_per_dtu_hour == 30 * EUR


def test_explanations_count_whole_buckets_and_single_offers_alike() -> None:
    req = job(region="EU", vendors=("elastx", "safespring"), vcpu="4", cap_eur=50, not_after=NOW + 2 * H)
    norway = dict(region="no-osl", country="Norway", eu=False)
    offers = [offer(**norway), offer(**norway), offer(vendor="citycloud"), offer(vcpu="2"), offer(vcpu="2"),
              offer(memory_gib="2"), offer(price_eur="60"), offer(available_from=NOW + 3 * H)]
    assert OrderBook(offers).decide(req, NOW) == best_match(req, offers, NOW)


# -- the index agrees with the scan ------------------------------------------------------------------------

slots_st = st.lists(st.tuples(st.integers(-2, 20), st.integers(1, 8), st.sampled_from(["0.5", "1", "2", "4"]),
                              st.integers(1, 8), st.integers(0, 2)), min_size=1, max_size=4)


def calendar_of(raw: list[tuple[int, int, str, int, int]]) -> tuple[Slot, ...]:
    out, t = [], None
    for start, length, vcpu, price, gpu in sorted(raw):
        a = NOW + start * H if t is None or NOW + start * H >= t else t
        b = a + length * H
        out.append(Slot(start=a, end=b, vcpu=Decimal(vcpu), memory_gib=Decimal(vcpu) * 4, gpu=gpu,
                        price_micro_eur_per_dtu_hour=price * 10 * EUR, price_micro_eur_per_gpu_hour=2 * EUR))
        t = b
    return tuple(out)


calendar_offers_st = st.builds(
    lambda o, raw: replace(o, calendar=(c := calendar_of(raw)), free_gpu=max(s.gpu for s in c),
                           price_micro_eur_per_gpu_hour=2 * EUR,
                           price_micro_eur_per_dtu_hour=min(s.price_micro_eur_per_dtu_hour for s in c)),
    offers_st, slots_st)

any_offers_st = st.lists(st.one_of(offers_st, calendar_offers_st), max_size=14, unique_by=lambda o: o.offer_id)
bookings_st = st.lists(st.tuples(st.integers(0, 13), st.integers(-2, 12), st.integers(1, 6)), max_size=6)


def booked(offers: list[Offer], bookings: list[tuple[int, int, int]]) -> tuple[OrderBook, list[Offer]]:
    """A book with the bookings taken, and the same offers for the scan with the bookings in their calendars."""
    book = OrderBook(offers)
    for n, (i, start, hours) in enumerate(bookings):
        if offers:
            o = offers[i % len(offers)]
            book.book(UUID(int=10**6 + n), o.offer_id, NOW + start * H, NOW + (start + hours) * H, job(vcpu="0.5",
                                                                                                       memory_gib="1"))
    return book, offers


@settings(max_examples=300, deadline=None)
@given(jobs_st, any_offers_st, st.sampled_from(["cheapest", "soonest"]))
def test_the_book_finds_the_run_a_scan_of_every_offer_finds(req: JobRequest, offers: list[Offer],
                                                            preference: str) -> None:
    req = req.model_copy(update={"preference": preference})
    book = OrderBook(offers)
    (got, why), (want, want_why) = book.decide(req, NOW), best_match(req, offers, NOW)
    assert got == want
    assert book.best(req, NOW) == book.scan(req, NOW)
    # the same counts and nearest misses (but for availability, whose nearest miss the book looks for among
    # the cheapest few offers of each kind only)
    assert [(r.constraint, r.excluded) for r in why] == [(r.constraint, r.excluded) for r in want_why]
    assert [r.detail for r in why if r.constraint != "availability"] == \
        [r.detail for r in want_why if r.constraint != "availability"]


@settings(max_examples=300, deadline=None)
@given(jobs_st, any_offers_st, bookings_st)
def test_with_bookings_the_book_and_the_scan_still_agree(req: JobRequest, offers: list[Offer],
                                                        bookings: list[tuple[int, int, int]]) -> None:
    book, _ = booked(offers, bookings)
    assert book.best(req, NOW) == book.scan(req, NOW)
    m = book.best(req, NOW)
    if m is not None:  # the run fits: every hour of it had the capacity
        assert NOW <= m.start_at and m.end_at <= req.not_after
        assert m.end_at - m.start_at == timedelta(seconds=req.expected_duration_s)
        assert m.price_micro_eur_per_dtu_hour <= req.max_micro_eur_per_dtu_hour


# -- vendor reliability ------------------------------------------------------------------------------------

reliability_st = st.fixed_dictionaries({}, optional={v: st.integers(0, 10**6)
                                                     for v in ("elastx", "safespring", "citycloud")})


def test_reliability_is_a_laplace_smoothed_success_ratio() -> None:
    assert reliability(0, 0) == NO_RECORD == 500_000  # no record: a coin toss
    assert reliability(1, 0) > NO_RECORD > reliability(0, 1)
    assert reliability(98, 0) == 990_000 and reliability(8, 0) == 900_000
    assert reliability(3, 1) < reliability(6, 2) < 750_000  # more of the same record (3:1): nearer its ratio


def test_among_runs_equal_by_price_and_start_the_more_reliable_vendor_wins() -> None:
    offers = [offer(vendor="citycloud"), offer(vendor="elastx"), offer(vendor="safespring", price_eur="39")]
    req = job()
    # cheapest first, whatever the record: safespring is cheaper
    assert OrderBook(offers, {"safespring": 0, "elastx": 10**6}).best(req, NOW).offer.vendor == "safespring"
    even = offers[:2]
    assert OrderBook(even).best(req, NOW).offer.vendor == "citycloud"  # no records: the tie-break by name
    scores = {"citycloud": reliability(2, 3), "elastx": reliability(5, 1)}
    m = OrderBook(even, scores).best(req, NOW)
    assert m is not None and m.offer.vendor == "elastx"
    assert best_match(req, even, NOW, reliability=scores)[0] == m
    # soonest: the earlier start first, then reliability
    later = offer(vendor="elastx", available_from=NOW + H)
    soon = job(preference="soonest")
    assert OrderBook([offers[0], later], scores).best(soon, NOW).offer.vendor == "citycloud"


@settings(max_examples=300, deadline=None)
@given(jobs_st, any_offers_st, bookings_st, reliability_st, st.sampled_from(["cheapest", "soonest"]))
def test_with_vendor_reliability_the_book_and_the_scan_still_agree(
        req: JobRequest, offers: list[Offer], bookings: list[tuple[int, int, int]], scores: dict[str, int],
        preference: str) -> None:
    req = req.model_copy(update={"preference": preference})
    assert OrderBook(offers, scores).best(req, NOW) == best_match(req, offers, NOW, reliability=scores)[0]
    book = OrderBook(offers, scores)
    for n, (i, start, hours) in enumerate(bookings):
        if offers:
            o = offers[i % len(offers)]
            book.book(UUID(int=10**6 + n), o.offer_id, NOW + start * H, NOW + (start + hours) * H,
                      job(vcpu="0.5", memory_gib="1"))
    assert book.best(req, NOW) == book.scan(req, NOW)
    top = book.top(req, NOW, 3)
    assert top[:1] == ([] if book.best(req, NOW) is None else [book.best(req, NOW)])
