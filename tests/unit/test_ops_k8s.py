"""deploy/k8s: every manifest validated offline against the Kubernetes schemas
(kubernetes-validate), the KEDA ScaledObjects against the fields KEDA's CRD requires, and the
manifests held to the code they run (settings, probe paths, ACL users, the scaling signal)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from core.models import queue_for
from producer.queues import QueueStats, Snapshot
from services.exporter import per_model, queues_body
from services.webhooks.settings import WebhookSettings
from tests.support.paths import ROOT
from worker.settings import Settings

K8S = ROOT / "deploy" / "k8s"
# Oldest and newest the schemas cover that a cluster of today may run.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

# The parts of KEDA 2.x's ScaledObject CRD (keda.sh_scaledobjects.yaml, openAPIV3Schema) that
# a manifest can get wrong: required fields, types, and the string-only trigger metadata.
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_POLICY = {
    "type": "object",
    "required": ["type", "value", "periodSeconds"],
    "properties": {"type": {"type": "string"}, "value": _INT32, "periodSeconds": _INT32},
}
_RULES = {
    "type": "object",
    "properties": {
        "policies": {"type": "array", "items": _POLICY},
        "selectPolicy": {"type": "string"},
        "stabilizationWindowSeconds": _INT32,
    },
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "idleReplicaCount": _INT32,
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "properties": {"scaleUp": _RULES, "scaleDown": _RULES},
                                    "additionalProperties": False,
                                },
                            },
                        },
                    },
                },
            },
            "additionalProperties": False,
        },
    },
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in YAML(typ="safe").load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_names(c: dict[str, Any]) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


@pytest.mark.parametrize(
    "name,doc",
    [d for d in documents() if not d[1]["apiVersion"].startswith("keda.sh/")],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field fails instead of being dropped by the API server.
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    if doc["kind"] not in ("Namespace",):
        assert doc["metadata"]["namespace"] == "imgqueue", name


def test_every_file_is_a_known_kind() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in documents()}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds
    assert {k for _, k in kinds} >= {
        "Namespace",
        "Secret",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
    }


def test_scaled_objects_match_kedas_crd() -> None:
    scaled = of_kind("ScaledObject")
    deployments = of_kind("Deployment")
    assert set(scaled) == {"imgqueue-worker-gpu", "imgqueue-worker-cpu", "imgqueue-worker-defects"}
    for name, doc in scaled.items():
        jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
        spec = doc["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        for trigger in spec["triggers"]:
            # The metrics-api scaler's own required fields.
            assert trigger["type"] == "metrics-api"
            assert {"url", "valueLocation", "targetValue"} <= set(trigger["metadata"])


def test_the_scaling_signal_is_every_priority_list_of_the_exporter() -> None:
    exporter = of_kind("Service")["imgqueue-exporter"]
    port = exporter["spec"]["ports"][0]["port"]
    snap = Snapshot(
        queues=[
            QueueStats("celery", by_priority={0: 3, 5: 4, 9: 5}, in_flight=2),
            QueueStats("model.defects", by_priority={0: 3, 5: 4, 9: 5}, in_flight=2),
        ],
        dead_letters=0,
        consumers=1,
        stale_consumers=0,
    )
    registered = {"defects": {"name": "defects", "model": "defects", "queue": "model.defects"}}
    body = queues_body(snap, per_model(snap, registered))  # what GET /queues answers
    for doc in of_kind("ScaledObject").values():
        meta = doc["spec"]["triggers"][0]["metadata"]
        assert re.fullmatch(rf"http://imgqueue-exporter\.imgqueue\.svc:{port}/queues", meta["url"])
        value: Any = body
        for part in meta["valueLocation"].split("."):
            value = value[part]
        assert value == 3 + 4 + 5  # every priority list summed, not the default list alone


def test_each_model_scales_on_its_own_queue() -> None:
    """The second model's Deployment serves a card and its ScaledObject reads that model's
    depth; the others read the default model's queue."""
    deployment = of_kind("Deployment")["imgqueue-worker-defects"]
    c = container(deployment)
    card = next(e["value"] for e in c["env"] if e["name"] == "MODEL_CARD")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert card.startswith(mounts["models"] + "/defects/")
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["volumeMounts"][0]["name"] == "models"
    assert {v["name"] for v in spec["volumes"]} >= {"models"}
    by_target = {
        doc["spec"]["scaleTargetRef"]["name"]: doc["spec"]["triggers"][0]["metadata"]
        for doc in of_kind("ScaledObject").values()
    }
    assert by_target["imgqueue-worker-defects"]["valueLocation"] == "models.defects.depth"
    for name in ("imgqueue-worker-gpu", "imgqueue-worker-cpu"):
        assert by_target[name]["valueLocation"] == f"queues.{queue_for('')}.depth"


def test_worker_deployments() -> None:
    deployments = of_kind("Deployment")
    settings = {f.name.upper() for f in fields(Settings)}
    gpu, cpu = deployments["imgqueue-worker-gpu"], deployments["imgqueue-worker-cpu"]
    defects = deployments["imgqueue-worker-defects"]
    for deployment in (gpu, cpu, defects):
        c = container(deployment)
        assert c["args"][:4] == ["celery", "-A", "worker", "worker"]
        assert env_names(c) <= settings
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        metrics_port = next(e["value"] for e in c["env"] if e["name"] == "METRICS_PORT")
        assert ports["metrics"] == int(metrics_port)
        secret = next(e for e in c["env"] if e["name"] == "REDIS_URL")
        assert secret["valueFrom"]["secretKeyRef"]["key"] == "worker-url"
        # Longer than a job (INFERENCE_TIMEOUT bounds one batch) so SIGTERM drains cleanly.
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= Settings.from_env({}).inference_timeout
    gpu_c = container(gpu)
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert next(e["value"] for e in gpu_c["env"] if e["name"] == "DEVICE") == "cuda"
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})
    assert next(e["value"] for e in container(cpu)["env"] if e["name"] == "DEVICE") == "cpu"


def test_the_worker_image_bakes_the_weights_in() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN .*worker\.model\.weights import resolve", dockerfile, re.M)
    assert container(of_kind("Deployment")["imgqueue-worker-gpu"])["image"].startswith(
        "imgqueue-worker"
    )


def test_exporter_deployment() -> None:
    c = container(of_kind("Deployment")["imgqueue-exporter"])
    assert c["command"] == ["python", "-m", "services.exporter"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    allowed = {"REDIS_URL", "RESULT_URL", "QUEUES", "EXPORTER_PORT"}
    assert allowed >= env_names(c) >= {"REDIS_URL"}
    assert c["image"].startswith("imgqueue-producer")  # no torch in the exporter's image


def test_webhooks_deployment() -> None:
    deployment = of_kind("Deployment")["imgqueue-webhooks"]
    c = container(deployment)
    assert c["command"] == ["python", "-m", "services.webhooks"]
    assert c["image"].startswith("imgqueue-producer")  # no torch
    assert env_names(c) <= {f.name.upper() for f in fields(WebhookSettings)}
    assert {"REDIS_URL", "WEBHOOK_SECRET"} <= env_names(c)
    port = next(e["value"] for e in c["env"] if e["name"] == "METRICS_PORT")
    assert c["ports"][0]["containerPort"] == int(port)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # SIGTERM lets the attempts in flight end.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    timeout = next(e["value"] for e in c["env"] if e["name"] == "WEBHOOK_TIMEOUT")
    assert grace > float(timeout)


def acl_users(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("user ")]


def test_redis_statefulset_keeps_the_composes_acl_and_persistence() -> None:
    config = of_kind("ConfigMap")["imgqueue-redis"]["data"]
    conf = config["redis.conf"]
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    assert acl_users(config["users.acl"]) == acl_users((ROOT / "deploy/redis.conf").read_text())
    redis = of_kind("StatefulSet")["imgqueue-redis"]
    mounts = {m["name"]: m["mountPath"] for m in container(redis)["volumeMounts"]}
    assert re.search(rf"^dir {re.escape(mounts['data'])}$", conf, re.M)
    claims = redis["spec"]["volumeClaimTemplates"]
    assert claims[0]["metadata"]["name"] == "data"


def test_the_example_secret_names_every_key_the_deployments_read() -> None:
    secret = of_kind("Secret")["imgqueue-redis"]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name, doc in of_kind("Deployment").items():
        for e in container(doc).get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "imgqueue-redis" and ref["key"] in keys, name


def test_the_readme_lists_every_manifest() -> None:
    readme = (K8S / "README.md").read_text()
    for path in K8S.glob("*.yaml"):
        assert f"`{path.name}`" in readme, path.name


# What a gateway reads from its environment: its own settings and the producer's Redis ones.
GATEWAY_ENV = {
    "REDIS_URL",
    "REDIS_SENTINEL_MASTER",
    "REDIS_KEY_PREFIX",
    "RESULT_URL",
    "RESULT_SENTINEL_MASTER",
}


def _size(text: str) -> int:
    """A Kubernetes/nginx size (`25m`, `20Mi`, `1048576`) in bytes."""
    found = re.fullmatch(r"(\d+)\s*([kKmMgG]i?)?", text)
    assert found, text
    unit = (found.group(2) or "").lower().rstrip("i")
    return int(found.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_gateway_deployment() -> None:
    """`imgqueue serve` as the gateway Redis user, probes on routes the app has, non-root as
    the image's user, and a grace period longer than the longest request."""
    from cli.main import build_parser
    from cli.serve import SHUTDOWN_GRACE_S
    from services.gateway.routes import health
    from services.gateway.settings import GatewaySettings

    deployment = of_kind("Deployment")["imgqueue-gateway"]
    c = container(deployment)
    ns = build_parser().parse_args(c["args"])  # the image's entrypoint is `imgqueue`
    assert ns.command == "serve" and ns.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == ns.port
    paths = {
        getattr(route, "path", "") for route in health.router.routes
    }  # in services.gateway.app
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in paths
    # The image compose builds for its gateway service (Dockerfile.producer, EXTRAS=gateway).
    services = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    assert c["image"] == services["gateway"]["image"]
    gateway_env = GATEWAY_ENV | {f.name.upper() for f in fields(GatewaySettings) if f.metadata}
    assert env_names(c) <= gateway_env
    secret = next(e for e in c["env"] if e["name"] == "REDIS_URL")
    assert secret["valueFrom"]["secretKeyRef"]["key"] == "gateway-url"
    spec = deployment["spec"]["template"]["spec"]
    # The preStop pause, then the gateway's own grace for requests in flight, within the pod's.
    pause = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pause[1]) + SHUTDOWN_GRACE_S
    # Non-root, as the image's own user; nothing to escalate to, nothing written but /tmp.
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile.producer").read_text())
    assert uid is not None
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid.group(1))
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    # A multipart upload is held whole: the memory limit covers the largest one.
    from services.gateway.uploads import MAX_FILES

    upload_max = int(next(e["value"] for e in c["env"] if e["name"] == "UPLOAD_MAX_BYTES"))
    assert _size(c["resources"]["limits"]["memory"]) > MAX_FILES * upload_max


def test_gateway_secret_is_the_gateway_acl_user() -> None:
    secret = of_kind("Secret")["imgqueue-redis"]["stringData"]
    url = urlsplit(secret["gateway-url"])
    assert url.username == "gateway"
    acl = next(u for u in acl_users((ROOT / "deploy/redis.conf").read_text()) if " gateway " in u)
    digest = hashlib.sha256((url.password or "").encode()).hexdigest()
    assert f"#{digest} " in acl


def test_gateway_service_and_autoscaler() -> None:
    deployment = of_kind("Deployment")["imgqueue-gateway"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = of_kind("Service")["imgqueue-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = of_kind("HorizontalPodAutoscaler")["imgqueue-gateway"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "imgqueue-gateway")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilization is a share of the request: the container must have one.
    assert container(deployment)["resources"]["requests"]["cpu"]


def test_the_readmes_ingress_example() -> None:
    """The Ingress deploy/k8s/README.md shows: valid, aimed at the gateway's Service, its body
    limit at least one upload, and buffering off (event streams)."""
    readme = (K8S / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    ingresses = [d for b in blocks for d in YAML(typ="safe").load_all(b) if d["kind"] == "Ingress"]
    (ingress,) = ingresses
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(ingress, version, strict=True)
    service = of_kind("Service")["imgqueue-gateway"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    notes = ingress["metadata"]["annotations"]
    c = container(of_kind("Deployment")["imgqueue-gateway"])
    upload_max = int(next(e["value"] for e in c["env"] if e["name"] == "UPLOAD_MAX_BYTES"))
    assert _size(notes["nginx.ingress.kubernetes.io/proxy-body-size"]) >= upload_max
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
