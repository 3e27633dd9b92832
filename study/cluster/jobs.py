"""Studies as Ray jobs: ``study submit`` hands a spec to a Ray cluster's Jobs API, ``study status
--job`` and ``study logs`` follow it (docs/cluster.md).

The job ships the code it runs: ``study/`` and ``trainables/`` travel as the job's ``py_modules``
and the spec as its ``working_dir``, so the cluster's image needs the dependencies but not this
checkout. The entrypoint is ``python -m study.cli run spec.yaml``: the same code path as a local
``study run``, with the job's driver on the head node and the trials wherever Ray places them.

Secrets never travel in the entrypoint (Ray shows it in the dashboard and ``ray job list``):
locations given as options go in the runtime environment's variables, and on a real cluster the
nodes hold database and MLflow credentials in their own environment (Kubernetes secrets).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from study.errors import ServiceError
from study.locations import ENV_DIR, ENV_MLFLOW, ENV_RESULTS_DB, ENV_STORAGE, redact

ENV_JOBS_ADDRESS = "RAY_API_SERVER_ADDRESS"
ENV_AUTH_TOKEN = "RAY_AUTH_TOKEN"
ENV_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
SPEC_FILE = "spec.yaml"
# The study's own packages: everything a job needs beyond the image's installed dependencies.
PACKAGES = ("study", "trainables")
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache"]


class ClusterError(ServiceError):
    """The Jobs API could not be reached (or no address for it is known), refused us, or does not know
    the job."""


def jobs_address(address: str | None) -> str:
    """The Jobs API (dashboard) address: option, then RAY_API_SERVER_ADDRESS, then an http
    RAY_ADDRESS; a bare host:port gets http:// and the dashboard port is not guessed."""
    addr = address or os.environ.get(ENV_JOBS_ADDRESS)
    if not addr:
        ray_address = os.environ.get("RAY_ADDRESS", "")
        addr = ray_address if ray_address.startswith(("http://", "https://")) else None
    if not addr:
        raise ClusterError(
            "no Ray Jobs address: give --address http://HEAD:8265 "
            f"(or set {ENV_JOBS_ADDRESS}); docs/cluster.md starts a cluster"
        )
    return addr if "://" in addr else f"http://{addr}"


def auth_token() -> str | None:
    """The cluster's token, where Ray itself looks: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH,
    then ~/.ray/auth_token (written by `ray get-auth-token --generate` or a token-auth `ray start`)."""
    token = os.environ.get(ENV_AUTH_TOKEN)
    if token:
        return token.strip()
    path = Path(os.environ.get(ENV_AUTH_TOKEN_PATH) or Path.home() / ".ray" / "auth_token")
    if path.is_file():
        return path.read_text().strip() or None
    return None


def client(address: str | None = None) -> Any:
    from ray.job_submission import JobSubmissionClient

    addr = jobs_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(addr, headers=headers)
    except Exception as exc:  # ConnectionError, or the auth error Ray formats for 401/403
        hint = "" if token else f" (no token found: set {ENV_AUTH_TOKEN} or {ENV_AUTH_TOKEN_PATH})"
        raise ClusterError(f"cannot reach the Ray Jobs API at {redact(addr)}: {_first_line(exc)}{hint}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def package_dirs() -> list[Path]:
    import importlib

    return [Path(importlib.import_module(name).__file__).parent for name in PACKAGES]  # type: ignore[arg-type]


def job_env(
    directory: str | None = None,
    results_db: str | None = None,
    mlflow_uri: str | None = None,
    storage: str | None = None,
) -> dict[str, str]:
    """The locations given as options, as the variables study/locations.py reads on the cluster."""
    pairs = {ENV_DIR: directory, ENV_RESULTS_DB: results_db, ENV_MLFLOW: mlflow_uri, ENV_STORAGE: storage}
    env = {k: str(v) for k, v in pairs.items() if v}
    # Multi-node trials log to MLflow themselves; their driver's logs should stay readable.
    env.setdefault("RAY_DEDUP_LOGS", "0")
    # `study stop --job`: Ray's job supervisor (which runs with these variables) stops the driver
    # with SIGINT, which Tune handles as a graceful stop that records every trial, and waits up to
    # two minutes for it instead of force-killing it after 3 s.
    env.setdefault("RAY_JOB_STOP_SIGNAL", "SIGINT")
    env.setdefault("RAY_JOB_STOP_WAIT_TIME_S", "120")
    return env


# How long `submit` waits for a just-started head's job agent.
AGENT_WAIT_S = 60.0


def runtime_env(spec_dir: Path, env: dict[str, str], pip: list[str] | None = None) -> dict[str, Any]:
    runtime: dict[str, Any] = {
        "working_dir": str(spec_dir),
        "py_modules": [str(p) for p in package_dirs()],
        "excludes": list(EXCLUDES),
        "env_vars": env,
    }
    if pip:
        runtime["pip"] = pip
    return runtime


def entrypoint(python: str = "python") -> str:
    return f"{python} -m study.cli run {SPEC_FILE}"


def submit(
    spec_path: str | os.PathLike[str],
    address: str | None = None,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
    python: str = "python",
    pip: list[str] | None = None,
    entrypoint_num_cpus: float | None = None,
) -> str:
    """Validates the spec here, then submits it as a Ray job; returns the job's submission id."""
    from study.spec.model import load_spec, spec_to_yaml

    spec = load_spec(str(spec_path))  # bad input fails here, before the cluster is contacted
    jobs = client(address)
    job_id = submission_id or f"study-{spec.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="study-submit-") as tmp:
        staged = Path(tmp)
        (staged / SPEC_FILE).write_text(spec_to_yaml(spec))
        kwargs: dict[str, Any] = {}
        if entrypoint_num_cpus is not None:
            kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return jobs.submit_job(
                    entrypoint=entrypoint(python),
                    submission_id=job_id,
                    runtime_env=runtime_env(staged, env or {}, pip),
                    metadata={"study": spec.name, "submitted_by": "momentum-study"},
                    **kwargs,
                )
            except Exception as exc:
                # Right after `ray start` the head's job agent may not be up yet; Ray answers
                # "No available agent to submit job, please try again later".
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                raise ClusterError(
                    f"job submission to {redact(jobs_address(address))} failed: {_first_line(exc)}"
                ) from None


def job_info(job_id: str, address: str | None = None) -> dict[str, Any]:
    """What `study status --job` shows: state, message, study, entrypoint and times."""
    jobs = client(address)
    try:
        info = jobs.get_job_info(job_id)
    except Exception as exc:
        raise ClusterError(f"no job {job_id!r} at {redact(jobs_address(address))}: {_first_line(exc)}") from None
    return {
        "job_id": info.submission_id or job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "study": (info.metadata or {}).get("study"),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": _ms(info.start_time),
        "end_time": _ms(info.end_time),
    }


def _ms(value: int | None) -> str | None:
    if not value:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def logs(job_id: str, address: str | None = None) -> str:
    jobs = client(address)
    try:
        return jobs.get_job_logs(job_id)
    except Exception as exc:
        raise ClusterError(f"no logs for job {job_id!r}: {_first_line(exc)}") from None


def follow_logs(job_id: str, address: str | None = None) -> Iterator[str]:
    """The job's log as it grows, until the job ends (the Jobs API's websocket tail)."""
    import asyncio

    jobs = client(address)
    loop = asyncio.new_event_loop()
    tail = jobs.tail_job_logs(job_id).__aiter__()
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def wait(job_id: str, address: str | None = None, timeout_s: float = 600, poll_s: float = 2) -> str:
    """Blocks until the job is terminal (or the timeout); returns its last status."""
    import time

    jobs = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = jobs.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return str(status.value)
        time.sleep(poll_s)


def stop(job_id: str, address: str | None = None) -> bool:
    return bool(client(address).stop_job(job_id))

