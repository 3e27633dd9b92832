"""Checks of a study's locations and resources that run before anything is written.

``check(spec, loc)`` raises (exit code 2 on the command line) with a message naming the option or
field, the value and what is needed, for anything a study would otherwise fail on after its first
write: ServiceError for an unreachable results database, MLflow tracking server or Ray address;
LocationError for an unwritable study directory or Tune storage, a URL or file that is no
database, missing data files; SpecError for resources no node can provide.

``check_resources(spec, nodes)`` is the resource half on its own: a pure function of per-node
totals, so the runner can call it again once Ray is up (``node_resources(ray.nodes())``).
Every network check has a short timeout: a location that does not answer is refused in seconds
instead of hanging the study after it has written its first rows.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from study.errors import LocationError, ServiceError, SpecError
from study.locations import ENV_DIR, ENV_MLFLOW, ENV_RAY, ENV_RESULTS_DB, ENV_STORAGE, redact
from study.record import database

# Seconds to wait for each remote location to answer.
MLFLOW_TIMEOUT_S = 5.0
DATABASE_TIMEOUT_S = 5
RAY_TIMEOUT_S = 3.0
RAY_DEFAULT_PORT = 6379

DIR_OPTION = f"--dir ({ENV_DIR})"
RESULTS_OPTION = f"--results-db ({ENV_RESULTS_DB})"
MLFLOW_OPTION = f"--mlflow-uri ({ENV_MLFLOW})"
RAY_OPTION = f"--ray-address ({ENV_RAY})"
STORAGE_OPTION = f"--storage ({ENV_STORAGE})"


def check(spec: Any, loc: Any) -> None:
    """Raises LocationError, ServiceError or SpecError for a location, service or resource the
    study cannot use; writes nothing.

    Local checks come first (they are instant), then the network ones, each with a short timeout.
    With no Ray address the resources are checked against this machine here; on a cluster the
    runner checks them once Ray is up (check_resources with node_resources(ray.nodes())).
    """
    check_directory(loc.study_dir, DIR_OPTION)
    if loc.storage:
        local = _local_path(loc.storage)
        if local is not None:
            check_directory(local / loc.name / "tune", STORAGE_OPTION)
    if loc.ray_address is None:
        check_resources(spec, None)
        check_memory(spec, None)
        check_data(spec)
    check_results_db(loc.results_db)
    check_mlflow(loc.mlflow_uri)
    if loc.ray_address:
        check_ray_address(loc.ray_address)


# --- resources -----------------------------------------------------------------------------------


def local_resources() -> dict[str, dict[str, float]]:
    """This machine as the one node of a local Ray: its CPU count and CUDA devices."""
    import torch

    return {"this machine": {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}}


def node_resources(nodes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-node totals from ``ray.nodes()``: {node address: {"CPU": n, "GPU": m}}, live nodes only."""
    out: dict[str, dict[str, float]] = {}
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources") or {}
        name = node.get("NodeManagerAddress") or node.get("NodeID") or f"node {len(out)}"
        out[str(name)] = {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}
    return out


def check_resources(spec: Any, cluster_resources: dict[str, dict[str, float]] | None) -> None:
    """Refuses a trial no node can place: Ray would accept it and wait forever.

    ``cluster_resources`` maps each node to its totals ({"CPU": n, "GPU": m}); None means a local
    Ray on this machine (os.cpu_count() CPUs, torch.cuda.device_count() GPUs). A trial runs on one
    node, so what counts is the largest node, not the cluster's sum.
    """
    nodes = local_resources() if cluster_resources is None else cluster_resources
    where = "this machine" if cluster_resources is None else "the cluster"
    if not nodes:
        raise SpecError(f"resources are not available: {where} has no live node")
    from study.plan.devices import trial_gpus

    cpus = float(spec.resources.cpus)
    gpus = trial_gpus(spec.resources.gpus, sum(n.get("GPU", 0) for n in nodes.values()))
    most_cpus = max(n.get("CPU", 0) for n in nodes.values())
    most_gpus = max(n.get("GPU", 0) for n in nodes.values())
    if cpus > most_cpus:
        raise SpecError(
            f"resources.cpus={_num(cpus)} is not allowed: no node of {where} has that many CPUs "
            f"(the largest has {_num(most_cpus)}); use cpus <= {_num(most_cpus)}"
        )
    if gpus > most_gpus:
        raise SpecError(
            f"resources.gpus={_num(gpus)} is not allowed: "
            + (f"{where} has no GPU; use gpus: 0" if most_gpus == 0 else
               f"no node of {where} has that many GPUs (the largest has {_num(most_gpus)}); use gpus <= {_num(most_gpus)}")
        )
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes.values()):
        raise SpecError(
            f"resources={{cpus: {_num(cpus)}, gpus: {_num(gpus)}}} is not allowed: no single node of {where} "
            "has both; a trial runs on one node"
        )


def check_memory(spec: Any, machine: Any) -> None:
    """Refuses a study one of whose configurations cannot fit the memory its trial gets: this
    machine's (``machine`` None: the memory available now, or its GPU's where the trials get one)
    or a Ray cluster's (study.plan.sizing.ray_machine). The sizes are the tasks' own estimates; the error
    names the fields that set them (study/plan/sizing.py, check_fits)."""
    from study.plan import sizing as plan

    plan.make_plan(spec, plan.this_machine() if machine is None else machine)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- data files ----------------------------------------------------------------------------------


def check_data(spec: Any) -> None:
    """Refuses ``dataset: original`` when ``data_dir`` is not a directory holding the task's files
    on this machine (where a local Ray runs the trials): otherwise every trial would fail on it.
    Only their presence is checked; a file that is there but cannot be read fails its trials."""
    from trainables.data.autoencoder_files import DEFAULT_DATA_DIR, KNOWN_FILES, MNIST_IDX_FILES, TASK_FILES

    if spec.task not in TASK_FILES:
        return  # generated data (the RNN problems): nothing to find
    datasets = _values(spec, "dataset", "replica")
    if "original" not in datasets:
        return
    for field, data_dir in _fields(spec, "data_dir", None):
        directory = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).absolute()
        shown = f"{field}={data_dir!r}" if data_dir is not None else f"{field} (not given: {DEFAULT_DATA_DIR!r})"
        if not directory.is_dir():
            raise LocationError(
                f"{shown} is not allowed with dataset: original: no such directory on this machine; "
                f"task {spec.task} reads {_expected(spec.task)} from it"
            )
        if spec.task == "mnist":
            idx = all(any((directory / f"{stem}{gz}").is_file() for gz in (".gz", "")) for stem in MNIST_IDX_FILES.values())
            if (directory / TASK_FILES["mnist"]).is_file() or idx:
                continue
        elif (directory / TASK_FILES[spec.task]).is_file():
            continue
        raise LocationError(
            f"{shown} is not allowed with dataset: original: the directory holds no {_expected(spec.task)}, "
            f"which task {spec.task} reads; download: {KNOWN_FILES[TASK_FILES[spec.task]].url}"
        )


def _expected(task: str) -> str:
    from trainables.data.autoencoder_files import MNIST_IDX_FILES, TASK_FILES

    if task == "mnist":
        idx = " and ".join(f"{stem}[.gz]" for stem in MNIST_IDX_FILES.values())
        return f"{TASK_FILES[task]} (or the IDX files {idx})"
    return TASK_FILES[task]


def _fields(spec: Any, field: str, default: Any) -> list[tuple[str, Any]]:
    """(where, value) of a training config field: each searched choice, or the fixed value."""
    param = spec.search.get(field)
    if param is not None and hasattr(param, "values"):
        return [(f"search.{field}.values[{i}]", v) for i, v in enumerate(param.values)]
    return [(f"config.{field}", spec.config.get(field, default))]


def _values(spec: Any, field: str, default: Any) -> list[Any]:
    return [v for _, v in _fields(spec, field, default)]


# --- places on disk ------------------------------------------------------------------------------


def check_directory(path: Path, option: str) -> None:
    """The directory can be created (or is there) and written, judged without writing: the
    nearest existing ancestor must be a writable directory."""
    path = Path(path)
    if "?" in str(path):
        # SQLAlchemy and SQLite read '?' in a database URL as the start of its options, so the
        # results database would land in another file.
        raise LocationError(f"{option} {str(path)!r} is not allowed: a '?' in the path; choose a directory without one")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        if probe.is_symlink():
            raise LocationError(
                f"{option} {str(path)!r} is not usable: {str(probe)!r} is a symbolic link that leads nowhere "
                "(dangling, or a loop)"
            )
        probe = probe.parent
    if not probe.is_dir():
        raise LocationError(f"{option} {str(path)!r} is not usable: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LocationError(f"{option} {str(path)!r} is not writable: no permission to write in {str(probe)!r}")


def _local_path(location: str) -> Path | None:
    """The filesystem path of a local location (a path or file:// URI); None for s3://, gs://..."""
    if "://" in location and urlsplit(location).scheme != "file":
        return None
    from urllib.parse import unquote

    path = Path(location if "://" not in location else unquote(urlsplit(location).path))
    # os.path.realpath, not Path.resolve: Python raises RuntimeError for a symbolic link loop, and
    # check_directory says what is wrong with such a place.
    return Path(os.path.realpath(path))


# --- databases, MLflow, Ray ----------------------------------------------------------------------


def check_results_db(url: str) -> None:
    """An SQLite file whose directory can be written, or a database server that answers (connect
    and disconnect only: no table is created here)."""
    check_database(url, RESULTS_OPTION)


def check_database(url: str, option: str) -> None:
    shown = redact(url)
    try:
        path = database.sqlite_file(url)
    except Exception as exc:  # sqlalchemy ArgumentError and friends: not a URL it can read
        raise LocationError(f"{option} {shown!r} is not a database URL: {_one_line(exc)}") from None
    if database.backend(url) == "sqlite":
        if path is None:
            raise LocationError(
                f"{option} {shown!r} is not allowed: an in-memory SQLite database ends with the process that "
                "opened it, so it cannot hold a study (nothing would be left for `study resume`, `study results` "
                "or `study ui`); give a file (sqlite:////abs/path.db) or a database server"
            )
        if path.is_symlink():  # what realpath could not resolve
            raise LocationError(f"{option} {shown!r} is not usable: {str(path)!r} is a symbolic link loop")
        if path.exists() and not path.is_file():
            raise LocationError(f"{option} {shown!r} is not usable: {str(path)!r} is not a file")
        if path.is_file():
            check_sqlite_file(path, option, shown)
        check_directory(path.parent, option)
        return
    try:
        database.check_connects(url, DATABASE_TIMEOUT_S)
    except ModuleNotFoundError as exc:
        raise LocationError(
            f"{option} {shown!r} is not usable: its database driver is not installed ({exc}); "
            "install it, or name an installed one (postgresql+psycopg2://...)"
        ) from None
    except database.DatabaseUnreachable as exc:
        raise ServiceError(
            f"{option} {shown!r}: cannot connect within {DATABASE_TIMEOUT_S} s: {_one_line(exc.reason)}"
        ) from None
    except Exception as exc:  # no such dialect
        raise LocationError(f"{option} {shown!r} is not usable: {_one_line(exc)}") from None


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: Path, option: str, shown: str | None) -> None:
    """An existing file is an SQLite database (its 16-byte header) or empty (SQLite starts one in
    it): anything else would fail only once the study has started Ray and written elsewhere."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise LocationError(f"{option} {shown!r} is not usable: {str(path)!r} cannot be read ({exc.strerror})") from None
    if head and head != SQLITE_HEADER:
        raise LocationError(
            f"{option} {shown!r} is not usable: {str(path)!r} is not an SQLite database (it starts with "
            f"{head[:16]!r}); give a new file or an existing SQLite database"
        )


def check_mlflow(uri: str) -> None:
    """An embedded store (sqlite:, file: or a path) in a writable place, a database that answers,
    or a tracking server whose /health answers within MLFLOW_TIMEOUT_S."""
    shown = redact(uri)
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    if scheme in ("http", "https"):
        check_http(uri.rstrip("/") + "/health", MLFLOW_OPTION, shown)
    elif scheme == "file" or not scheme:
        local = _local_path(uri)
        if local is not None:
            check_directory(local, MLFLOW_OPTION)
    elif scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        check_database(uri, MLFLOW_OPTION)
    # databricks and other schemes: MLflow's own client decides.


def check_http(url: str, option: str, shown: str | None) -> None:
    import requests

    try:
        response = requests.get(url, timeout=MLFLOW_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ServiceError(
            f"{option} {shown!r}: the tracking server does not answer within {MLFLOW_TIMEOUT_S:g} s "
            f"({type(exc).__name__}); start it (study mlflow-server) or fix the URI"
        ) from None
    if response.status_code >= 500:
        raise ServiceError(f"{option} {shown!r}: the tracking server answers {response.status_code} on /health")


def check_ray_address(address: str) -> None:
    """A Ray address that a TCP connection reaches within RAY_TIMEOUT_S ("auto" and "local" are
    Ray's own look-ups and pass)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = target.rstrip("/").rpartition(":")
    if not sep:
        host, port_text = target, str(RAY_DEFAULT_PORT)
    host = host.strip("[]")
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise LocationError(f"{RAY_OPTION} {address!r} is not allowed: need HOST:PORT (port 1-65535)") from None
    try:
        with socket.create_connection((host, port), timeout=RAY_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ServiceError(
            f"{RAY_OPTION} {address!r}: nothing answers within {RAY_TIMEOUT_S:g} s ({exc.strerror or type(exc).__name__}); "
            "start the cluster (ray start --head) or fix the address"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
