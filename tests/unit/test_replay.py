"""The order a replay applies a service's input in: deterministic, and each subscription's own order kept."""

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from libs.common.replay import Item, chunks, merge

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


async def source(*items: Item) -> AsyncIterator[Item]:
    for item in items:
        yield item


async def merged(*sources: list[Item]) -> list[tuple[str, int]]:
    return [(i.stream, i.seq) async for i in merge([source(*s) for s in sources])]


async def test_subscriptions_merge_by_stream_time() -> None:
    offers = [Item(at(0), "AGENT", 1, 0), Item(at(20), "AGENT", 2, 0)]
    jobs = [Item(at(10), "INTAKE", 1, 1), Item(at(30), "INTAKE", 2, 1)]
    assert await merged(offers, jobs) == [("AGENT", 1), ("INTAKE", 1), ("AGENT", 2), ("INTAKE", 2)]


async def test_equal_times_order_by_stream_name_then_sequence() -> None:
    placement = [Item(at(5), "PLACEMENT", 7, 0), Item(at(5), "PLACEMENT", 8, 0)]
    agent = [Item(at(5), "AGENT", 40, 1)]
    assert await merged(placement, agent) == [("AGENT", 40), ("PLACEMENT", 7), ("PLACEMENT", 8)]


async def test_two_subscriptions_of_one_stream_interleave_by_sequence() -> None:
    finished = [Item(at(5), "PLACEMENT", 3, 0), Item(at(9), "PLACEMENT", 6, 0)]
    failed = [Item(at(5), "PLACEMENT", 4, 1), Item(at(8), "PLACEMENT", 5, 1)]
    assert await merged(finished, failed) == [("PLACEMENT", 3), ("PLACEMENT", 4), ("PLACEMENT", 5), ("PLACEMENT", 6)]


async def test_a_source_keeps_its_order_even_when_its_clock_steps_back() -> None:
    # stream order is what a live consumer sees: a merge never reorders one subscription
    stepped = [Item(at(50), "SDK", 1, 0), Item(at(10), "SDK", 2, 0), Item(at(60), "SDK", 3, 0)]
    other = [Item(at(20), "INTAKE", 1, 1), Item(at(55), "INTAKE", 2, 1)]
    result = await merged(stepped, other)
    assert [s for s in result if s[0] == "SDK"] == [("SDK", 1), ("SDK", 2), ("SDK", 3)]
    assert result == [("INTAKE", 1), ("SDK", 1), ("SDK", 2), ("INTAKE", 2), ("SDK", 3)]


async def test_the_merge_does_not_depend_on_the_order_sources_are_given_in() -> None:
    a = [Item(at(i * 3), "AGENT", i + 1, 0) for i in range(20)]
    b = [Item(at(i * 5), "MATCHING", i + 1, 1) for i in range(12)]
    c = [Item(at(i * 7), "SDK", i + 1, 2) for i in range(9)]
    assert await merged(a, b, c) == await merged(c, a, b)


async def test_empty_sources_are_fine() -> None:
    assert await merged([], [Item(at(1), "SDK", 1, 1)], []) == [("SDK", 1)]
    assert await merged() == []


async def test_chunks_hold_runs_of_one_subscription_in_merge_order() -> None:
    items = [Item(at(0), "A", 1, 0), Item(at(1), "A", 2, 0), Item(at(2), "B", 1, 1), Item(at(3), "A", 3, 0),
             Item(at(4), "A", 4, 0)]
    got = [[[(i.stream, i.seq) for i in run] for run in chunk] async for chunk in chunks(source(*items), 4)]
    assert got == [[[("A", 1), ("A", 2)], [("B", 1)], [("A", 3)]], [[("A", 4)]]]
