"""deploy/ agrees with the code: every manifest parses, one image name and tag everywhere, the
entrypoint is the console script, ports and environment variables are the ones the code uses,
services bind 127.0.0.1 by default, and credentials come only from secrets or the environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from study import locations

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"momentum-study:{PROJECT['version']}"
PORTS = {"dashboard": 8265, "gcs": 6379, "mlflow": 5000, "postgres": 5432}
# Everything study/ reads from the environment, plus Ray's and MLflow's own variables we set.
KNOWN_ENV = {
    locations.ENV_DIR, locations.ENV_RESULTS_DB, locations.ENV_MLFLOW, locations.ENV_RAY, locations.ENV_STORAGE,
    "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_BACKEND_STORE_URI", "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA",
}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|RESULTS_DB|BACKEND_STORE_URI")
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _walk(node, key=None):
    """Every (key, value) pair in a parsed document, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _k8s_containers(doc: dict) -> list[dict]:
    return [c for k, v in _walk(doc) if k == "containers" for c in v]


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS if p.parent.name == "kuberay" for d in _docs(p)]


def test_every_manifest_parses_and_the_expected_ones_exist():
    names = {str(p.relative_to(DEPLOY)) for p in MANIFESTS}
    assert {"compose.yaml", "cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
            "kuberay/services.yaml"} <= names
    for path in MANIFESTS:
        assert _docs(path), path
    kinds = {d["kind"] for _, d in _k8s_docs()}
    assert {"RayCluster", "RayJob", "Secret", "Deployment", "StatefulSet", "Service"} <= kinds


def test_one_image_name_and_tag_everywhere():
    images = set()
    for path in MANIFESTS:
        for doc in _docs(path):
            images |= {v for k, v in _walk(doc) if k == "image" and "momentum-study" in str(v)}
    assert images <= {IMAGE, IMAGE + "-cuda"}, images
    assert IMAGE in images and IMAGE + "-cuda" in images  # the GPU worker group's CUDA build
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"-t {IMAGE}" in dockerfile
    assert f"ray[default]=={__import__('ray').__version__}" in dockerfile
    for _, doc in _k8s_docs():
        if doc["kind"] in ("RayCluster", "RayJob"):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            assert spec["rayVersion"] == __import__("ray").__version__


def test_image_entrypoint_is_the_study_console_script():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["study"\]$', dockerfile, re.M)
    assert PROJECT["scripts"]["study"] == "study.cli:main"
    assert "FROM python:3.11-slim" in dockerfile and '"torch==2.13.0"' in dockerfile
    rayjob = next(d for _, d in _k8s_docs() if d["kind"] == "RayJob")
    assert rayjob["spec"]["entrypoint"].split()[:2] == ["study", "run"]
    # Commands given to the image (whose entrypoint is `study`) are study subcommands.
    from study.cli.main import COMMANDS

    compose = _docs(DEPLOY / "compose.yaml")[0]
    assert compose["services"]["mlflow"]["command"][0] in COMMANDS
    mlflow = next(d for _, d in _k8s_docs() if d["kind"] == "Deployment")
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["args"][0] in COMMANDS


def test_ports_agree():
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    published = {s: [p.rsplit(":", 2) for p in svc.get("ports", [])] for s, svc in compose.items()}
    assert {int(c) for _, _, c in published["ray-head"]} == {PORTS["dashboard"], PORTS["gcs"]}
    assert [int(c) for _, _, c in published["mlflow"]] == [PORTS["mlflow"]]
    assert [int(c) for _, _, c in published["postgres"]] == [PORTS["postgres"]]
    head_cmd = " ".join(compose["ray-head"]["command"])
    assert f"--port={PORTS['gcs']}" in head_cmd and f"--dashboard-port={PORTS['dashboard']}" in head_cmd
    assert f"ray-head:{PORTS['gcs']}" in " ".join(compose["ray-worker"]["command"])

    for _, doc in _k8s_docs():
        if doc["kind"] in ("RayCluster", "RayJob"):
            head = doc["spec"].get("rayClusterSpec", doc["spec"])["headGroupSpec"]
            assert int(head["rayStartParams"]["port"]) == PORTS["gcs"]
            assert int(head["rayStartParams"]["dashboard-port"]) == PORTS["dashboard"]
            ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
            assert ports == {PORTS["gcs"], PORTS["dashboard"]}
        if doc["kind"] == "Service":
            assert doc["spec"]["type"] == "ClusterIP"
            assert doc["spec"]["ports"][0]["port"] in (PORTS["mlflow"], PORTS["postgres"])
    launcher = _docs(DEPLOY / "cluster.yaml")[0]
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert f"--port={PORTS['gcs']}" in head_start and f"--dashboard-port={PORTS['dashboard']}" in head_start
    assert f":{PORTS['gcs']}" in " ".join(launcher["worker_start_ray_commands"])
    assert f":{PORTS['mlflow']}" in " ".join(launcher["docker"]["run_options"])


def test_environment_variables_are_the_ones_the_code_reads():
    names = set()
    for _, doc in _k8s_docs():
        for c in _k8s_containers(doc):
            names |= {e["name"] for e in c.get("env", [])}
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    for svc in compose.values():
        names |= set(svc.get("environment", {}))
    launcher = _docs(DEPLOY / "cluster.yaml")[0]
    names |= {o.split()[1].split("=")[0] for o in launcher["docker"]["run_options"] if o.startswith("-e ")}
    assert names <= KNOWN_ENV, names - KNOWN_ENV
    study_vars = {n for n in names if n.startswith("MOMENTUM_STUDY_")}
    assert study_vars == {locations.ENV_DIR, locations.ENV_RESULTS_DB, locations.ENV_STORAGE}
    assert locations.ENV_MLFLOW in names


def test_credentials_come_from_secrets_or_the_environment_only():
    for _, doc in _k8s_docs():
        for c in _k8s_containers(doc):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    secret = next(d for _, d in _k8s_docs() if d["kind"] == "Secret")
    assert set(secret["stringData"].values()) <= {"REPLACE", "admin"}

    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    for svc in compose.values():
        for name, value in svc.get("environment", {}).items():
            if "://" in str(value) and "@" in str(value):
                assert re.search(r":\$\{POSTGRES_PASSWORD[^}]*\}@", value), value
            elif SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", value), (name, value)
    assert (DEPLOY / ".gitignore").read_text().split("\n").count(".env") == 1
    assert not (DEPLOY / ".env").exists() or ".env" in (DEPLOY / ".gitignore").read_text()
    # No password-like literal anywhere in deploy/ (the example env holds placeholders only).
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != ".env":
            text = path.read_text()
            assert not re.search(r"://[^/\s:@$]+:[^/\s@${]+@", text), path


def test_services_bind_localhost_unless_configured_otherwise():
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    for name, svc in compose.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    launcher = _docs(DEPLOY / "cluster.yaml")[0]
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    # Token authentication on every Ray process, basic-auth on every MLflow server.
    for svc in ("ray-head", "ray-worker"):
        assert compose[svc]["environment"]["RAY_AUTH_MODE"] == "token"
    assert "--basic-auth" in compose["mlflow"]["command"]
    mlflow = next(d for _, d in _k8s_docs() if d["kind"] == "Deployment")
    assert "--basic-auth" in mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    for _, doc in _k8s_docs():
        for c in _k8s_containers(doc):
            if c["name"].startswith("ray-") or c["name"] == "submitter":
                env = {e["name"]: e for e in c["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env
    from study.cluster.servers import mlflow_server_command
    from study.cli.main import parser

    assert mlflow_server_command("sqlite:///x")[mlflow_server_command("sqlite:///x").index("--host") + 1] == "127.0.0.1"
    assert parser().parse_args(["mlflow-server"]).host == "127.0.0.1"


def test_gpu_worker_group_requests_nvidia_gpus():
    for _, doc in _k8s_docs():
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        groups = {g["groupName"]: g for g in doc["spec"].get("rayClusterSpec", doc["spec"])["workerGroupSpecs"]}
        assert {"cpu", "gpu"} <= set(groups)
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert gpu["limits"]["nvidia.com/gpu"] == 1 and groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
        cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in cpu["limits"]


@pytest.mark.parametrize("gpus, bundle", [(0.25, {"CPU": 1.0, "GPU": 0.25}), (0, {"CPU": 1.0}), (1, {"CPU": 1.0, "GPU": 1.0})])
def test_spec_resources_become_rays_placement(gpus, bundle):
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from conftest import quick_spec
    from study.run.tuner import trainable
    from study.spec.model import load_spec

    spec = load_spec(quick_spec("gpu-test", resources={"cpus": 1, "gpus": gpus}))
    pgf = trainable(spec)._resources
    assert isinstance(pgf, PlacementGroupFactory)
    assert {k: v for k, v in pgf.required_resources.items() if v} == bundle


def test_fractional_gpus_above_one_are_refused():
    from conftest import quick_spec
    from study.spec.model import SpecError, load_spec

    with pytest.raises(SpecError, match="gpus=1.5 is not allowed"):
        load_spec(quick_spec("gpu-test", resources={"cpus": 1, "gpus": 1.5}))
    # A trial trains its population on one device: more than one GPU is refused until
    # multi-GPU populations exist.
    with pytest.raises(SpecError, match="more than one GPU per trial"):
        load_spec(quick_spec("gpu-test", resources={"cpus": 1, "gpus": 2}))


def test_device_auto_picks_cpu_without_cuda():
    import torch

    from trainables.train import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("field, value", [
    ("config", {"db_password": "x"}),
    ("sampler", {"type": "tpe", "options": {"api_key": "k"}}),
    ("description", "logs to postgresql://study:hunter2@db/results"),
])
def test_spec_validator_rejects_credential_looking_fields(field, value):
    from conftest import quick_spec
    from study.spec.model import SpecError, load_spec

    with pytest.raises(SpecError, match="looks like a credential"):
        load_spec(quick_spec("cred-test", **{field: value}))
