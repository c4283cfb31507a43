"""deploy/: the Kubernetes manifests validate against the official schemas and hang together, the
compose file has what `docker compose up` needs to come up healthy, the Job CRD mirrors the
manifest model and accepts the seed manifest, and render.sh prints it all without kubectl.

No Docker engine or Kubernetes API server runs here, so this is validation, not a deployment."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from libs.common import manifest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
K8S_VERSION = "1.30"  # the oldest Kubernetes we support; kubernetes-validate ships its schemas
NAMESPACE = "strongmoose"
HEALTHCHECK = "/app/deploy/healthcheck.py"
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "__main__.py").is_file())
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


class KubectlLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: a timestamp stays a string, as it reaches the API server in JSON."""


KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=KubectlLoader) if d is not None]


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_files() for doc in load_all(path)]


def doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


DOCUMENTS = k8s_documents()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def crd() -> dict[str, Any]:
    return one("CustomResourceDefinition", "jobs.strongmoose.dsoderlund.consulting")


def crd_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


# -- Kubernetes: every object against the official schemas ---------------------------------------------


def test_there_are_manifests_to_validate() -> None:
    assert len(DOCUMENTS) >= 15


@pytest.mark.parametrize("item", DOCUMENTS, ids=[doc_id(i) for i in DOCUMENTS])
def test_manifest_validates_against_the_kubernetes_schema(item: tuple[Path, dict[str, Any]]) -> None:
    path, doc = item
    try:
        # strict: an unknown (misspelt) field is an error, as `kubectl apply --validate=strict` makes it
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "(document)"
        pytest.fail(f"{doc_id(item)} is not a valid Kubernetes {K8S_VERSION} object: {where}: {e.message}")


def test_kustomization_lists_every_manifest_once_and_nothing_else() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert sorted(listed) == sorted(str(p.relative_to(K8S)) for p in k8s_files())
    # the namespace and the CRD come first, so a plain `kubectl apply -f` of the rendered stream works
    assert listed[:2] == ["namespace.yaml", "crd/job.yaml"]


@pytest.mark.parametrize("item", DOCUMENTS, ids=[doc_id(i) for i in DOCUMENTS])
def test_every_namespaced_object_names_the_strongmoose_namespace(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in doc["metadata"]
    else:
        assert doc["metadata"].get("namespace") == NAMESPACE
    assert one("Namespace", NAMESPACE)


def test_there_is_one_folder_with_a_deployment_per_service() -> None:
    service_folders = sorted(p.name for p in K8S.iterdir() if p.is_dir() and p.name not in
                             {"crd", "rbac", "nats", "postgres"})
    assert service_folders == SERVICES
    assert sorted(d["metadata"]["name"] for d in of_kind("Deployment")) == SERVICES
    for name in SERVICES:
        assert [d["kind"] for d in load_all(K8S / name / "deployment.yaml")] == ["Deployment"]


def healthcheck_targets(container: dict[str, Any]) -> list[str]:
    """The service each exec probe of the container checks with deploy/healthcheck.py."""
    targets = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container.get(probe, {}).get("exec", {}).get("command", [])
        if any(part.endswith("deploy/healthcheck.py") for part in command):
            script = next(i for i, part in enumerate(command) if part.endswith("deploy/healthcheck.py"))
            assert command[script] == HEALTHCHECK, "probes run the script where the image puts it"
            assert len(command) == script + 2, f"{probe}: healthcheck.py takes exactly one argument"
            targets.append(command[script + 1])
    return targets


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployment_probes_check_a_service_that_exists(deployment: dict[str, Any]) -> None:
    for container in pod_spec(deployment)["containers"]:
        targets = healthcheck_targets(container)
        assert targets, f"{container['name']}: no probe runs deploy/healthcheck.py"
        for target in targets:
            assert target in SERVICES, f"probe checks {target!r}, which is not a service under services/"


@pytest.mark.parametrize("name", SERVICES)
def test_service_deployment_runs_its_service_safely(name: str) -> None:
    deployment = one("Deployment", name)
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["args"] == [name], "the image's entrypoint maps the name to python -m services.<name>"
    # all three probes, each on this very service
    assert healthcheck_targets(container) == [name, name, name]
    assert spec["serviceAccountName"] == name
    assert one("ServiceAccount", name)
    # configuration from the shared ConfigMap, the database URL from a Secret
    refs = {(k, v["name"]) for source in container["envFrom"] for k, v in source.items()}
    assert refs == {("configMapRef", "strongmoose-config"), ("secretRef", "strongmoose-database")}
    assert set(container["resources"]) == {"requests", "limits"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001, "the uid the Dockerfile creates"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_matching_runs_as_a_single_writer() -> None:
    matching = one("Deployment", "matching")
    assert matching["spec"]["replicas"] == 1
    assert matching["spec"]["strategy"]["type"] == "Recreate"


def test_config_and_secrets_the_services_read_exist_with_the_keys_settings_need() -> None:
    config = one("ConfigMap", "strongmoose-config")["data"]
    assert {"NATS_URL", "SETTLEMENT_FEE_BPS"} <= set(config)
    assert config["NATS_URL"] == "nats://nats:4222"
    assert int(config["SETTLEMENT_FEE_BPS"]) >= 0
    database = one("Secret", "strongmoose-database")["stringData"]["DATABASE_URL"]
    postgres = one("Secret", "postgres")["stringData"]
    assert database == (f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                        f"@postgres:5432/{postgres['POSTGRES_DB']}")


def test_every_referenced_configmap_secret_and_service_account_is_defined() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in DOCUMENTS}
    for workload in of_kind("Deployment") + of_kind("StatefulSet"):
        spec = pod_spec(workload)
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in defined
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in defined
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in defined
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in defined


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    assert one("Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in of_kind("Deployment") + of_kind("StatefulSet"):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]


def test_placement_may_manage_what_the_kubernetes_target_creates() -> None:
    role = one("ClusterRole", "strongmoose-placement")
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    manage = {"get", "list", "watch", "create", "delete"}
    for key in [("batch", "jobs"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies"),
                ("", "resourcequotas")]:
        assert manage <= granted.get(key, set()), key
    assert {"get", "list", "watch", "delete"} <= granted[("", "pods")]
    binding = one("ClusterRoleBinding", "strongmoose-placement")
    assert binding["roleRef"]["name"] == "strongmoose-placement"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "placement", "namespace": NAMESPACE}]
    # the other services get no API token at all
    for name in SERVICES:
        assert one("ServiceAccount", name)["automountServiceAccountToken"] is (name == "placement")


# -- NATS and PostgreSQL ------------------------------------------------------------------------------


def test_nats_is_a_three_node_jetstream_cluster_with_headless_and_client_services() -> None:
    sts = one("StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = one("Service", "nats")
    assert {p["port"] for p in client["spec"]["ports"]} >= {4222}
    conf = one("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in conf
    routes = re.findall(r"nats://(nats-\d)\.([a-z-]+):6222", conf)
    assert routes == [(f"nats-{i}", headless["metadata"]["name"]) for i in range(3)]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_nats_server_accepts_the_cluster_configuration(tmp_path: Path) -> None:
    from libs.common.localinfra import nats_server_bin

    conf = tmp_path / "nats.conf"
    conf.write_text(one("ConfigMap", "nats-config")["data"]["nats.conf"])
    env = {**os.environ, "POD_NAME": "nats-0"}  # what the StatefulSet sets from metadata.name
    result = subprocess.run([nats_server_bin(), "-t", "-c", str(conf)], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    pod_env = {e["name"]: e for e in pod_spec(one("StatefulSet", "nats"))["containers"][0]["env"]}
    assert pod_env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_postgres_is_a_statefulset_with_a_service_and_a_secret() -> None:
    sts = one("StatefulSet", "postgres")
    assert one("Service", sts["spec"]["serviceName"])
    (container,) = pod_spec(sts)["containers"]
    assert container["image"].startswith("postgres:16")
    assert container["envFrom"] == [{"secretRef": {"name": "postgres"}}]
    text = (K8S / "postgres" / "statefulset.yaml").read_text()
    assert "Postgres-compatible distributed SQL" in text


# -- the Job CRD -----------------------------------------------------------------------------------------


def test_crd_defines_the_namespaced_job_kind_of_the_manifest_api_version() -> None:
    spec = crd()["spec"]
    (version,) = spec["versions"]
    assert f"{spec['group']}/{version['name']}" == manifest.API_VERSION
    assert spec["names"]["kind"] == "Job" and "Job" in manifest.KINDS
    assert (spec["names"]["plural"], spec["names"]["singular"]) == ("jobs", "job")
    assert spec["scope"] == "Namespaced"
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert "kind: job" in (K8S / "crd" / "job.yaml").read_text(), "the comment on the seed's lower-case kind"


def schema_at(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in json_path.strip(".").split("."):
        node = (node or {}).get("properties", {}).get(part)
    return node


def test_crd_printer_columns_point_at_fields_of_the_schema() -> None:
    (version,) = crd()["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        assert schema_at(crd_schema(), column["jsonPath"]) is not None, column


def test_crd_schema_mirrors_the_manifest_model() -> None:
    spec_model = manifest._Raw.Spec  # the pydantic shape intake validates with
    spec = crd_schema()["properties"]["spec"]
    assert set(spec["properties"]) == set(spec_model.model_fields)
    assert set(spec["required"]) == {n for n, f in spec_model.model_fields.items() if f.is_required()}
    assert set(spec["properties"]["resources"]["properties"]) == set(spec_model.Res.model_fields)
    assert set(spec["properties"]["restrictions"]["properties"]) == set(spec_model.Restr.model_fields)
    assert spec["properties"]["notAfter"]["format"] == "date-time"


JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
NOT_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}


def structural_errors(node: dict[str, Any], path: str) -> list[str]:
    """The API server's structural-schema rules that matter here (it refuses a CRD that breaks them)."""
    errors = []
    typed = node.get("type") or node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields")
    if not typed:
        errors.append(f"{path}: no type")
    if node.get("x-kubernetes-int-or-string"):
        if "type" in node or node.get("anyOf", INT_OR_STRING) != INT_OR_STRING:
            errors.append(f"{path}: int-or-string takes no type, only anyOf [integer, string]")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties exclude each other")
    for junctor in JUNCTORS:
        for sub in node.get(junctor, []) if junctor != "not" else [node.get("not", {})]:
            if junctor == "anyOf" and node.get("x-kubernetes-int-or-string") and sub in INT_OR_STRING:
                continue
            if NOT_IN_JUNCTORS & set(sub):
                errors.append(f"{path}.{junctor}: {sorted(NOT_IN_JUNCTORS & set(sub))} inside a junctor")
    for name, child in node.get("properties", {}).items():
        errors += structural_errors(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        errors += structural_errors(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        errors += structural_errors(node["items"], f"{path}[]")
    return errors


def test_crd_schema_is_structural() -> None:
    assert structural_errors(crd_schema(), "openAPIV3Schema") == []


def date_time(value: object) -> bool:
    """RFC 3339 date-time with a zone (jsonschema checks the format only with an extra package)."""
    if not isinstance(value, str):
        return True
    return "T" in value.upper() and datetime.fromisoformat(value).tzinfo is not None


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(date_time)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(), format_checker=FORMATS)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def seed() -> dict[str, Any]:
    (doc,) = load_all(REPO / "examples" / "seed-job.yaml")
    return doc


def test_crd_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft7Validator.check_schema(crd_schema())


def test_seed_manifest_as_kind_Job_validates_against_the_crd_schema() -> None:
    doc = seed()
    assert doc["kind"] == "job"  # the seed stays as first written; Kubernetes needs the PascalCase kind
    doc["kind"] = "Job"
    assert doc["apiVersion"] == manifest.API_VERSION
    assert crd_errors(doc) == []
    # and the exchange's intake takes the same document (and the seed as written)
    before_deadline = datetime(2025, 3, 24, tzinfo=timezone.utc)
    assert manifest.validate_manifest(doc, submitted_at=before_deadline).name == "my-first-sparkjob"
    assert manifest.validate_manifest(seed(), submitted_at=before_deadline).name == "my-first-sparkjob"


@pytest.mark.parametrize("path, value", [
    ("resources.cpu", 2), ("resources.cpu", "500m"), ("resources.cpu", "1.5"),
    ("resources.memory", "512Mi"), ("resources.memory", 4294967296), ("resources.gpu", 8),
    ("resources.gpuModel", "H100"), ("expectedDuration", "2h30m"), ("expectedDuration", 5400),
    ("maxEuroPerDTU", 0.35), ("maxEuroPerDTU", "0.35"), ("restrictions.vendor", "elastx"),
    ("command", ["python3", "-c", "print(1)"]), ("args", ["--fast"]), ("env", {"PORT": "80"}),
])
def test_crd_schema_accepts_the_documented_forms(path: str, value: Any) -> None:
    doc = seed()
    doc["kind"] = "Job"
    *parents, leaf = path.split(".")
    node = doc["spec"]
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    assert crd_errors(doc) == []


@pytest.mark.parametrize("path, value", [
    ("notAfter", None), ("notAfter", "tomorrow"), ("notAfter", "2025-03-25T08:25:58"),
    ("maxEuroPerDTU", None), ("resources.cpu", "lots"), ("resources.memory", "4 GB"),
    ("resources.gpu", -1), ("expectedDuration", "an hour"), ("env", {"PORT": 80}),
    ("command", "python3 script.py"),
])
def test_crd_schema_refuses_wrong_values(path: str, value: Any) -> None:
    doc = seed()
    doc["kind"] = "Job"
    *parents, leaf = path.split(".")
    node = doc["spec"]
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    assert crd_errors(doc), f"spec.{path}={value!r} was accepted"


# -- compose ---------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # also resolves the file's anchors and merge keys


def app_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if n not in ("nats", "postgres")}


def interpolate_defaults(value: str) -> str:
    """Compose's ${VAR:-default} with every variable unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_runs_nats_postgres_the_five_services_and_an_agent() -> None:
    assert set(compose()["services"]) == {"nats", "postgres", *SERVICES, "agent"}


def test_compose_nats_has_jetstream_a_volume_and_a_monitoring_healthcheck() -> None:
    nats = compose()["services"]["nats"]
    assert nats["image"].startswith("nats:")
    assert "-js" in nats["command"]
    store = nats["command"][nats["command"].index("-sd") + 1]
    assert any(v.split(":")[1] == store for v in nats["volumes"]), "the JetStream store is on a volume"
    monitor = nats["command"][nats["command"].index("-m") + 1]
    test = " ".join(nats["healthcheck"]["test"])
    assert f":{monitor}/healthz" in test


def test_compose_postgres_is_16_with_a_pg_isready_healthcheck() -> None:
    pg = compose()["services"]["postgres"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["volumes"]


@pytest.mark.parametrize("name", sorted({*SERVICES, "agent"}))
def test_compose_service_is_built_here_waits_for_healthy_dependencies_and_checks_itself(name: str) -> None:
    service = app_services()[name]
    assert service["image"] and service["build"]
    assert (COMPOSE.parent / service["build"]["context"] / service["build"].get("dockerfile", "Dockerfile")
            ).resolve() == REPO / "Dockerfile"
    assert service["command"] == [name], "the entrypoint maps the name to the process"
    depends = service["depends_on"]
    assert isinstance(depends, dict) and depends, "long form, with conditions"
    assert all(d["condition"] == "service_healthy" for d in depends.values())
    assert set(depends) == ({"nats"} if name == "agent" else {"nats", "postgres"})
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", HEALTHCHECK] and test[3:] == [name]
    assert test[3] in SERVICES or test[3] == "agent"
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    assert service["environment"]["NATS_URL"] == "nats://nats:4222"


def test_compose_every_service_restarts_and_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        assert service.get("restart"), name
        assert service.get("healthcheck", {}).get("test"), name


def test_compose_database_url_matches_the_postgres_service() -> None:
    pg = compose()["services"]["postgres"]["environment"]
    url = f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    for name in SERVICES:
        assert app_services()[name]["environment"]["DATABASE_URL"] == url
    assert "SETTLEMENT_FEE_BPS" in app_services()["settlement"]["environment"]


def test_compose_ports_are_bound_to_loopback_only() -> None:
    bound = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            bound += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from other hosts"
    assert bound >= 2  # NATS and PostgreSQL are reachable for smctl on this host


def test_compose_agent_mounts_the_shared_data_read_only() -> None:
    agent = app_services()["agent"]
    env = agent["environment"]
    mounts = {}
    for volume in agent["volumes"]:
        source, target, *mode = interpolate_defaults(volume).split(":")
        mounts[target] = (source, mode)
    data_source, data_mode = mounts[env["AGENT_DATA_DIR"]]
    assert data_mode == ["ro"]
    assert (COMPOSE.parent / data_source / "prices").is_dir(), "shared/data sits beside the repository"
    assert mounts["/myjobs"][1] == ["ro"] and (COMPOSE.parent / mounts["/myjobs"][0]).is_dir()
    assert env["AGENT_STATE_DIR"] in mounts, "the agent's state survives a restart"
    assert dict(m.split("=") for m in env["AGENT_MOUNTS"].split(",")) == {"/myjobs": "/myjobs", "/data": "/data"}


# -- the image -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfile_installs_the_locked_package_on_python_311_slim_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    args = dict(v.split("=", 1) for k, v in instructions if k == "ARG" and "=" in v)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(v.split()[0] == "${PYTHON_IMAGE}" for k, v in instructions if k == "FROM")
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "pip install -c requirements.lock ." in runs
    (user,) = [v for k, v in instructions if k == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entrypoint,) = [v for k, v in instructions if k == "ENTRYPOINT"]
    assert "/app/deploy/entrypoint.sh" in entrypoint
    assert any(k == "COPY" and "deploy/healthcheck.py" in v for k, v in instructions)


def test_dockerignore_lets_in_every_file_the_dockerfile_copies() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert "*" in (REPO / ".dockerignore").read_text().splitlines(), "an allow-list"
    for kind, value in dockerfile_instructions():
        if kind != "COPY" or value.startswith("--from"):
            continue
        *sources, _ = value.split()
        for source in sources:
            assert source in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (REPO / source).exists()


# -- render.sh -------------------------------------------------------------------------------------------


def test_render_prints_every_manifest_in_kustomization_order_without_kubectl() -> None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no kubectl, kustomize or venv on the path
    result = subprocess.run(["sh", str(DEPLOY / "render.sh")], env=env, capture_output=True, text=True,
                            timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.load_all(result.stdout, Loader=KubectlLoader) if d is not None]
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    expected = [doc for path in listed for doc in load_all(K8S / path)]
    assert rendered == expected
    sources = re.findall(r"^# Source: deploy/k8s/(\S+)$", result.stdout, flags=re.M)
    assert sources == listed
