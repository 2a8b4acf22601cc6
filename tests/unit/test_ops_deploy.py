"""docker-compose.yml and the Dockerfiles, checked without a Docker engine, in this process: the
Dockerfiles are parsed and every file, module, extra and setting they name (and the compose
file's services) is checked against this repository (tests/system/test_ops_deploy.py: the
Compose Specification schema, the Dockerfile's pip line, the package build).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import shlex
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomllib
from ruamel.yaml import YAML

from services.webhooks.settings import WebhookSettings
from tests.support.dockerfiles import instructions
from tests.support.import_graph import graph
from tests.support.paths import ROOT
from worker.settings import Settings


def compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    return data


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def test_compose_services() -> None:
    services = compose()["services"]
    redis_cmd = services["redis"]["command"]
    conf_mount = next(v for v in services["redis"]["volumes"] if v.startswith("./deploy/"))
    assert conf_mount.split(":")[1] in redis_cmd
    conf = (ROOT / conf_mount.split(":")[0]).read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    assert re.search(r"^user default on nopass .* -@all \+ping", conf, re.M)
    producer_url = services["producer"]["environment"]["REDIS_URL"]
    assert producer_url.startswith("redis://producer:")

    gpu = services["worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["DEVICE"] == "cpu"
    # A second model side by side: a card from the ./models volume, under its own profile.
    defects = services["worker-defects"]
    assert defects["profiles"] == ["models"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in defects["volumes"]}
    card = defects["environment"]["MODEL_CARD"]
    assert card.startswith("/models/") and mounts["/models"] == "./models"
    for worker in (gpu, cpu, defects):
        # `--scale worker=N` needs no fixed name and no published host port.
        assert "container_name" not in worker and "ports" not in worker
        # The worker ACL user of deploy/redis.conf.
        assert worker["environment"]["REDIS_URL"].startswith("redis://worker:")
        assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.health"]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "flower" in services["flower"]["command"]
    assert services["producer"]["profiles"] == ["example"]
    assert services["producer"]["command"][0] == "submit"


def test_compose_references_exist() -> None:
    services = compose()["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
    env_names = {f.name.upper() for f in fields(Settings)}
    for name in ("worker", "worker-cpu", "worker-defects"):
        assert set(services[name]["environment"]) <= env_names


def test_compose_webhooks_service() -> None:
    """The webhook dispatcher: the producer image (no torch), the worker ACL user, a secret."""
    hooks = compose()["services"]["webhooks"]
    assert hooks["entrypoint"] == ["python", "-m", "services.webhooks"]
    assert importlib.util.find_spec("services.webhooks.__main__") is not None
    assert hooks["build"]["dockerfile"] == "Dockerfile.producer"
    env = hooks["environment"]
    assert set(env) <= {f.name.upper() for f in fields(WebhookSettings)}
    assert env["REDIS_URL"].startswith("redis://worker:") and env["WEBHOOK_SECRET"]
    assert hooks["depends_on"]["redis"]["condition"] == "service_healthy"


# What a gateway reads from its environment: its own settings and the producer's Redis ones
# (core.connections).
GATEWAY_ENV = {
    "REDIS_URL",
    "REDIS_SENTINEL_MASTER",
    "REDIS_KEY_PREFIX",
    "RESULT_URL",
    "RESULT_SENTINEL_MASTER",
}


def gateway_env_names() -> set[str]:
    from services.gateway.settings import GatewaySettings

    return GATEWAY_ENV | {f.name.upper() for f in fields(GatewaySettings) if f.metadata}


def acl_hash(user: str) -> str:
    """The password hash of `user` in deploy/redis.conf."""
    conf = (ROOT / "deploy/redis.conf").read_text()
    found = re.search(rf"^user {user} on #([0-9a-f]{{64}}) ", conf, re.M)
    assert found, f"no user {user} in deploy/redis.conf"
    return found.group(1)


def test_compose_gateway_service() -> None:
    """`imgqueue serve` from the producer image with the gateway extra, as the gateway user,
    its health check on a route the app has, published on the port it listens on."""
    from cli.main import build_parser

    gateway = compose()["services"]["gateway"]
    build = gateway["build"]
    assert build["dockerfile"] == "Dockerfile.producer"
    extras = build["args"]["EXTRAS"].split(",")
    assert "gateway" in extras and "worker" not in extras  # no torch
    assert set(extras) <= set(pyproject()["project"]["optional-dependencies"])
    assert gateway["image"].startswith("imgqueue-producer:")
    ns = build_parser().parse_args(gateway["command"])  # the image's entrypoint is `imgqueue`
    assert ns.command == "serve" and ns.host == "0.0.0.0"
    published = [p.rsplit(":", 1) for p in gateway["ports"]]
    assert [int(inside) for _, inside in published] == [ns.port]
    assert all(p[0].startswith("127.0.0.1:") for p in published)  # TLS goes in front
    env = gateway["environment"]
    assert set(env) <= gateway_env_names()
    url = urlsplit(env["REDIS_URL"])
    assert url.username == "gateway" and url.hostname == "redis"
    assert hashlib.sha256((url.password or "").encode()).hexdigest() == acl_hash("gateway")
    assert int(env["UPLOAD_MAX_BYTES"]) > 0
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    check = gateway["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    compile(check[3], "healthcheck", "exec")
    assert f"http://127.0.0.1:{ns.port}/healthz" in check[3]
    from services.gateway.routes.health import router  # included by services.gateway.app

    assert "/healthz" in {getattr(route, "path", "") for route in router.routes}
    # Longer than the gateway's own grace for requests in flight after SIGTERM.
    from cli.serve import SHUTDOWN_GRACE_S

    grace = gateway["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > SHUTDOWN_GRACE_S


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.producer"])
def test_dockerfile_copies_existing_paths(dockerfile: str) -> None:
    readme = pyproject()["project"]["readme"]
    for word, rest in instructions(dockerfile):
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                # The README is the lead's (merged from main); pyproject needs it for `pip install`.
                assert (ROOT / source).exists() or source == readme, source


def copied(dockerfile: str) -> list[str]:
    """The repository paths a Dockerfile's COPY instructions take."""
    out = []
    for word, rest in instructions(dockerfile):
        if word == "COPY":
            out += shlex.split(rest)[:-1]
    return out


def module_files(name: str) -> list[str]:
    """The files importing module `name` reads: its own and its packages' __init__.py."""
    parts = name.split(".")
    files = ["/".join([*parts[:n], "__init__.py"]) for n in range(1, len(parts))]
    own = "/".join(parts)
    return [*files, f"{own}/__init__.py" if (ROOT / own).is_dir() else f"{own}.py"]


# Each image: the modules it runs (with everything they import, lazily too), and those it
# leaves out on purpose. The worker image does not run the exporter's alias (the producer image
# does); the producer image has no torch, so `imgqueue model pack|check` (the only importers of
# worker.model) answer there that they need the worker extra.
IMAGES = {
    "Dockerfile": (("worker",), ("worker.exporter",)),
    "Dockerfile.producer": (
        ("core", "producer", "services", "cli", "worker.exporter"),
        ("worker.model",),
    ),
}


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_each_image_copies_every_module_its_code_imports(dockerfile: str) -> None:
    runs, left_out = IMAGES[dockerfile]
    edges = graph()
    todo = [m for m in edges if m.startswith(runs)]
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in reached and not name.startswith(left_out):
            reached.add(name)
            todo += edges.get(name, ())
    sources = [s.rstrip("/") for s in copied(dockerfile)]
    missing = {
        path
        for name in reached
        for path in module_files(name)
        if not any(path == s or path.startswith(s + "/") for s in sources)
    }
    assert not missing, f"{dockerfile} does not copy {sorted(missing)}"


def test_worker_dockerfile_uses_the_documented_commands() -> None:
    steps = instructions("Dockerfile")
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    # The same install as scripts/bootstrap.sh, minus the dev tools.
    assert "pip install -c requirements/lock.txt '.[worker]'" in runs
    assert "'.[worker,gateway,objects,parquet,dev]'" in (ROOT / "scripts/bootstrap.sh").read_text()
    assert "worker" in pyproject()["project"]["optional-dependencies"]
    # The weights-baking step calls a real function with the build argument.
    code = re.search(r'python -c "([^"]+)"', runs)
    assert code is not None
    assert "from worker.model.weights import resolve" in code.group(1)
    assert callable(importlib.import_module("worker.model.weights").resolve)
    assert any(w == "ENV" and "TORCH_HOME=" in r for w, r in steps)
    # The worker starts the way the README and scripts/demo.sh start it.
    cmd = next(rest for word, rest in steps if word == "CMD")
    assert cmd.startswith('["celery", "-A", "worker", "worker"')
    assert "celery -A worker worker" in (ROOT / "scripts/demo.sh").read_text()
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert health.endswith('CMD ["python", "-m", "worker.health"]')
    assert importlib.util.find_spec("worker.health") is not None
    settings = {f.name.upper() for f in fields(Settings)}
    env_text = " ".join(rest for word, rest in steps if word == "ENV")
    for name in ("METRICS_PORT", "READY_FILE", "MODEL_WEIGHTS"):
        assert f"{name}=" in env_text and name in settings


def test_producer_dockerfile_installs_no_torch() -> None:
    steps = instructions("Dockerfile.producer")
    runs = [rest for word, rest in steps if word == "RUN"]
    assert "pip install -c requirements/lock.txt ." in runs  # a constraint: pins, adds nothing
    assert not any("[worker" in r or "torch" in r for r in runs)
    entry = next(rest for word, rest in steps if word == "ENTRYPOINT")
    assert entry == '["imgqueue"]' and "imgqueue" in pyproject()["project"]["scripts"]
