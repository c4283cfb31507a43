"""The envelope on the wire: every registered event round-trips; bad messages are refused with a reason."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from libs.common.envelope import Envelope, InvalidEvent, Payload, derive, new_envelope, parse_envelope
from libs.common.events import all_events, payload_class, type_of
from libs.common.events.agent import (
    AvailabilityWindow,
    OfferPublished,
    OfferWithdrawn,
    UsageSampled,
    WorkloadReported,
)
from libs.common.events.intake import JobAccepted, JobCancelled, JobCancelRefused, JobRejected
from libs.common.events.matching import ConstraintMiss, JobExpired, JobMatched, JobUnmatchable, OfferLost
from libs.common.events.metering import MeterClosed, MeterProgressed
from libs.common.events.placement import (
    PlacementFailed,
    WorkloadAssigned,
    WorkloadCancelled,
    WorkloadCancelRequested,
    WorkloadFailed,
    WorkloadFinished,
    WorkloadStarted,
)
from libs.common.events.sdk import (
    DepositRequested,
    DisputeResolutionRequested,
    JobCancelRequested,
    JobSubmitted,
    PayoutRequested,
)
from libs.common.events.settlement import (
    ChargePosted,
    DisputeOpened,
    DisputeResolved,
    FundsDeposited,
    FundsHeld,
    HoldReleased,
    InsufficientFunds,
    PayoutPosted,
    PayoutRefused,
    UsageCharged,
)
from libs.common.ids import derived_id
from libs.common.manifest import FieldError, JobRequest, Resources, Restrictions

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
T1 = datetime(2025, 3, 1, 13, 0, tzinfo=timezone.utc)
JOB = UUID("00000000-0000-4000-8000-000000000001")
WORKLOAD = UUID("00000000-0000-4000-8000-000000000002")
OFFER = UUID("00000000-0000-4000-8000-000000000003")

REQUEST = JobRequest(
    tenant="xyz", name="my-first-sparkjob", image="apache/spark", not_after=datetime(2025, 3, 25, tzinfo=timezone.utc),
    max_micro_eur_per_dtu_hour=50_000_000, command=("python3", "/myjobs/spark/script.py"),
    env={"INPUT": "/myjobs/data"},
    resources=Resources(vcpu=Decimal("0.5"), memory_gib=Decimal("0.931322574615478515625"), gpu=1, gpu_model="a100"),
    expected_duration_s=5400, restrictions=Restrictions(region="Sweden", vendors=("elastx", "safespring"),
                                                        deny_vendors=("citycloud",), attributes=("gdpr",)),
    earliest_start=T0, max_micro_eur_total=20_000_000, preference="soonest",
)
WORKLOAD_FACT = dict(workload_id=WORKLOAD, job_id=JOB, tenant="xyz", name="my-first-sparkjob", vendor="elastx",
                     node="n1", at=T0)

# one sample payload per registered event class, with every optional field set so that it is checked too
SAMPLES: dict[type[Payload], Payload] = {
    JobSubmitted: JobSubmitted(manifest={"apiVersion": "x", "spec": {"maxEuroPerDTU": 50, "env": {"A": "b"}}}),
    OfferPublished: OfferPublished(
        offer_id=OFFER, vendor="elastx", node="n1", region="se-sto", country="Sweden", eu=True, vcpu=Decimal("7.5"),
        memory_gib=Decimal("30.25"), gpu_count=2, gpu_model="a100", arch="arm64", price_micro_eur_per_dtu_hour=41_000,
        price_micro_eur_per_gpu_hour=1_200_000, available_from=T0, available_until=T1, illustrative=True,
        calendar=[AvailabilityWindow(start=T0, end=T1, vcpu=Decimal("4"), memory_gib=Decimal("16"), gpu_count=1,
                                     price_micro_eur_per_dtu_hour=30_000, price_micro_eur_per_gpu_hour=900_000)],
        attributes=["gdpr", "iso27001"]),
    WorkloadReported: WorkloadReported(workload_id=WORKLOAD, job_id=JOB, vendor="elastx", status="failed", at=T1,
                                       exit_code=137, message="OOM killed", last_usage_seq=12),
    UsageSampled: UsageSampled(workload_id=WORKLOAD, job_id=JOB, vendor="elastx", tenant="xyz", seq=3, at=T0,
                               cpu_us=1_800_000_000, wall_us=3_600_000_000, rss_peak_bytes=2**30),
    JobAccepted: JobAccepted(job_id=JOB, request=REQUEST),
    JobRejected: JobRejected(tenant="xyz", name="bad", errors=[
        FieldError(field="kind", reason="must be job (or Job)"),
        FieldError(field="spec.colour", reason="is not a known field")]),
    JobMatched: JobMatched(job_id=JOB, request=REQUEST, offer_id=OFFER, vendor="elastx", node="n1", region="se-sto",
                           price_micro_eur_per_dtu_hour=41_000, dtu_rate=Decimal("0.5"), start_at=T0, end_at=T1,
                           attempt=2),
    OfferLost: OfferLost(offer_id=OFFER, vendor="elastx", node="n1", last_published_at=T0, lost_at=T1,
                         cause="withdrawn", reason="maintenance"),
    OfferWithdrawn: OfferWithdrawn(offer_id=OFFER, vendor="elastx", node="n1", reason="maintenance"),
    PlacementFailed: PlacementFailed(**WORKLOAD_FACT, attempt=2, offer_id=OFFER, deadline=T1,
                                     reason="its node elastx/n1 was lost"),
    JobUnmatchable: JobUnmatchable(job_id=JOB, tenant="xyz", name="my-first-sparkjob", offers_considered=3, reasons=[
        ConstraintMiss(constraint="price", excluded=2, detail="cheapest is €55.000000/DTU-h (elastx)"),
        ConstraintMiss(constraint="region", excluded=1, detail="not in region 'Sweden'")]),
    JobExpired: JobExpired(job_id=JOB, tenant="xyz", name="my-first-sparkjob", reason="deadline passed"),
    WorkloadAssigned: WorkloadAssigned(workload_id=WORKLOAD, job_id=JOB, vendor="elastx", node="n1", request=REQUEST,
                                       start_at=T0, deadline=T1),
    WorkloadStarted: WorkloadStarted(**WORKLOAD_FACT, vcpu=Decimal("0.5"), memory_gib=Decimal("0.75")),
    WorkloadFinished: WorkloadFinished(**WORKLOAD_FACT, exit_code=0, last_usage_seq=7),
    WorkloadFailed: WorkloadFailed(**WORKLOAD_FACT, reason="node lost", exit_code=None, last_usage_seq=None),
    MeterClosed: MeterClosed(workload_id=WORKLOAD, job_id=JOB, tenant="xyz", vendor="elastx", outcome="succeeded",
                             dtu_micro_hours=1_500_000, cpu_us=5_400_000_000, rss_peak_bytes=2 * 2**30,
                             wall_us=7_200_000_000, samples=2, closed_at=T1),
    MeterProgressed: MeterProgressed(workload_id=WORKLOAD, job_id=JOB, tenant="xyz", vendor="elastx",
                                     dtu_micro_hours=16_667, claimed_dtu_micro_hours=20_000,
                                     witness_dtu_micro_hours=15_000, disputed_dtu_micro_hours=1_667,
                                     wall_us=60_000_000, seq=2, at=T1),
    FundsHeld: FundsHeld(job_id=JOB, tenant="xyz", amount_micro_eur=75_000_000),
    ChargePosted: ChargePosted(job_id=JOB, tenant="xyz", name="my-first-sparkjob", vendor="elastx",
                               dtu_micro_hours=1_500_000, price_micro_eur_per_dtu_hour=38_000, vendor_micro_eur=57_000,
                               fee_micro_eur=1_425, total_micro_eur=58_425),
    HoldReleased: HoldReleased(job_id=JOB, tenant="xyz", amount_micro_eur=74_941_575, reason="posted"),
    UsageCharged: UsageCharged(job_id=JOB, tenant="xyz", name="my-first-sparkjob", vendor="elastx",
                               dtu_micro_hours=1_000_000, price_micro_eur_per_dtu_hour=38_000, vendor_micro_eur=30_000,
                               disputed_micro_eur=8_000, fee_micro_eur=950, rounding_micro_eur=0,
                               total_micro_eur=38_950),
    DisputeOpened: DisputeOpened(job_id=JOB, tenant="xyz", name="my-first-sparkjob", vendor="elastx",
                                 disputed_dtu_micro_hours=400_000, claimed_dtu_micro_hours=1_000_000,
                                 witness_dtu_micro_hours=600_000, held_micro_eur=15_200),
    DisputeResolutionRequested: DisputeResolutionRequested(job_id=JOB, pay="tenant", note="the witness is right"),
    DisputeResolved: DisputeResolved(job_id=JOB, tenant="xyz", vendor="elastx", paid_to="tenant",
                                     amount_micro_eur=15_200),
    PayoutRequested: PayoutRequested(vendor="elastx", amount_micro_eur=30_000, reference="po-1"),
    PayoutPosted: PayoutPosted(vendor="elastx", amount_micro_eur=30_000, reference="po-1"),
    PayoutRefused: PayoutRefused(vendor="elastx", amount_micro_eur=30_000, available_micro_eur=8_000,
                                 reference="po-2"),
    DepositRequested: DepositRequested(tenant="xyz", amount_micro_eur=100_000_000, reference="pay-1"),
    FundsDeposited: FundsDeposited(tenant="xyz", amount_micro_eur=100_000_000, reference="pay-1"),
    InsufficientFunds: InsufficientFunds(job_id=JOB, tenant="xyz", name="my-first-sparkjob",
                                         needed_micro_eur=50_000_000, available_micro_eur=10_000_000),
    JobCancelRequested: JobCancelRequested(tenant="xyz", name="my-first-sparkjob", reason="wrong input"),
    JobCancelled: JobCancelled(job_id=JOB, tenant="xyz", name="my-first-sparkjob", previous_status="running",
                               reason="wrong input"),
    JobCancelRefused: JobCancelRefused(tenant="xyz", name="my-first-sparkjob", reason="no job xyz/my-first-sparkjob"),
    WorkloadCancelled: WorkloadCancelled(job_id=JOB, tenant="xyz", name="my-first-sparkjob", vendor="elastx",
                                         reason="wrong input", at=T0),
    WorkloadCancelRequested: WorkloadCancelRequested(workload_id=WORKLOAD, job_id=JOB, vendor="elastx", node="n1",
                                                     reason="wrong input", at=T0),
}

REGISTERED = sorted(all_events().items())


def envelope_of(payload: Payload, **kw: Any) -> Envelope[Any]:
    args: dict[str, Any] = dict(source="test", party="t-xyz", correlation_id=JOB, time=T0,
                                id=UUID("00000000-0000-4000-8000-0000000000aa"))
    return new_envelope(payload, **{**args, **kw})


def wire(env: Envelope[Any]) -> dict[str, Any]:
    return json.loads(env.to_bytes())


def test_every_registered_event_type_has_a_sample_here() -> None:
    # a new event type must be added to SAMPLES so that its round trip is checked
    assert {cls for _, cls in REGISTERED} <= set(SAMPLES), "add a sample payload for the new event class"


@pytest.mark.parametrize(("key", "cls"), REGISTERED, ids=[f"{t}.v{v}" for (t, v), _ in REGISTERED])
def test_an_envelope_of_every_registered_event_round_trips_through_bytes(key: tuple[str, int], cls: type) -> None:
    if cls not in SAMPLES:
        pytest.fail(f"no sample payload for {cls.__name__}")
    env = envelope_of(SAMPLES[cls], causation_id=UUID("00000000-0000-4000-8000-0000000000bb"))
    assert (env.type, env.version) == key
    back = parse_envelope(env.to_bytes())
    assert type(back.payload) is cls
    assert back == env
    assert back.payload == SAMPLES[cls]
    assert back.to_bytes() == env.to_bytes()


def test_parse_envelope_accepts_bytes_text_and_a_decoded_mapping_alike() -> None:
    env = envelope_of(SAMPLES[FundsHeld])
    assert parse_envelope(env.to_bytes()) == parse_envelope(env.to_bytes().decode()) == parse_envelope(wire(env)) == env


def test_money_and_quantities_travel_as_exact_decimals_not_floats() -> None:
    env = envelope_of(SAMPLES[JobMatched])
    back = parse_envelope(env.to_bytes())
    assert back.payload.request.resources.memory_gib == Decimal("0.931322574615478515625")
    assert back.payload.dtu_rate == Decimal("0.5")


@given(
    party=st.text(min_size=1, max_size=20),
    name=st.text(max_size=40),
    reason=st.text(max_size=200),
    id_=st.uuids(),
    correlation=st.uuids(),
    cause=st.none() | st.uuids(),
    time=st.datetimes(timezones=st.just(timezone.utc)),
)
def test_any_text_ids_and_times_round_trip_unchanged(party: str, name: str, reason: str, id_: UUID,
                                                     correlation: UUID, cause: UUID | None, time: datetime) -> None:
    env = new_envelope(JobExpired(job_id=correlation, tenant=party, name=name, reason=reason), source="matching",
                       party=party, correlation_id=correlation, time=time, id=id_, causation_id=cause)
    assert parse_envelope(env.to_bytes()) == env


@given(st.builds(FundsHeld, job_id=st.uuids(), tenant=st.text(), amount_micro_eur=st.integers()))
def test_any_funds_held_payload_round_trips_exactly(payload: FundsHeld) -> None:
    # integers of any size: micro-euros never pass through a float
    assert parse_envelope(envelope_of(payload).to_bytes()).payload == payload


def test_new_envelope_takes_type_and_version_from_the_payload_registration() -> None:
    env = envelope_of(SAMPLES[ChargePosted])
    assert (env.type, env.version) == ("ChargePosted", 1) == type_of(ChargePosted)
    assert payload_class("ChargePosted", 1) is ChargePosted


def test_an_unknown_event_type_is_refused_naming_it() -> None:
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    raw["type"] = "FundsTeleported"
    with pytest.raises(InvalidEvent, match="FundsTeleported"):
        parse_envelope(raw)


def test_a_known_type_at_an_unregistered_version_is_refused_naming_the_version() -> None:
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    raw["version"] = 2
    with pytest.raises(InvalidEvent, match=r"'FundsHeld' version 2"):
        parse_envelope(raw)


@pytest.mark.parametrize("version", ["two", [1], {"v": 1}])
def test_a_version_that_is_not_a_number_is_an_invalid_event(version: Any) -> None:
    # BUG (libs/common/envelope.py parse_envelope, `int(raw.get("version") or 1)`): "two" raises a bare
    # ValueError and [1] / {"v": 1} a TypeError, instead of InvalidEvent (which is what gets dead-lettered).
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    raw["version"] = version
    with pytest.raises(InvalidEvent):
        parse_envelope(raw)


def test_an_invalid_payload_field_is_refused_naming_the_field() -> None:
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    raw["payload"]["amount_micro_eur"] = "lots"
    with pytest.raises(InvalidEvent, match=r"payload\.amount_micro_eur"):
        parse_envelope(raw)


def test_a_missing_payload_field_is_refused_naming_the_field() -> None:
    raw = wire(envelope_of(SAMPLES[UsageSampled]))
    del raw["payload"]["seq"]
    with pytest.raises(InvalidEvent, match=r"payload\.seq"):
        parse_envelope(raw)


def test_a_payload_constraint_violation_is_refused_naming_the_field() -> None:
    raw = wire(envelope_of(SAMPLES[UsageSampled]))
    raw["payload"]["cpu_us"] = -1  # a cumulative counter is never negative
    with pytest.raises(InvalidEvent, match=r"payload\.cpu_us"):
        parse_envelope(raw)


def test_a_nested_invalid_field_is_named_by_its_path() -> None:
    raw = wire(envelope_of(SAMPLES[JobAccepted]))
    raw["payload"]["request"]["max_micro_eur_per_dtu_hour"] = 0
    with pytest.raises(InvalidEvent, match=r"payload\.request\.max_micro_eur_per_dtu_hour"):
        parse_envelope(raw)


@pytest.mark.parametrize("field", ["id", "source", "time", "party", "correlation_id"])
def test_a_missing_envelope_field_is_refused_naming_it(field: str) -> None:
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    del raw[field]
    with pytest.raises(InvalidEvent, match=field):
        parse_envelope(raw)


def test_an_event_time_without_a_timezone_is_refused() -> None:
    raw = wire(envelope_of(SAMPLES[FundsHeld]))
    raw["time"] = "2025-03-01T12:00:00"
    with pytest.raises(InvalidEvent, match="time"):
        parse_envelope(raw)


@pytest.mark.parametrize("data", [b"not json", b"\xff\xfe", "[1, 2]", b"null", b'"a string"'])
def test_a_message_that_is_not_a_json_object_is_an_invalid_event(data: bytes | str) -> None:
    with pytest.raises(InvalidEvent):
        parse_envelope(data)


def test_unknown_extra_fields_are_ignored_so_producers_can_add_optional_fields() -> None:
    env = envelope_of(SAMPLES[JobAccepted])
    raw = wire(env)
    raw["priority"] = "high"
    raw["payload"]["retries"] = 3
    raw["payload"]["request"]["budget_micro_eur"] = 10
    raw["payload"]["request"]["resources"]["arch"] = "arm64"
    assert parse_envelope(json.dumps(raw)) == env


def test_envelopes_are_frozen() -> None:
    env = envelope_of(SAMPLES[FundsHeld])
    with pytest.raises(ValidationError, match="frozen"):
        env.party = "t-other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        env.payload.amount_micro_eur = 1  # type: ignore[misc]


# --- derived ids -----------------------------------------------------------------------------------------


CAUSE = envelope_of(SAMPLES[JobAccepted], party="t-xyz")


def test_a_derived_event_gets_the_same_id_for_the_same_cause_and_key() -> None:
    a = derive(CAUSE, SAMPLES[FundsHeld], source="settlement", n="hold")
    b = derive(CAUSE, SAMPLES[FundsHeld], source="settlement", n="hold", time=T1)
    assert a.id == b.id == derived_id(CAUSE.id, "FundsHeld", "hold")
    assert a.id == uuid5(CAUSE.id, "FundsHeld/hold")


def test_derived_events_with_different_keys_get_different_ids() -> None:
    ids = {derive(CAUSE, SAMPLES[FundsHeld], source="settlement", n=n).id for n in (0, 1, "0x", str(JOB))}
    assert len(ids) == 4


def test_derived_events_of_different_types_or_causes_get_different_ids() -> None:
    other_cause = envelope_of(SAMPLES[JobAccepted], id=UUID("00000000-0000-4000-8000-0000000000cc"))
    held = derive(CAUSE, SAMPLES[FundsHeld], source="settlement")
    released = derive(CAUSE, SAMPLES[HoldReleased], source="settlement")
    held_elsewhere = derive(other_cause, SAMPLES[FundsHeld], source="settlement")
    assert len({held.id, released.id, held_elsewhere.id}) == 3


def test_a_derived_event_inherits_correlation_party_and_time_and_names_its_cause() -> None:
    d = derive(CAUSE, SAMPLES[FundsHeld], source="settlement")
    assert (d.correlation_id, d.party, d.time, d.causation_id) == (CAUSE.correlation_id, "t-xyz", T0, CAUSE.id)
    assert (d.type, d.source) == ("FundsHeld", "settlement")


def test_a_derived_event_may_override_party_time_and_correlation() -> None:
    other = UUID("00000000-0000-4000-8000-0000000000dd")
    d = derive(CAUSE, SAMPLES[WorkloadAssigned], source="placement", party="v-elastx", time=T1, correlation_id=other)
    assert (d.party, d.time, d.correlation_id) == ("v-elastx", T1, other)
    assert d.id == derived_id(CAUSE.id, "WorkloadAssigned", 0)


@given(st.uuids(), st.text(max_size=30), st.text(max_size=30))
def test_derived_ids_are_equal_exactly_when_the_keys_are_equal(cause: UUID, k1: str, k2: str) -> None:
    assert (derived_id(cause, "X", k1) == derived_id(cause, "X", k2)) == (k1 == k2)
