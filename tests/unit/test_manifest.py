"""The job manifest as its users meet it: the seed manifest, defaults, and one named error per bad field."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from libs.common.manifest import FieldError, JobRequest, ManifestError, validate_manifest

REPO = Path(__file__).resolve().parents[2]
SEED_TEXT = (REPO / "examples" / "seed-job.yaml").read_text()
# the seed's deadline is 2025-03-25T08:25:58Z; a month before it, it is a valid job
BEFORE_SEED_DEADLINE = datetime(2025, 3, 1, tzinfo=timezone.utc)


def seed() -> dict[str, Any]:
    """The seed manifest exactly as a user's YAML loader reads it."""
    return yaml.safe_load(SEED_TEXT)


def with_spec(**fields: Any) -> dict[str, Any]:
    doc = seed()
    doc["spec"].update(fields)
    return doc


def accepted(doc: Any, at: datetime = BEFORE_SEED_DEADLINE) -> JobRequest:
    return validate_manifest(doc, submitted_at=at)


def errors_of(doc: Any, at: datetime = BEFORE_SEED_DEADLINE) -> list[FieldError]:
    with pytest.raises(ManifestError) as exc:
        validate_manifest(doc, submitted_at=at)
    return exc.value.errors


def fields_of(doc: Any, at: datetime = BEFORE_SEED_DEADLINE) -> list[str]:
    return [e.field for e in errors_of(doc, at)]


# --- the seed manifest -----------------------------------------------------------------------------------


def test_the_seed_manifest_submitted_now_is_rejected_only_because_its_deadline_has_passed() -> None:
    errs = errors_of(seed(), at=datetime.now(timezone.utc))
    assert [e.field for e in errs] == ["spec.notAfter"]
    assert "already past" in errs[0].reason


def test_the_seed_manifest_submitted_before_its_deadline_is_accepted_with_the_documented_defaults() -> None:
    job = accepted(seed())
    assert job.tenant == "xyz"
    assert job.party == "t-xyz"
    assert job.name == "my-first-sparkjob"
    assert job.image == "apache/spark"
    assert job.not_after == datetime(2025, 3, 25, 8, 25, 58, tzinfo=timezone.utc)
    # 50 EUR per DTU-hour = 50 x 1_000_000 micro-euros
    assert job.max_micro_eur_per_dtu_hour == 50_000_000
    assert job.command == ("python3", "/myjobs/spark/script.py")
    assert job.env == {"INPUT": "/myjobs/data"}
    assert job.resources.vcpu == Decimal(1)
    assert job.resources.memory_gib == Decimal(4)
    assert job.resources.gpu == 0
    assert job.resources.dtu_rate == Decimal(1)  # max(1 vCPU, 4 GiB / 4)
    assert job.expected_duration_s == 3600
    assert job.restrictions.region == "Sweden"
    assert job.restrictions.vendors == ("elastx", "safespring")


def test_kind_job_capitalised_as_kubernetes_users_write_it_is_accepted() -> None:
    doc = seed()
    doc["kind"] = "Job"
    assert accepted(doc).name == "my-first-sparkjob"


def test_a_single_vendor_given_as_a_string_is_a_one_vendor_allow_list() -> None:
    doc = seed()
    doc["spec"]["restrictions"]["vendor"] = "elastx"
    assert accepted(doc).restrictions.vendors == ("elastx",)


def test_an_explicit_command_with_args_replaces_the_script_path_default() -> None:
    job = accepted(with_spec(command=["spark-submit"], args=["--master", "local"]))
    assert job.command == ("spark-submit", "--master", "local")


def test_numeric_env_values_become_strings_as_kubernetes_users_expect() -> None:
    assert accepted(with_spec(env={"PORT": 80, "RATIO": 0.5})).env == {"PORT": "80", "RATIO": "0.5"}


def test_the_optional_request_fields_have_documented_defaults() -> None:
    job = accepted(seed())
    assert (job.preference, job.earliest_start, job.max_micro_eur_total) == ("cheapest", None, None)
    assert (job.restrictions.deny_vendors, job.restrictions.attributes) == ((), ())


def test_preference_earliest_start_budget_deny_list_and_compliance_attributes_are_read() -> None:
    doc = with_spec(preference="soonest", notBefore="2025-03-02T08:00:00Z", maxEuroTotal="12.5")
    doc["spec"]["restrictions"].update(excludeVendor="citycloud", attributes=["GDPR", " iso27001"])
    job = accepted(doc)
    assert job.preference == "soonest"
    assert job.earliest_start == datetime(2025, 3, 2, 8, tzinfo=timezone.utc)
    assert job.max_micro_eur_total == 12_500_000
    assert job.restrictions.deny_vendors == ("citycloud",)
    assert job.restrictions.attributes == ("gdpr", "iso27001")


def test_an_unknown_preference_and_an_earliest_start_after_the_deadline_are_named() -> None:
    assert "spec.preference" in fields_of(with_spec(preference="fastest"))
    errs = errors_of(with_spec(notBefore="2025-03-26T00:00:00Z"))
    assert [e.field for e in errs] == ["spec.notBefore"]
    assert "is not before the deadline" in errs[0].reason


# --- header fields ---------------------------------------------------------------------------------------


def test_a_wrong_api_version_is_named() -> None:
    doc = seed()
    doc["apiVersion"] = "batch/v1"
    errs = errors_of(doc)
    assert [e.field for e in errs] == ["apiVersion"]
    assert "strongmoose.dsoderlund.consulting/v1alpha1" in errs[0].reason


def test_a_kind_other_than_job_is_named() -> None:
    doc = seed()
    doc["kind"] = "Deployment"
    assert fields_of(doc) == ["kind"]


@pytest.mark.parametrize("name", ["My_Job", "-leading-dash", "trailing-dash-", "x" * 64, "dots.not.allowed", ""])
def test_a_metadata_name_that_is_not_a_dns_1123_label_is_named(name: str) -> None:
    doc = seed()
    doc["metadata"]["name"] = name
    errs = errors_of(doc)
    assert [e.field for e in errs] == ["metadata.name"]
    assert "DNS-1123" in errs[0].reason


def test_a_missing_namespace_is_named_as_required() -> None:
    doc = seed()
    del doc["metadata"]["namespace"]
    assert [str(e) for e in errors_of(doc)] == ["metadata.namespace: is required"]


# --- deadline --------------------------------------------------------------------------------------------


def test_a_missing_deadline_is_named_as_required() -> None:
    doc = seed()
    del doc["spec"]["notAfter"]
    assert [str(e) for e in errors_of(doc)] == ["spec.notAfter: is required"]


def test_a_deadline_without_a_timezone_is_named() -> None:
    # YAML reads a timestamp without an offset as a naive datetime: when is that deadline?
    doc = yaml.safe_load(SEED_TEXT.replace("2025-03-25T08:25:58Z", "2025-03-25T08:25:58"))
    assert isinstance(doc["spec"]["notAfter"], datetime) and doc["spec"]["notAfter"].tzinfo is None
    assert fields_of(doc) == ["spec.notAfter"]


def test_a_deadline_that_leaves_less_than_the_expected_duration_is_named() -> None:
    # submitted 08:00, deadline 08:30, expected 1 h: the run would end at 09:00, after the deadline
    at = datetime(2025, 3, 25, 8, 0, tzinfo=timezone.utc)
    errs = errors_of(with_spec(notAfter="2025-03-25T08:30:00Z"), at=at)
    assert [e.field for e in errs] == ["spec.notAfter"]
    assert "expected duration of 3600 s" in errs[0].reason


def test_a_deadline_exactly_submission_plus_expected_duration_is_accepted() -> None:
    at = datetime(2025, 3, 25, 7, 30, tzinfo=timezone.utc)
    assert accepted(with_spec(notAfter="2025-03-25T08:30:00Z"), at=at).expected_duration_s == 3600


def test_a_deadline_equal_to_the_submission_time_is_already_past() -> None:
    at = datetime(2025, 3, 25, 8, 25, 58, tzinfo=timezone.utc)
    assert "already past" in errors_of(seed(), at=at)[0].reason


# --- price cap -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "reason"),
    [
        (-1, "greater than 0"),
        (0, "greater than 0"),
        ("0.000000", "greater than 0"),
        (float("nan"), "finite"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        (float("inf"), "finite"),
        ("0.0000001", "more than 6 decimals"),  # 7 decimals: a tenth of a micro-euro
        (2e6, "larger than 1,000,000"),
        ("1000000.000001", "larger than 1,000,000"),
        (True, "number of euros"),  # YAML `yes`: not a price
        ("fifty", "number of euros"),
    ],
)
def test_a_bad_price_cap_is_named_with_its_reason(cap: Any, reason: str) -> None:
    errs = errors_of(with_spec(maxEuroPerDTU=cap))
    assert [e.field for e in errs] == ["spec.maxEuroPerDTU"]
    assert reason in errs[0].reason


@pytest.mark.parametrize(
    ("cap", "micro"),
    [
        (50, 50_000_000),
        ("0.000001", 1),  # one micro-euro, the smallest unit
        (0.1, 100_000),  # a float goes through its shortest repr "0.1", not 0.1000000000000000055...
        ("12.345678", 12_345_678),
        (1_000_000, 1_000_000_000_000),  # the largest cap allowed
    ],
)
def test_a_price_cap_in_euros_becomes_exact_micro_euros(cap: Any, micro: int) -> None:
    assert accepted(with_spec(maxEuroPerDTU=cap)).max_micro_eur_per_dtu_hour == micro


@pytest.mark.parametrize("cap", ["1e999999", "1e-1000040"])
def test_an_absurd_exponent_as_price_cap_is_a_field_error_not_a_crash(cap: str) -> None:
    # BUG (libs/common/manifest.py euro_to_micro): "1e999999" overflows `d * MICRO` (decimal.Overflow
    # escapes validate_manifest); "1e-1000040" underflows to 0 micro-euros, passes the validator, and
    # JobRequest(max_micro_eur_per_dtu_hour=0) raises a pydantic ValidationError instead of a ManifestError.
    assert fields_of(with_spec(maxEuroPerDTU=cap)) == ["spec.maxEuroPerDTU"]


@given(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(1_000_000), places=6,
                   allow_nan=False, allow_infinity=False))
def test_any_cap_with_at_most_six_decimals_round_trips_exactly_to_micro_euros(cap: Decimal) -> None:
    micro = accepted(with_spec(maxEuroPerDTU=cap)).max_micro_eur_per_dtu_hour
    assert micro == cap * 1_000_000
    assert Decimal(micro) / 1_000_000 == cap


@given(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(1_000_000), places=6,
                   allow_nan=False, allow_infinity=False))
def test_any_cap_with_at_most_six_decimals_given_as_text_round_trips_exactly(cap: Decimal) -> None:
    assert accepted(with_spec(maxEuroPerDTU=str(cap))).max_micro_eur_per_dtu_hour == cap * 1_000_000


# --- resources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpu", "vcpu"), [(2, Decimal(2)), ("500m", Decimal("0.5")), ("1.5", Decimal("1.5"))])
def test_cpu_accepts_kubernetes_quantities(cpu: Any, vcpu: Decimal) -> None:
    assert accepted(with_spec(resources={"cpu": cpu})).resources.vcpu == vcpu


@pytest.mark.parametrize("cpu", ["abc", -1, 0, "0m", "m", "NaN", True])
def test_a_bad_cpu_is_named(cpu: Any) -> None:
    errs = errors_of(with_spec(resources={"cpu": cpu}))
    assert [e.field for e in errs] == ["spec.resources.cpu"]
    assert "vCPU" in errs[0].reason


@pytest.mark.parametrize(
    ("memory", "gib"),
    [
        ("4Gi", Decimal(4)),
        ("512Mi", Decimal("0.5")),
        # 1G = 10^9 bytes = 10^9 / 2^30 GiB, exactly 0.931322574615478515625
        ("1G", Decimal("0.931322574615478515625")),
        (2**30, Decimal(1)),  # plain bytes
    ],
)
def test_memory_accepts_kubernetes_quantities(memory: Any, gib: Decimal) -> None:
    assert accepted(with_spec(resources={"memory": memory})).resources.memory_gib == gib


@pytest.mark.parametrize("memory", ["lots", "-1Gi", "0Mi", "Gi"])
def test_a_bad_memory_quantity_is_named(memory: Any) -> None:
    assert fields_of(with_spec(resources={"memory": memory})) == ["spec.resources.memory"]


def test_an_absurd_memory_exponent_is_a_field_error_not_a_crash() -> None:
    # BUG (libs/common/manifest.py parse_quantity_memory_gib): "1e999999Gi" overflows the Decimal
    # multiplication, and decimal.Overflow (not a ValueError) escapes validate_manifest.
    assert fields_of(with_spec(resources={"memory": "1e999999Gi"})) == ["spec.resources.memory"]


def test_memory_beyond_4_gib_per_vcpu_sets_the_dtu_rate() -> None:
    # 2 vCPU with 16 GiB: max(2, 16 / 4) = 4 DTU
    assert accepted(with_spec(resources={"cpu": 2, "memory": "16Gi"})).resources.dtu_rate == Decimal(4)


def test_gpus_are_optional_and_counted() -> None:
    req = accepted(with_spec(resources={"gpu": 2, "gpuModel": "a100"}, maxEuroPerGPUHour="2.5"))
    assert (req.resources.gpu, req.resources.gpu_model, req.max_micro_eur_per_gpu_hour) == (2, "a100", 2_500_000)


def test_a_job_with_gpus_must_cap_the_gpu_hour_price() -> None:
    assert fields_of(with_spec(resources={"gpu": 1})) == ["spec.maxEuroPerGPUHour"]


def test_a_negative_gpu_count_is_named() -> None:
    assert fields_of(with_spec(resources={"gpu": -1})) == ["spec.resources.gpu"]


# --- expected duration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("90s", 90), ("15m", 900), ("2h30m", 9000), ("1h", 3600), (600, 600), ("1h0m1s", 3601)],
)
def test_expected_duration_accepts_units_and_plain_seconds(duration: Any, seconds: int) -> None:
    assert accepted(with_spec(expectedDuration=duration)).expected_duration_s == seconds


@pytest.mark.parametrize("duration", ["forever", 0, -5, "0s", "", "1d", True, 367 * 24 * 3600])
def test_a_bad_expected_duration_is_named(duration: Any) -> None:
    assert fields_of(with_spec(expectedDuration=duration)) == ["spec.expectedDuration"]


# --- shape -----------------------------------------------------------------------------------------------


def test_an_unknown_spec_field_is_named_as_not_known() -> None:
    assert [str(e) for e in errors_of(with_spec(colour="blue"))] == ["spec.colour: is not a known field"]


def test_an_unknown_restriction_is_named_as_not_known() -> None:
    doc = seed()
    doc["spec"]["restrictions"]["planet"] = "earth"
    assert [str(e) for e in errors_of(doc)] == ["spec.restrictions.planet: is not a known field"]


def test_a_manifest_without_script_path_or_command_is_named() -> None:
    doc = seed()
    del doc["spec"]["scriptPath"]
    assert fields_of(doc) == ["spec.scriptPath"]


def test_several_bad_fields_give_one_error_each() -> None:
    doc = seed()
    doc["kind"] = "Pod"
    doc["metadata"]["name"] = "Not_A_Label"
    doc["spec"]["maxEuroPerDTU"] = -3
    doc["spec"]["resources"] = {"cpu": "abc", "memory": "lots"}
    doc["spec"]["expectedDuration"] = "forever"
    doc["spec"]["colour"] = "blue"
    assert sorted(fields_of(doc)) == sorted([
        "kind", "metadata.name", "spec.maxEuroPerDTU", "spec.resources.cpu", "spec.resources.memory",
        "spec.expectedDuration", "spec.colour",
    ])


def test_the_error_message_joins_every_field_and_reason() -> None:
    doc = seed()
    doc["kind"] = "Pod"
    doc["spec"]["colour"] = "blue"
    with pytest.raises(ManifestError) as exc:
        validate_manifest(doc, submitted_at=BEFORE_SEED_DEADLINE)
    assert "kind: must be job (or Job)" in str(exc.value)
    assert "spec.colour: is not a known field" in str(exc.value)


@pytest.mark.parametrize("doc", [None, "kind: job", ["a", "list"], 42])
def test_a_document_that_is_not_a_mapping_is_refused_as_a_whole(doc: Any) -> None:
    errs = errors_of(doc)
    assert [e.field for e in errs] == ["(manifest)"]
    assert "mapping" in errs[0].reason


def test_validation_does_not_modify_the_submitted_document() -> None:
    doc = seed()
    before = copy.deepcopy(doc)
    accepted(doc)
    assert doc == before


def test_the_same_manifest_submitted_at_the_same_time_gives_the_same_job() -> None:
    assert accepted(seed()) == accepted(seed())


def test_a_deadline_in_another_timezone_is_compared_as_the_same_instant() -> None:
    # 10:25:58+02:00 is 08:25:58Z: one second after 08:25:57Z, so a run of 1 s fits exactly
    at = datetime(2025, 3, 25, 8, 25, 57, tzinfo=timezone.utc)
    job = accepted(with_spec(notAfter="2025-03-25T10:25:58+02:00", expectedDuration="1s"), at=at)
    assert job.not_after == at + timedelta(seconds=1)


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", " abc", "abc "])
def test_a_name_with_trailing_or_leading_whitespace_is_not_a_dns_label(name: str) -> None:
    doc = seed()
    doc["metadata"]["name"] = name
    assert fields_of(doc) == ["metadata.name"]


def test_a_manifest_larger_than_the_limit_is_refused_as_a_whole() -> None:
    assert fields_of(with_spec(env={f"K{i}": "v" * 100 for i in range(1000)})) == ["(manifest)"]


def test_a_deadline_more_than_a_year_ahead_is_refused() -> None:
    assert fields_of(with_spec(notAfter="9999-12-31T23:59:59-14:00")) == ["spec.notAfter"]
