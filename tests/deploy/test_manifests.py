"""deploy/k8s renders, validates offline against the Kubernetes schemas, and keeps its promises.

Each overlay is rendered by our small kustomize renderer (cross-checked against `kubectl kustomize`
where kubectl exists). Built-in kinds are validated strictly by kubernetes-validate (bundled
schemas, no network); KEDA's ScaledObject and CloudNativePG's Cluster get structural checks of the
fields we use. Then the invariants: probes, resources, grace periods, non-root, settings provided,
commands that exist, Services that reach a port, autoscalers that point at something.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import msgspec
import pytest
import yaml

from cairn_common.settings import SettingsError, load_settings
from cairn_common.topology import Topology
from tests.deploy.kustomize import identity
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    Rendered,
    SecretSource,
    documented_secrets,
    effective_env,
    module_command,
    quantity,
    render_overlay,
    workload_containers,
)

# Oldest Kubernetes we support, and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ScaledObject", "Cluster", "Issuer", "Certificate"}
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# The settings struct each `python -m MODULE` loads at start.
SETTINGS = {
    "cairn_ingest": "cairn_ingest.settings:Settings",
    "cairn_matcher": "cairn_matcher.settings:Settings",
    "cairn_scheduler": "cairn_scheduler.settings:Settings",
    "cairn_dispatcher": "cairn_dispatcher.settings:Settings",
    "cairn_common.migrate": "cairn_common.migrate:MigrateSettings",
}
# Variables the manifests already set for settings being added on other branches (the ingest
# admin listener and tracking secret, replica ids, the dispatcher's tracking links). A name listed
# here that is now a real field is fine; one that is neither is a typo the test reports.
ANNOUNCED = {
    "cairn_ingest": {
        "CAIRN_ADMIN_HOST",
        "CAIRN_ADMIN_PORT",
        "CAIRN_ADMIN_TOKEN",
        "CAIRN_TRACKING_SECRET",
    },
    "cairn_matcher": {"CAIRN_REPLICA_ID"},
    "cairn_scheduler": {"CAIRN_REPLICA_ID"},
    "cairn_dispatcher": {"CAIRN_TRACKING_SECRET", "CAIRN_TRACKING_BASE_URL"},
}
# What runtime.py spends after the work's grace period: NATS drain (5 s) + pool close (5 s).
CLOSE_SECONDS = 10


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render_overlay(request.param)


@pytest.fixture(scope="module")
def secrets_in_docs() -> dict[str, set[str]]:
    return documented_secrets(DEPLOY_DOC)


def settings_class(module: str) -> type[msgspec.Struct]:
    module_name, _, attr = SETTINGS[module].partition(":")
    cls: type[msgspec.Struct] = getattr(importlib.import_module(module_name), attr)
    return cls


def cairn_env(rendered: Rendered, container: dict[str, Any], docs: dict[str, set[str]]) -> Any:
    return effective_env(rendered, container, SecretSource(rendered, docs))


# ---- rendering and schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the renderer is checked against it where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = {identity(o): o for o in yaml.safe_load_all(out) if o}
    ours = {identity(o): o for o in render_overlay(overlay).objects}

    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{overlay}: {key} differs from kubectl kustomize"


def test_every_builtin_object_validates_against_the_kubernetes_schemas(rendered: Rendered) -> None:
    problems = []
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.append(f"{identity(obj)} @ {version}: {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_no_object_is_of_a_kind_we_cannot_validate(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)  # SchemaNotFound fails


SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "fallback",
    "triggers",
}
NATS_JETSTREAM_METADATA = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}


def test_scaled_objects_have_the_shape_keda_accepts(rendered: Rendered) -> None:
    for so in rendered.of_kind("ScaledObject"):
        where = f"{rendered.overlay}: ScaledObject {so['metadata']['name']}"
        assert so["apiVersion"] == "keda.sh/v1alpha1", where
        spec = so["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, f"{where}: unknown {set(spec) - SCALED_OBJECT_SPEC}"
        for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
            assert isinstance(spec.get(field, 0), int), f"{where}: {field} must be an integer"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], where
        assert spec["triggers"], f"{where}: no triggers"
        for trigger in spec["triggers"]:
            assert set(trigger) <= {"type", "metadata", "metricType", "name"}, where
            meta = trigger["metadata"]
            # KEDA's metadata is map[string]string: a number here fails the CRD's validation.
            assert all(isinstance(v, str) for v in meta.values()), f"{where}: {meta}"
            if trigger["type"] == "cpu":
                assert trigger["metricType"] == "Utilization", where
                assert set(meta) == {"value"}, where
                assert 0 < int(meta["value"]) <= 100, where
                continue
            assert trigger["type"] == "nats-jetstream", where
            assert set(meta) <= NATS_JETSTREAM_METADATA, f"{where}: unknown metadata {meta}"
            missing = {"natsServerMonitoringEndpoint", "account", "stream", "consumer"} - set(meta)
            assert not missing, f"{where}: missing {missing}"
            assert int(meta["lagThreshold"]) > 0, where


CLUSTER_SPEC = {
    "instances",
    "imageName",
    "bootstrap",
    "storage",
    "walStorage",
    "postgresql",
    "resources",
    "affinity",
    "minSyncReplicas",
    "maxSyncReplicas",
    "monitoring",
    "backup",
    "primaryUpdateStrategy",
}


def test_the_postgres_cluster_has_the_shape_cloudnative_pg_accepts(rendered: Rendered) -> None:
    (cluster,) = rendered.of_kind("Cluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert set(spec) <= CLUSTER_SPEC, f"unknown fields {set(spec) - CLUSTER_SPEC}"
    assert isinstance(spec["instances"], int)
    assert spec["instances"] >= 1
    assert quantity(spec["storage"]["size"]) > 0
    assert spec["bootstrap"]["initdb"]["database"] == "cairn"
    assert 0 <= spec.get("maxSyncReplicas", 0) < spec["instances"]
    assert all(
        isinstance(v, str) for v in spec.get("postgresql", {}).get("parameters", {}).values()
    )
    if "affinity" in spec:
        assert spec["affinity"].get("podAntiAffinityType", "preferred") in {"preferred", "required"}


CERTIFICATE_SPEC = {
    "secretName", "commonName", "dnsNames", "duration", "renewBefore", "isCA", "usages",
    "privateKey", "issuerRef",
}  # fmt: skip


def test_cert_manager_objects_have_the_shape_cert_manager_accepts(rendered: Rendered) -> None:
    issuers = {i["metadata"]["name"]: i for i in rendered.of_kind("Issuer")}
    for issuer in issuers.values():
        assert issuer["apiVersion"] == "cert-manager.io/v1"
        (how,) = issuer["spec"]
        assert how in {"selfSigned", "ca"}
        if how == "ca":  # a CA issuer signs with a Secret some Certificate writes
            secret = issuer["spec"]["ca"]["secretName"]
            assert any(
                c["spec"]["secretName"] == secret and c["spec"].get("isCA")
                for c in rendered.of_kind("Certificate")
            )
    for cert in rendered.of_kind("Certificate"):
        spec = cert["spec"]
        assert cert["apiVersion"] == "cert-manager.io/v1"
        assert set(spec) <= CERTIFICATE_SPEC, f"unknown fields {set(spec) - CERTIFICATE_SPEC}"
        assert spec["issuerRef"]["kind"] == "Issuer"
        assert spec["issuerRef"]["name"] in issuers
        assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
        assert spec.get("commonName") or spec.get("dnsNames")


def test_prod_reaches_nats_over_tls_trusting_only_its_ca() -> None:
    """Passwords never cross the network in clear text: prod's services connect to tls:// and
    verify the servers against the CA cert-manager issued their certificate from; the chart
    serves that certificate (nats-tls-values.yaml); dev stays plain."""
    prod = render_overlay("prod")
    config = _shared_config(prod)
    assert config["CAIRN_NATS_URL"].startswith("tls://")
    assert _shared_config(render_overlay("dev"))["CAIRN_NATS_URL"].startswith("nats://")
    server = prod.find("Certificate", "nats-server-tls")
    assert server is not None
    host = config["CAIRN_NATS_URL"].removeprefix("tls://").rsplit(":", 1)[0]
    assert host in server["spec"]["dnsNames"]
    values = yaml.safe_load((K8S / "nats-tls-values.yaml").read_text())["config"]
    assert values["nats"]["tls"] == {"enabled": True, "secretName": server["spec"]["secretName"]}
    assert values["cluster"]["tls"]["secretName"] == server["spec"]["secretName"]
    for dep in prod.cairn_deployments():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        name = dep["metadata"]["name"]
        (volume,) = [
            n for n, path in mounts.items() if config["CAIRN_NATS_CA_FILE"].startswith(path)
        ]
        secret = volumes[volume]["secret"]
        assert secret["secretName"] == server["spec"]["secretName"], name
        # The CA only: the servers' private key stays out of Cairn's pods.
        assert secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}], name
        assert config["CAIRN_NATS_CA_FILE"] == f"{mounts[volume]}/ca.crt", name
    assert "nats-tls-values.yaml" in DEPLOY_DOC.read_text()


# ---- the services' promises ----------------------------------------------------------------------


def test_every_deployment_has_liveness_and_readiness_on_the_health_port(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    for dep in rendered.cairn_deployments():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            where = f"{rendered.overlay}: {dep['metadata']['name']}/{c['name']}"
            env = cairn_env(rendered, c, secrets_in_docs)
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = c[probe]["httpGet"]["port"]
                number = ports[port] if isinstance(port, str) else port
                assert str(number) == env["CAIRN_HEALTH_PORT"], f"{where}: {probe} port"
            # The kubelet probes the pod's IP: a health server on 127.0.0.1 would never answer.
            assert env["CAIRN_HEALTH_HOST"] == "0.0.0.0", where


def test_ingest_listens_where_its_services_send_traffic(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    dep = rendered.find("Deployment", "cairn-ingest")
    assert dep is not None
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = cairn_env(rendered, c, secrets_in_docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (env["CAIRN_HTTP_HOST"], env["CAIRN_HTTP_PORT"]) == ("0.0.0.0", str(ports["http"]))
    assert (env["CAIRN_ADMIN_HOST"], env["CAIRN_ADMIN_PORT"]) == ("0.0.0.0", str(ports["admin"]))


def test_every_container_has_cpu_and_memory_requests_within_limits(rendered: Rendered) -> None:
    for obj in rendered.workloads():
        for c in workload_containers(obj):
            where = f"{rendered.overlay}: {obj['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            for kind in ("cpu", "memory"):
                request = res.get("requests", {}).get(kind)
                limit = res.get("limits", {}).get(kind)
                assert request is not None, f"{where}: no {kind} request"
                assert limit is not None, f"{where}: no {kind} limit"
                assert quantity(request) <= quantity(limit), f"{where}: {kind} request > limit"


def test_grace_period_outlasts_the_drain(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    for dep in rendered.cairn_deployments():
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            env = cairn_env(rendered, c, secrets_in_docs)
            module = module_command(c)
            assert module is not None
            settings: Any = load_settings(settings_class(module), env)
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
            needed = pause + settings.shutdown_grace_seconds + CLOSE_SECONDS
            assert pod["terminationGracePeriodSeconds"] > needed, (
                f"{rendered.overlay}: {dep['metadata']['name']} is killed after "
                f"{pod['terminationGracePeriodSeconds']}s but needs {needed:g}s to drain"
            )


def test_every_pod_runs_as_non_root_without_privileges(rendered: Rendered) -> None:
    for obj in rendered.workloads():
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for c in workload_containers(obj):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_every_required_setting_is_provided_and_parses(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    checked = set()
    for obj in rendered.workloads():
        for c in workload_containers(obj):
            module = module_command(c)
            if module is None or not module.startswith("cairn"):
                continue
            env = cairn_env(rendered, c, secrets_in_docs)
            cls = settings_class(module)
            try:
                load_settings(cls, env)
            except SettingsError as exc:
                pytest.fail(f"{rendered.overlay}: {obj['metadata']['name']}/{c['name']}: {exc}")
            checked.add(module)
    assert checked == set(SETTINGS), "a service or the migrations Job is missing"


def _known_variables(module: str) -> set[str]:
    fields = msgspec.structs.fields(settings_class(module))
    return {f"CAIRN_{f.name.upper()}" for f in fields} | ANNOUNCED.get(module, set())


def test_every_cairn_variable_on_a_container_is_a_setting_of_its_service(
    rendered: Rendered,
) -> None:
    for obj in rendered.workloads():
        for c in workload_containers(obj):
            module = module_command(c)
            if module is None or not module.startswith("cairn"):
                continue
            own = {v["name"] for v in c.get("env", []) if v["name"].startswith("CAIRN_")}
            typos = own - _known_variables(module)
            assert not typos, f"{rendered.overlay}: {obj['metadata']['name']}: unknown {typos}"


def test_every_shared_cairn_variable_is_a_setting_of_some_service(rendered: Rendered) -> None:
    known = set().union(*(_known_variables(m) for m in SETTINGS))
    shared = {k for k in _shared_config(rendered) if k.startswith("CAIRN_")}
    assert not shared - known, f"{rendered.overlay}: cairn-config sets unknown {shared - known}"


def _shared_config(rendered: Rendered) -> dict[str, str]:
    cm = rendered.find("ConfigMap", "cairn-config")
    assert cm is not None
    return dict(cm["data"])


def test_every_container_command_names_a_module_in_the_workspace(rendered: Rendered) -> None:
    modules = set()
    for obj in rendered.workloads():
        for c in workload_containers(obj):
            if not c["image"].split("/")[-1].startswith("cairn"):
                continue
            module = module_command(c)
            assert module is not None, f"{c['name']}: command {c.get('command')} is not python -m"
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"{c['name']}: no module {module}"
            if spec.submodule_search_locations is not None:
                assert importlib.util.find_spec(f"{module}.__main__"), f"{module} has no __main__"
            modules.add(module)
    assert {"cairn_ingest", "cairn_matcher", "cairn_scheduler", "cairn_dispatcher"} <= modules


def test_all_cairn_containers_run_one_image(rendered: Rendered) -> None:
    images = {
        c["image"]
        for obj in rendered.workloads()
        for c in workload_containers(obj)
        if module_command(c) and str(module_command(c)).startswith("cairn")
    }
    assert len(images) == 1, images
    (image,) = images
    assert ":" in image, f"{image}: pin a tag; an untagged image means :latest"


def test_each_service_port_reaches_a_named_container_port(rendered: Rendered) -> None:
    for svc in rendered.of_kind("Service"):
        selector = svc["spec"]["selector"]
        pods = [
            o
            for o in rendered.workloads()
            if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"{rendered.overlay}: Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            names = {
                p.get("name")
                for o in pods
                for c in workload_containers(o)
                for p in c.get("ports", [])
            }
            assert port["targetPort"] in names, f"{svc['metadata']['name']}: {port['targetPort']}"


def test_every_deployment_has_exactly_one_disruption_budget(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for dep in rendered.cairn_deployments():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{rendered.overlay}: {dep['metadata']['name']}: {len(covering)}"


def _autoscalers(rendered: Rendered) -> dict[str, tuple[int, int]]:
    """Deployment name -> (min, max) replicas, for every autoscaled Deployment."""
    found = {}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        found[spec["scaleTargetRef"]["name"]] = (spec.get("minReplicas", 1), spec["maxReplicas"])
    for so in rendered.of_kind("ScaledObject"):
        spec = so["spec"]
        found[spec["scaleTargetRef"]["name"]] = (spec["minReplicaCount"], spec["maxReplicaCount"])
    return found


def test_autoscalers_target_deployments_that_leave_replicas_to_them(rendered: Rendered) -> None:
    scaled = _autoscalers(rendered)
    assert set(scaled) == {"cairn-ingest", "cairn-matcher", "cairn-dispatcher"}
    for name in scaled:
        dep = rendered.find("Deployment", name)
        assert dep is not None, f"autoscaler targets a missing Deployment {name}"
        # With spec.replicas set, every `kubectl apply` would reset the autoscaler's choice.
        assert "replicas" not in dep["spec"], f"{name}: remove spec.replicas"


def test_keda_reads_the_lag_of_the_consumers_the_services_use(rendered: Rendered) -> None:
    topology = Topology(_shared_config(rendered)["CAIRN_NAMESPACE"])
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    # Only the dispatcher's consumer is one durable that every replica pulls from; the matcher's
    # per-partition, per-epoch consumers have no single lag to read (see autoscaling.yaml).
    expected = {"cairn-dispatcher": (topology.deliveries_stream, topology.dispatcher_consumer)}
    lag_triggers = [
        (so, t)
        for so in rendered.of_kind("ScaledObject")
        for t in so["spec"]["triggers"]
        if t["type"] == "nats-jetstream"
    ]
    assert {so["spec"]["scaleTargetRef"]["name"] for so, _ in lag_triggers} == set(expected)
    for so, trigger in lag_triggers:
        meta = trigger["metadata"]
        target = so["spec"]["scaleTargetRef"]["name"]
        assert (meta["stream"], meta["consumer"]) == expected[target]
        host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert int(port) == values["config"]["monitor"]["port"]
        # KEDA runs in its own namespace: the host must name ours.
        assert host == f"nats-headless.{so['metadata']['namespace']}.svc.cluster.local"
    # More matcher replicas than partitions would sit idle.
    partitions = int(_shared_config(rendered)["CAIRN_PARTITIONS"])
    assert _autoscalers(rendered)["cairn-matcher"][1] <= partitions


def test_nats_values_give_a_three_node_jetstream_cluster_on_disk() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["monitor"]["enabled"] is True
    assert config["merge"]["jetstream"]["sync_interval"] == "always"


def test_streams_are_replicated_on_every_node_of_the_prod_nats_cluster() -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    prod = _shared_config(render_overlay("prod"))
    dev = _shared_config(render_overlay("dev"))
    assert int(prod["CAIRN_STREAM_REPLICAS"]) == values["config"]["cluster"]["replicas"]
    # dev's single NATS server (docs/deploy.md) would refuse replicated streams.
    assert dev["CAIRN_STREAM_REPLICAS"] == "1"
    assert "config.cluster.enabled=false" in DEPLOY_DOC.read_text()


def test_services_reach_nats_and_postgres_by_the_names_their_charts_give(
    rendered: Rendered,
) -> None:
    config = _shared_config(rendered)
    assert re.fullmatch(r"(nats|tls)://nats(\.[a-z0-9-]+)*:4222", config["CAIRN_NATS_URL"])
    (cluster,) = rendered.of_kind("Cluster")
    assert cluster["metadata"]["name"] == "cairn-pg"  # its Secret cairn-pg-app feeds the URL


def test_services_migrate_through_the_job_only(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    (job,) = rendered.of_kind("Job")
    assert [module_command(c) for c in workload_containers(job)] == ["cairn_common.migrate"]
    for dep in rendered.cairn_deployments():
        pod = dep["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["command"][-1] == "--wait"
        for c in pod["containers"]:
            env = cairn_env(rendered, c, secrets_in_docs)
            assert env["CAIRN_MIGRATE_ON_START"] == "false"


def test_secrets_created_outside_the_manifests_are_created_in_the_docs(
    secrets_in_docs: dict[str, set[str]],
) -> None:
    # prod renders no Secret, so cairn-secrets must come from the walk-through.
    prod = render_overlay("prod")
    assert not prod.of_kind("Secret"), "never commit a Secret to the prod overlay"
    assert {"admin-token", "tracking-secret"} <= secrets_in_docs.get("cairn-secrets", set())


# ---- what each overlay is for --------------------------------------------------------------------


def test_dev_runs_one_replica_of_everything_and_traces_to_jaeger(
    secrets_in_docs: dict[str, set[str]],
) -> None:
    dev = render_overlay("dev")
    scaled = _autoscalers(dev)
    for dep in dev.cairn_deployments():
        name = dep["metadata"]["name"]
        replicas = scaled.get(name, (dep["spec"].get("replicas", 1),) * 2)
        assert replicas == (1, 1), f"{name}: {replicas}"
    jaeger = dev.find("Service", "jaeger")
    assert jaeger is not None
    otlp_http = next(p["port"] for p in jaeger["spec"]["ports"] if p["name"] == "otlp-http")
    for dep in dev.cairn_deployments():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        env = cairn_env(dev, c, secrets_in_docs)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://jaeger:{otlp_http}"


def test_prod_keeps_two_replicas_apart_and_postgres_replicated() -> None:
    prod = render_overlay("prod")
    scaled = _autoscalers(prod)
    for dep in prod.cairn_deployments():
        name = dep["metadata"]["name"]
        minimum = scaled[name][0] if name in scaled else dep["spec"]["replicas"]
        assert minimum >= 2, f"{name}: a single replica is a single point of failure"
        affinity = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert affinity, name
    (cluster,) = prod.of_kind("Cluster")
    assert cluster["spec"]["instances"] >= 3
    assert cluster["spec"]["minSyncReplicas"] >= 1
    (image,) = {c["image"] for d in prod.cairn_deployments() for c in workload_containers(d)}
    assert not image.startswith("cairn:"), "prod must pull from a registry"


def test_dockerfile_builds_a_non_root_image_from_the_lock_file() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) >= 2, "build and runtime stages"
    assert "uv sync --frozen --no-dev" in text
    final = stages[-1]
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    uid = users[-1].split(":")[0]
    # The manifests' runAsUser must be the image's user, or files owned by it are unreadable.
    for overlay in OVERLAYS:
        for obj in render_overlay(overlay).workloads():
            if any(str(module_command(c)).startswith("cairn") for c in workload_containers(obj)):
                assert str(obj["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid


def test_the_admin_port_is_open_only_inside_the_namespace(rendered: Rendered) -> None:
    (policy,) = rendered.of_kind("NetworkPolicy")
    dep = rendered.find("Deployment", "cairn-ingest")
    assert dep is not None
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    open_to_all = {
        p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]
    }
    admin_from = [
        rule["from"] for rule in policy["spec"]["ingress"] if {"port": "admin"} in rule["ports"]
    ]
    assert open_to_all == {"http", "health"}
    assert admin_from == [[{"podSelector": {}}]]


# Connections PostgreSQL keeps for superusers, CloudNativePG's own and the standbys' streaming.
RESERVED_CONNECTIONS = 20


def test_postgres_accepts_every_pool_at_full_scale(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    scaled = _autoscalers(rendered)
    demand = RESERVED_CONNECTIONS
    for dep in rendered.cairn_deployments():
        name = dep["metadata"]["name"]
        replicas = scaled[name][1] if name in scaled else dep["spec"]["replicas"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        module = module_command(c)
        assert module is not None
        settings: Any = load_settings(
            settings_class(module), cairn_env(rendered, c, secrets_in_docs)
        )
        demand += replicas * settings.db_pool_max
    (cluster,) = rendered.of_kind("Cluster")
    limit = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    assert demand <= limit, (
        f"{rendered.overlay}: pools may open {demand} connections, limit {limit}"
    )


def test_nats_runs_with_the_users_the_topology_derives_and_each_service_is_one(
    rendered: Rendered, secrets_in_docs: dict[str, set[str]]
) -> None:
    from cairn_cli.local_system import nats_users_values
    from cairn_common import nats_auth

    namespace = _shared_config(rendered)["CAIRN_NAMESPACE"]
    committed = (K8S / "nats-users-values.yaml").read_text()
    assert committed == nats_users_values(namespace), "regenerate: uv run cairn nats-users"
    values = yaml.safe_load(committed)
    users = {u["user"] for u in values["config"]["merge"]["authorization"]["users"]}
    assert users == {nats_auth.user_name(namespace, role) for role in nats_auth.ROLES}
    secret = {v["valueFrom"]["secretKeyRef"]["name"] for v in values["container"]["env"].values()}
    assert secret == {nats_auth.NATS_USERS_SECRET}
    assert set(nats_auth.ROLES) <= secrets_in_docs.get(nats_auth.NATS_USERS_SECRET, set())
    assert "nats-users-values.yaml" in DEPLOY_DOC.read_text()
    for dep in rendered.cairn_deployments():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        role = module_command(container).removeprefix("cairn_")  # type: ignore[union-attr]
        env = cairn_env(rendered, container, secrets_in_docs)
        assert env["CAIRN_NATS_USER"] == nats_auth.user_name(namespace, role)
        assert env["CAIRN_NATS_PASSWORD"]
