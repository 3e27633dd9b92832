"""`study plan` and the sizing rule it shares with `study run` (study/plan/sizing.py).

The plan is the run's: `study run` sizes its populations with the same ``make_plan`` (checked on
a real study of the session's Ray), ``resources.gpus: auto`` resolves from the Ray cluster (CPU
on the session's Ray, one GPU per trial on a Ray that declares a GPU), and `study plan` on the
shipped specs adds up, prints, and writes and starts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, STUDY_BIN, quick_spec, study_in_process
from study.plan import sizing as plan
from study.plan import rates
from study.spec.model import load_spec

GiB = 1 << 30
SHIPPED = ["table5_rnn", "table1_curves", "quick"]


def _machine(cpus=2.0, gpus=0.0, gpu_memory=None, memory=16 * GiB) -> plan.Machine:
    return plan.Machine("test", cpus, gpus, memory, gpu_memory)


def _members(p: plan.Plan) -> int:
    return sum(r.count * r.members for r in p.rows)


# --- the sizing rule, with given machines ----------------------------------------------------------


def test_on_the_cpu_populations_keep_today_s_rule():
    spec = load_spec(REPO / "search_spaces" / "table5_rnn.yaml")
    p = plan.make_plan(spec, _machine(cpus=2))
    assert (p.device, p.gpus_per_trial, p.slots) == ("cpu", 0.0, 2)
    assert p.configs_per_trial == 4  # 16 members at most on the CPU, 4 seeds each
    assert [(r.shape, r.count, r.members) for r in p.rows] == [
        (f"task={t}", 8, 16) for t in ("addition", "multiplication", "mem5", "mem20")]


@pytest.mark.parametrize("gpus, gpu_memory, configs", [
    (1, 80 * GiB, 32),  # one GPU: every configuration of a problem in one population
    (8, 80 * GiB, 16),  # 128 configurations spread over 8 GPUs
    (1, 4 * GiB, None),  # a small GPU: what fits 80% of it by the heaviest shape's estimate (mem5)
])
def test_on_a_gpu_the_device_memory_and_the_study_size_set_the_population(gpus, gpu_memory, configs):
    spec = load_spec(REPO / "search_spaces" / "table5_rnn.yaml")
    p = plan.make_plan(spec, _machine(cpus=64, gpus=gpus, gpu_memory=gpu_memory))
    assert (p.device, p.gpus_per_trial, p.slots) == ("gpu", 1.0, gpus)
    assert p.limit == int(plan.MEMORY_FRACTION * gpu_memory)
    if configs is None:
        mem5 = next(s for s in plan.shapes(spec) if s.cfg.task == "mem5").estimate
        configs = p.limit // mem5.member_bytes // spec.repeats
        assert 4 < configs < 32
        assert mem5.total(configs * spec.repeats) <= p.limit < mem5.total((configs + 1) * spec.repeats)
    assert max(r.configs for r in p.rows) == configs
    assert _members(p) == spec.trials * spec.repeats
    assert all(r.memory <= p.limit for r in p.rows)


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if p.name != "evidence.yaml"),
                         ids=lambda p: p.stem)  # evidence.yaml: the list `study evidence` runs, not a spec
def test_every_shipped_spec_runs_on_one_gpu_as_it_is(path):
    spec = load_spec(path)
    assert spec.resources.gpus == "auto"
    p = plan.make_plan(spec, _machine(cpus=16, gpus=1, gpu_memory=80 * GiB))
    assert (p.device, p.gpus_per_trial, p.slots) == ("gpu", 1.0, 1)
    assert _members(p) == spec.trials * spec.repeats
    assert all(r.memory <= p.limit for r in p.rows)
    if path.stem == "table5_rnn":  # a few large populations: one per problem
        assert [(r.count, r.members) for r in p.rows] == [(1, 128)] * 4


def test_numeric_gpus_keep_working_and_max_members_still_caps():
    spec = load_spec({**load_spec(REPO / "search_spaces" / "table5_rnn.yaml").model_dump(mode="json"),
                      "resources": {"cpus": 1, "gpus": 0.25}, "max_members": 8})
    p = plan.make_plan(spec, _machine(cpus=64, gpus=2, gpu_memory=80 * GiB))
    assert (p.device, p.gpus_per_trial, p.slots) == ("gpu", 0.25, 8)  # four trials share each GPU
    assert p.configs_per_trial == 2 and "x resources.gpus=0.25" in p.limit_what
    off = load_spec({**spec.model_dump(mode="json"), "resources": {"gpus": 0}})
    assert plan.make_plan(off, _machine(gpus=2, gpu_memory=80 * GiB)).device == "cpu"


# --- gpus: auto on real Rays -------------------------------------------------------------------------


def _asked(trainable) -> dict:
    return trainable._resources.required_resources


def test_auto_resolves_to_the_cpu_on_a_ray_without_gpus(ray_session):
    import ray

    from study.run import tuner

    spec = load_spec(quick_spec("auto-cpu"))
    assert spec.resources.gpus == "auto"
    assert ray.cluster_resources().get("GPU", 0) == 0
    assert _asked(tuner.trainable(spec)) == {"CPU": 1.0}
    assert plan.make_plan(spec, plan.ray_machine(local=True)).device == "cpu"


def test_auto_asks_for_one_gpu_per_trial_on_a_ray_that_has_gpus(tmp_path):
    """A Ray of its own (another process) that declares one GPU: the plan and the trial's
    resources, without running a trial."""
    script = textwrap.dedent(
        f"""
        import json, ray
        from study.plan import sizing as plan
        from study.run import tuner
        from study.spec.model import load_spec
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        spec = load_spec({str(REPO / "search_spaces" / "table5_rnn.yaml")!r})
        p = plan.make_plan(spec, plan.ray_machine(local=True))
        remote = plan.ray_machine(local=False)  # as on a cluster: GPU memory read on the GPU node
        print(json.dumps({{"asked": tuner.trainable(spec)._resources.required_resources, "device": p.device,
                          "gpus": p.gpus_per_trial, "per_trial": tuner.configs_per_trial(spec),
                          "plan_per_trial": p.configs_per_trial, "limit": p.limit_what,
                          "remote": [remote.gpus, remote.memory, remote.gpu_memory]}}))
        ray.shutdown()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["asked"] == {"CPU": 1.0, "GPU": 1.0}
    assert (got["device"], got["gpus"]) == ("gpu", 1.0)
    assert got["per_trial"] == got["plan_per_trial"] > 16  # past the CPU's 16 members
    if "assumed" in got["limit"]:  # a declared GPU that CUDA cannot see here
        assert "an assumed 16 GiB GPU's" in got["limit"]
    gpus, memory, gpu_memory = got["remote"]
    assert gpus == 1.0 and memory > 0
    assert gpu_memory is None or gpu_memory > 1 << 30  # None: no nvidia-smi on this machine


# --- the plan is the run -------------------------------------------------------------------------------


def test_study_run_trains_the_populations_the_plan_shows(quick_study):
    """The session's quick study (3 configurations x 2 seeds, 2 trials at once) as it ran."""
    from sqlalchemy import select

    from study.record import results
    from study.run import runner

    spec = load_spec(quick_spec("quick-test", repeats=2))
    p = plan.make_plan(spec, plan.ray_machine(local=True))
    assert runner.configs_per_trial(spec) == p.configs_per_trial == 2
    with results.session_scope(quick_study.results_db) as s:
        rows = s.execute(select(results.TrialRow.population)).scalars().all()
    ran = sorted(rows.count(pop) for pop in set(rows))
    planned = sorted(r.configs for r in p.rows for _ in range(r.count))
    assert ran == planned == [1, 2]


# --- study plan ----------------------------------------------------------------------------------------


@pytest.fixture
def empty_dir(tmp_path, monkeypatch):
    for var in ("MOMENTUM_STUDY_DIR", "MOMENTUM_STUDY_RESULTS_DB", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.parametrize("name", SHIPPED)
def test_study_plan_of_a_shipped_spec_adds_up_and_writes_nothing(empty_dir, name, monkeypatch):
    spec = load_spec(REPO / "search_spaces" / f"{name}.yaml")
    env = {**os.environ, "MOMENTUM_STUDY_DIR": str(empty_dir / "studies")}
    env.pop("RAY_ADDRESS", None)
    args = ["plan", str(REPO / "search_spaces" / f"{name}.yaml"), "--format", "json"]
    if name == SHIPPED[0]:  # the real executable once; the others in this process, the same code
        out = subprocess.run([STUDY_BIN, *args], capture_output=True, text=True, timeout=120, cwd=empty_dir, env=env)
    else:
        monkeypatch.chdir(empty_dir)
        out = study_in_process(*args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert (got["configurations"], got["repeats"]) == (spec.trials, spec.repeats)
    for p in (got["run"], got["estimates"]["cpu"], got["estimates"]["gpu"]):
        assert sum(r["count"] * r["configurations"] for r in p["populations"]) == spec.trials
        assert sum(r["count"] * r["members"] for r in p["populations"]) == spec.trials * spec.repeats
        assert p["populations_total"] == sum(r["count"] for r in p["populations"])
        assert p["wall_seconds"] > 0
    assert got["estimates"]["cpu"]["device"] == "cpu" and got["estimates"]["gpu"]["device"] == "gpu"
    # A GPU takes fewer, larger populations than the CPU, and less time.
    gpu, cpu = got["estimates"]["gpu"], got["estimates"]["cpu"]
    assert gpu["populations_total"] <= cpu["populations_total"]
    assert gpu["wall_seconds"] < cpu["wall_seconds"]
    assert list(empty_dir.iterdir()) == []  # no study directory, nothing in the working directory


def test_study_plan_prints_a_table_without_importing_ray(empty_dir):
    """Table 1 (Curves): hours on one GPU, days on a two-core machine."""
    script = ("import sys; from study.cli.main import main; rc = main(['plan', sys.argv[1]]); "
              "print('RAY IMPORTED' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", script, str(REPO / "search_spaces" / "table1_curves.yaml")],
                         capture_output=True, text=True, timeout=120, cwd=empty_dir,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join(out.stdout.split())
    assert "study table1_curves: 54 configurations x 1 repeats = 54 members" in text  # SGD once for CM and NAG
    assert "6 of the grid's 60 points are not run" in text
    assert "no ray" in text
    assert "expected wall time" in text and rates.GPU_NAME in text
    cpu_line = next(line for line in out.stdout.splitlines() if line.startswith("cpu "))
    gpu_line = next(line for line in out.stdout.splitlines() if line.startswith("gpu "))
    assert "days" in cpu_line or "weeks" in cpu_line
    assert " h " in gpu_line + " "
    assert list(empty_dir.iterdir()) == []


def test_study_plan_refuses_what_study_run_refuses(empty_dir, capsys):
    from study.cli import main

    path = empty_dir.parent / "big.yaml"
    path.write_text("name: big\ntask: addition\nconfig: {seq_length: 2000, batch_size: 2000}\n"
                    "search: {lr: {type: grid, values: [0.001]}}\nsampler: grid\nrepeats: 64\n")
    assert main(["plan", str(path)]) == 2
    assert "batch_size=2000, seq_length=2000 is not allowed" in " ".join(capsys.readouterr().err.split())
    assert list(empty_dir.iterdir()) == []


def test_rates_interpolate_in_k_between_measured_points():
    assert rates.member_updates_per_s("addition", "rnn", 1, "gpu", 100, 80) == pytest.approx(86.0)
    assert rates.member_updates_per_s("addition", "rnn", 256, "gpu", 100, 80) == pytest.approx(2600.0)
    mid = rates.member_updates_per_s("addition", "rnn", 16, "gpu", 100, 80)
    assert mid == pytest.approx(86.0 * (2600.0 / 86.0) ** 0.5)  # halfway in log K
    assert rates.member_updates_per_s("addition", "rnn", 1024, "gpu", 100, 80) == pytest.approx(2600.0)
    # Half the sequence length, twice the rate.
    assert rates.member_updates_per_s("addition", "rnn", 16, "cpu", 100, 40) == pytest.approx(2 * 113.0)
    assert rates.member_updates_per_s("curves", "autoencoder", 256, "gpu", 200, None) == pytest.approx(18_400.0)
