"""How matching shares its markets: fair share between tenants, periodic markets, the markets an instance owns."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import pytest

from libs.common.manifest import JobRequest
from services.matching.domain import to_us
from services.matching.policy import ALL, FairShare, Policy, round_of, usage_of
from tests.unit.services.test_matching_domain import NOW, job


def tj(tenant: str, n: int, **kw: object) -> tuple[UUID, JobRequest]:
    return UUID(int=n), job(**kw).model_copy(update={"tenant": tenant, "name": f"{tenant}-{n}"})


def served(fair: FairShare, booked: set[UUID] | None = None) -> list[UUID]:
    """The order the queue hands out jobs, charging those in `booked` (all when None)."""
    order = []
    for job_id, req in fair:
        order.append(job_id)
        if booked is None or job_id in booked:
            fair.charge(req)
    return order


def test_a_tenant_with_less_recent_usage_is_served_before_an_older_backlog() -> None:
    # a floods (jobs 1-4), b arrives later (job 5): b has used less, so it goes first
    jobs = [tj("a", 1), tj("a", 2), tj("a", 3), tj("a", 4), tj("b", 5)]
    assert served(FairShare(jobs, {"a": Decimal(3)})) == [UUID(int=5)] + [UUID(int=n) for n in (1, 2, 3, 4)]


def test_backlogs_take_turns_as_each_booking_adds_to_its_tenants_usage() -> None:
    jobs = [tj("a", 1), tj("a", 2), tj("a", 3), tj("b", 4), tj("b", 5), tj("c", 6)]
    # no usage yet: the oldest first, then whoever has used least; each job books 1 DTU-hour
    assert [j.int for j in served(FairShare(jobs, {}))] == [1, 4, 6, 2, 5, 3]


def test_a_job_that_did_not_get_capacity_adds_no_usage() -> None:
    jobs = [tj("a", 1), tj("a", 2), tj("b", 3, vcpu="4", memory_gib="16"), tj("b", 4)]
    # a's first job books (1 DTU-h), b's big job finds nothing (uncharged), so b stays ahead
    assert [j.int for j in served(FairShare(jobs, {}), {UUID(int=1), UUID(int=4)})] == [1, 3, 4, 2]


def test_usage_counts_dtu_and_gpu_hours() -> None:
    assert usage_of(job(vcpu="2", memory_gib="16", duration_s=1800)) == Decimal(2)  # 4 DTU x 0.5 h
    assert usage_of(job(gpu=1, duration_s=3600)) == Decimal(2)  # 1 DTU + 1 GPU for an hour


def test_settings_name_periodic_markets_and_owned_markets() -> None:
    p = Policy.parse(" SE-sto , Sweden ", "de-fra=60, se-sto=300")
    assert p.owned == {"se-sto", "sweden"} and p.periodic == {"de-fra": 60, "se-sto": 300}
    assert p.suffix == "-se-sto_sweden" and ALL.suffix == ""
    with pytest.raises(ValueError, match="MATCHING_PERIODIC_MARKETS"):
        Policy.parse(periodic="de-fra")
    with pytest.raises(ValueError, match="MATCHING_USAGE_HALF_LIFE_S"):
        Policy.parse(usage_half_life_s=0)


def test_a_job_naming_a_periodic_market_waits_for_its_round() -> None:
    p = Policy.parse(periodic="de-fra=60")
    assert p.interval(job(region="DE-FRA")) == 60
    assert p.interval(job(region="Germany")) is None and p.interval(job()) is None  # continuous
    start = to_us(NOW)  # on the minute: a round begins
    assert round_of(start, 60) == round_of(start + 59_999_999, 60) == round_of(start + 60 * 10**6, 60) - 1


def test_an_instance_takes_only_the_offers_and_jobs_of_its_markets() -> None:
    p = Policy.parse("se-sto,norway")
    assert p.owns_offer("se-sto", "Sweden") and p.owns_offer("no-osl", "Norway")
    assert not p.owns_offer("fi-hel", "Finland")
    assert p.owns_job(job(region="se-sto")) and p.owns_job(job(region=" Norway"))
    assert not p.owns_job(job(region="Finland")) and not p.owns_job(job(region="EU")) and not p.owns_job(job())
    assert ALL.owns_job(job()) and ALL.owns_offer("fi-hel", "Finland")  # no markets named: all of them
