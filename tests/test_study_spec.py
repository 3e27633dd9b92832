"""Bad specs fail before anything starts, naming the field, the value and what is allowed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import STUDY_BIN, quick_spec
from study import results
from study.spec import SpecError, load_spec, task_config_dict

SPECS = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"samplr": "tpe"}, ["samplr", "'tpe'", "allowed fields", "sampler"]),
        ({"sampler": "annealing"}, ["sampler.type", "'annealing'", "'tpe'", "'grid'"]),
        ({"task": "sorting"}, ["task", "'sorting'", "addition"]),
        ({"config": {"updates": 0}}, ["updates", "0", ">= 1"]),
        ({"config": {"warmup": 3}}, ["warmup", "allowed keys", "mu_max"]),
        ({"search": {"lr": {"type": "float", "low": -1.0, "high": 1.0}}}, ["lr", "-1.0", "> 0"]),
        ({"search": {"mu_max": {"type": "float", "low": 0.5, "high": 1.5}}}, ["mu_max", "1.5", "[0, 1)"]),
        ({"search": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}}, ["search.learning_rate", "allowed", "lr"]),
        ({"search": {"lr": {"type": "uniform", "low": 0.1, "high": 1}}}, ["search.lr", "'uniform'", "'float'"]),
        ({"num_samples": 0}, ["num_samples", "0", "greater than or equal to 1"]),
        ({"resources": {"cpus": 1, "gpus": -0.5}}, ["resources.gpus", "-0.5", "greater than or equal to 0"]),
        ({"scheduler": {"type": "hyperband"}}, ["scheduler.type", "'hyperband'", "'asha'"]),
        ({"metric": "accuracy"}, ["metric", "'accuracy'", "'error'"]),
        ({"mode": "minimize"}, ["mode", "'minimize'", "'min'"]),
        ({"name": "no spaces/please"}, ["name", "'no spaces/please'", "letters, digits"]),
        (
            {"search": {"lr": {"type": "grid", "values": [0.1, 0.01]}}, "sampler": "grid", "num_samples": 5},
            ["num_samples=5", "2 points"],
        ),
        ({"search": {"lr": {"type": "grid", "values": [0.1]}}}, ["search.lr.type='grid'", "sampler: grid"]),
        ({"repeats": 3, "config": {"seed": [1, 2]}}, ["repeats=3", "seed"]),
        ({"metric": "averaged_error"}, ["metric='averaged_error'", "without config.polyak_decay"]),
        ({"name": "quick\n"}, ["name='quick\\n'", "letters, digits"]),
        ({"resources": {"gpus": 2}}, ["resources.gpus=2.0", "more than one GPU per trial is not supported yet"]),
        ({"search": {"lr": {"type": "categorical", "values": [[0.1, 0.2]]}}}, ["search.lr.values[0]=[0.1, 0.2]"]),
        ({"sampler": {"type": "tpe", "options": {"n_startup_trals": 2}}}, ["sampler.options.n_startup_trals=2", "n_startup_trials"]),
        ({"num_samples": 1e30}, ["num_samples=1e+30", "at most"]),
    ],
)
def test_bad_spec_names_field_value_and_allowed(change, expected):
    raw = quick_spec("bad")
    if "config" in change:
        raw["config"] = {**raw["config"], **change.pop("config")}
    raw.update(change)
    with pytest.raises(SpecError) as info:
        load_spec(raw)
    for piece in expected:
        assert piece in str(info.value)


def test_repeats_give_each_trial_consecutive_seeds():
    spec = load_spec(quick_spec("r", repeats=4, config={"updates": 10, "seed": 7}))
    assert task_config_dict(spec, {"lr": 0.01})["seed"] == [7, 8, 9, 10]


def test_one_minus_transform_sets_the_field():
    spec = load_spec(
        quick_spec("t", search={"mu_max": {"type": "float", "low": 1e-3, "high": 0.1, "log": True, "transform": "one_minus"}})
    )
    assert task_config_dict(spec, {"one_minus_mu_max": 0.01})["mu_max"] == pytest.approx(0.99)


def test_study_run_with_a_bad_spec_exits_2_and_writes_nothing(tmp_path):
    raw = quick_spec("bad-run", config={"updates": -5})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    root = tmp_path / "studies"
    out = subprocess.run([STUDY_BIN, "run", str(path), "--dir", str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "updates=-5 is not allowed" in out.stderr
    assert not root.exists()


def test_results_db_upserts_are_idempotent(tmp_path):
    url = results.sqlite_url(tmp_path / "r.db")
    sid = results.upsert_study(
        url, name="x", task="addition", metric="error", mode="min", num_samples=1, repeats=1,
        state="running", spec_yaml="", tune_path="/t", mlflow_uri="m",
    )
    pk = results.upsert_trial(url, sid, "t1", state="running")
    assert results.upsert_trial(url, sid, "t1", state="completed") == pk
    for error in (1.0, 2.0):
        results.record_points(url, pk, 10, [{"member": 0, "seed": 0, "error": error, "status": "running"}])
    from sqlalchemy import select

    with results.session_scope(url) as s:
        rows = s.execute(select(results.MetricPointRow)).scalars().all()
        assert [(r.step, r.member, r.error) for r in rows] == [(10, 0, 2.0)]
        assert s.execute(select(results.TrialRow.state)).scalar_one() == "completed"
    with pytest.raises(results.ResultsDBError, match="CHECK constraint"):
        results.upsert_trial(url, sid, "t2", state="exploded")


def test_polyak_averaging_makes_averaged_error_a_valid_metric():
    spec = load_spec(quick_spec("avg", metric="averaged_error", config={"updates": 40, "polyak_decay": 0.99}))
    assert spec.metric == "averaged_error"


def test_yaml_spec_with_duplicate_keys_or_aliases_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(quick_spec("dup")) + "num_samples: 4\n")
    with pytest.raises(SpecError, match=r"line \d+: duplicate key 'num_samples' \(first at line \d+\)"):
        load_spec(path)
    path.write_text("name: &n dup\ndescription: *n\n")
    with pytest.raises(SpecError, match=r"line 2: the YAML alias \*n is not allowed"):
        load_spec(path)


def test_a_cuda_device_without_a_gpu_in_resources_is_refused():
    from conftest import quick_spec

    raw = quick_spec("cuda-no-gpu")
    raw["config"]["device"] = "cuda"
    with pytest.raises(SpecError, match=r"config.device='cuda' is not allowed with resources.gpus=0"):
        load_spec(raw)


def test_fuse_off_written_bare_in_yaml_means_off():
    """PyYAML reads `fuse: off` as false; the spec takes it as the word it was."""
    text = "name: f\ntask: addition\nsearch: {lr: {type: grid, values: [0.001]}}\nsampler: grid\nfuse: off\n"
    assert load_spec(text).fuse == "off"
    assert load_spec(text.replace("fuse: off", "fuse: on")).fuse == "auto"
    assert load_spec(text.replace("fuse: off\n", "")).fuse == "auto"


def test_a_sequence_too_short_for_a_searched_problem_is_refused_before_anything_runs():
    """mem20 needs T >= 21 (10 symbols, a trigger, 10 answers): found when the spec is loaded, not
    when a trial draws its first batch."""
    text = ("name: t\ntask: addition\nconfig: {seq_length: 20}\n"
            "search: {task: {type: grid, values: [addition, mem20]}}\nsampler: grid\n")
    with pytest.raises(SpecError, match=r"seq_length=20 is not allowed for task 'mem20': mem20 needs T >= 21"):
        load_spec(text)
