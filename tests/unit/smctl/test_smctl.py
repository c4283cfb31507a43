"""smctl and the SDK without servers: help, manifest files, money, logs, and a clear word when the
exchange is not running."""

import socket
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest
from typer.testing import CliRunner

from clients.sdk.client import (
    INVALID_PARTY,
    CancelOutcome,
    ManifestFileError,
    field_errors,
    format_eur,
    load_manifests,
    submission_party,
)
from clients.smctl.main import app
from clients.smctl.render import cancel_line, order_timeline
from libs.common.ids import job_id

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()

SEED = """\
apiVersion: strongmoose.dsoderlund.consulting/v1alpha1
kind: job
metadata:
    name: my-first-sparkjob
    namespace: xyz                 # the tenant
spec:
    image: apache/spark
    notAfter: 2025-03-25T08:25:58Z # deadline: the work must be finished by then
    maxEuroPerDTU: 50              # price cap per DTU-hour
"""


@pytest.fixture
def closed_port_url() -> str:
    """A NATS URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "logs", "apply", "get", "describe", "cancel", "invoice", "ledger", "demo"):
        assert command in result.output


def test_apply_of_a_file_that_is_not_yaml_names_the_file_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("apiVersion: [unclosed\nkind: job\n")
    result = runner.invoke(app, ["apply", "-f", str(bad)])
    assert result.exit_code == 1
    assert "broken.yaml" in result.output
    assert "not valid YAML" in result.output
    assert "Traceback" not in result.output


def test_apply_of_a_document_that_is_not_a_mapping_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- just\n- a list\n")
    result = runner.invoke(app, ["apply", "-f", str(bad)])
    assert result.exit_code == 1
    assert "list.yaml" in result.output and "not a mapping" in result.output


def test_apply_of_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: no such file" in result.output


def test_load_manifests_reads_every_document_and_skips_empty_ones(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"---\n{SEED}---\n# only a comment\n---\n{SEED.replace('my-first-sparkjob', 'second')}")
    docs = load_manifests(path)
    assert [d["metadata"]["name"] for d in docs] == ["my-first-sparkjob", "second"]


def test_load_manifests_keeps_the_deadline_as_written(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED)
    (doc,) = load_manifests(path)
    assert doc["spec"]["notAfter"] == "2025-03-25T08:25:58Z"
    assert doc["spec"]["maxEuroPerDTU"] == 50


def test_load_manifests_rejects_a_scalar_document_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(f"{SEED}---\njust text\n")
    with pytest.raises(ManifestFileError, match=r"two\.yaml: document 2 is a string, not a mapping"):
        load_manifests(path)


def test_the_seed_example_is_the_first_manifest_verbatim() -> None:
    (doc,) = load_manifests(REPO / "examples" / "seed-job.yaml")
    assert doc["metadata"] == {"name": "my-first-sparkjob", "namespace": "xyz"}
    assert doc["spec"]["restrictions"] == {"region": "Sweden", "vendor": ["elastx", "safespring"]}
    assert doc["spec"]["notAfter"] == "2025-03-25T08:25:58Z"


@pytest.mark.parametrize(("micro", "text"), [
    (1234567, "1.234567"),
    (0, "0.000000"),
    (1, "0.000001"),
    (50_000_000, "50.000000"),
    (-2_500_000, "-2.500000"),
    (10**18 + 1, "1000000000000.000001"),
    ("42", "0.000042"),
    (Decimal(999_999), "0.999999"),
])
def test_money_is_shown_in_eur_with_six_decimals(micro: object, text: str) -> None:
    assert format_eur(micro) == text  # type: ignore[arg-type]


def test_money_refuses_floats() -> None:
    with pytest.raises(TypeError):
        format_eur(1.5)  # type: ignore[arg-type]


def test_a_namespace_that_is_no_subject_token_is_submitted_as_invalid() -> None:
    party, correlation = submission_party({"metadata": {"namespace": "Not.Valid", "name": "x"}})
    assert party == INVALID_PARTY
    party2, correlation2 = submission_party({"metadata": {"namespace": "Not.Valid", "name": "x"}})
    assert correlation != correlation2
    assert submission_party({"metadata": {"namespace": "xyz", "name": "job"}}) == ("t-xyz", job_id("xyz", "job"))
    assert submission_party({"spec": {}})[0] == INVALID_PARTY


def test_rejection_details_become_field_errors_whatever_their_shape() -> None:
    as_list = [{"field": "spec.notAfter", "reason": "is past"}]
    assert [str(e) for e in field_errors(as_list)] == ["spec.notAfter: is past"]
    assert [str(e) for e in field_errors({"errors": as_list})] == ["spec.notAfter: is past"]
    assert [str(e) for e in field_errors("spec.notAfter: is past; metadata.name: is required")] == [
        "spec.notAfter: is past", "metadata.name: is required"]


def test_logs_of_an_unknown_service_lists_the_known_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["logs", "billing", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown log 'billing'" in result.output
    for known in ("intake", "matching", "placement", "metering", "settlement", "agent", "nats", "postgres"):
        assert known in result.output


def test_logs_prints_the_tail_of_a_log(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "intake.log").write_text("".join(f"line {i} [not markup]\n" for i in range(100)))
    result = runner.invoke(app, ["logs", "intake", "-n", "3", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output == "line 97 [not markup]\nline 98 [not markup]\nline 99 [not markup]\n"


def test_logs_of_a_stack_never_started_says_how_to_start_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["logs", "matching", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "smctl up" in result.output


@pytest.mark.parametrize("kind", ["jobs", "offers", "vendors"])
def test_get_without_an_exchange_says_how_to_start_it(kind: str, closed_port_url: str) -> None:
    result = runner.invoke(app, ["--nats-url", closed_port_url, "get", kind])
    assert result.exit_code == 1
    assert "is the exchange running? (smctl up)" in result.output
    assert closed_port_url in result.output
    assert "Traceback" not in result.output


def test_nats_url_comes_from_the_environment_too(closed_port_url: str) -> None:
    result = runner.invoke(app, ["describe", "job", "my-first-sparkjob", "-n", "xyz"],
                           env={"NATS_URL": closed_port_url})
    assert result.exit_code == 1
    assert f"cannot reach NATS at {closed_port_url}" in result.output


def test_get_of_an_unknown_kind_names_the_choices() -> None:
    result = runner.invoke(app, ["get", "nodes"])
    assert result.exit_code == 1
    assert "jobs, offers or vendors" in result.output


def test_down_of_a_stack_never_started_is_fine(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "nothing is up" in result.output


def test_intakes_rejection_line_becomes_field_errors() -> None:
    detail = ("rejected: spec.notAfter: deadline 2025-03-25T08:25:58+00:00 is already past; "
              "spec.colour: is not a known field")
    assert [(e.field, e.reason) for e in field_errors(detail)] == [
        ("spec.notAfter", "deadline 2025-03-25T08:25:58+00:00 is already past"),
        ("spec.colour", "is not a known field"),
    ]


def test_a_timeline_with_equal_times_reads_in_lifecycle_order() -> None:
    t = "2026-12-03 17:05:10.918839+00:00"
    entries = [
        {"time": t, "type": "ChargePosted"},
        {"time": t, "type": "WorkloadAssigned"},
        {"time": "2026-12-03 17:05:09+00:00", "type": "JobAccepted"},
        {"time": t, "type": "MeterClosed"},
        {"time": t, "type": "JobMatched"},
    ]
    assert [e["type"] for e in order_timeline(entries)] == [
        "JobAccepted", "JobMatched", "WorkloadAssigned", "MeterClosed", "ChargePosted"]


def test_up_refuses_a_bad_vendor_list_before_starting_anything(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--state-dir", str(tmp_path), "--vendors", "elastx,Not Valid"])
    assert result.exit_code == 1
    assert "--vendors: Not Valid is not a vendor name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_demo_never_empties_a_directory_that_is_not_its_own(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = runner.invoke(app, ["demo", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a demo state dir" in result.output
    assert precious.read_text() == "keep me"


def test_cancel_of_anything_but_a_job_names_the_choice() -> None:
    result = runner.invoke(app, ["cancel", "offer", "x", "-n", "xyz"])
    assert result.exit_code == 1
    assert "cannot cancel 'offer'; only job" in result.output


def test_cancel_without_an_exchange_says_how_to_start_it(closed_port_url: str) -> None:
    result = runner.invoke(app, ["--nats-url", closed_port_url, "cancel", "job", "j", "-n", "xyz"])
    assert result.exit_code == 1
    assert "smctl up" in result.output


@pytest.mark.parametrize(("outcome", "line"), [
    (dict(cancelled=True, previous_status="running"),
     "job xyz/j cancelled while running: its vendor stops it; only what it used is charged"),
    (dict(cancelled=True, previous_status="placed"),
     "job xyz/j cancelled (it was placed): nothing ran, nothing is charged"),
    (dict(cancelled=True, already=True), "job xyz/j is cancelled already; nothing changed"),
])
def test_a_cancel_says_what_it_did(outcome: dict[str, object], line: str) -> None:
    assert cancel_line(CancelOutcome(uuid4(), "xyz", "j", **outcome)).plain == line  # type: ignore[arg-type]
