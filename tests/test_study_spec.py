"""Bad specs fail before anything starts, naming the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import quick_spec, study_in_process
from study.record import results
from study.errors import SpecError
from study.spec.expand import task_config_dict
from study.spec.model import load_spec

# Every spec shipped; evidence.yaml beside them is the list `study evidence` runs, not a spec.
SPECS = sorted(p for p in (Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml") if p.name != "evidence.yaml")


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
    # In this process (the executable's refusals: tests/test_bad_input.py, test_no_hang_*).
    out = study_in_process("run", str(path), "--dir", str(root))
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

    raw = quick_spec("cuda-no-gpu", resources={"gpus": 0})
    raw["config"]["device"] = "cuda"
    with pytest.raises(SpecError, match=r"config.device='cuda' is not allowed with resources.gpus=0"):
        load_spec(raw)
    # With gpus: auto (the default) it depends on the machine: refused where it resolves to the CPU.
    from study.plan import sizing as plan

    raw.pop("resources")
    spec = load_spec(raw)
    with pytest.raises(SpecError, match=r"config.device='cuda' is not allowed here: resources.gpus='auto' gives the trials no GPU"):
        plan.make_plan(spec, plan.Machine("this machine", 2.0, 0.0, 8 << 30))
    assert plan.make_plan(spec, plan.Machine("a GPU node", 2.0, 1.0, 8 << 30, 16 << 30)).device == "gpu"


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


# --- sizes and values refused at validation (issue 18) -------------------------------------------


def _grid_spec(counts: dict[str, int]) -> dict:
    search = {field: {"type": "grid", "values": list(range(1, n + 1))} for field, n in counts.items()}
    return quick_spec("g", search=search, sampler={"type": "grid", "seed": 0}, num_samples=None)


def test_a_grid_at_the_limit_runs_and_one_point_more_per_row_is_refused():
    """The limit is on the product of the counts (100,000 = MAX_TRIALS), checked before Optuna's
    GridSampler (built at validation) enumerates the points."""
    spec = load_spec(_grid_spec({"init_scale": 1000, "spectral_radius": 100}))
    assert spec.trials == 100_000
    with pytest.raises(SpecError) as info:
        load_spec(_grid_spec({"init_scale": 1000, "spectral_radius": 100, "lr": 2}))
    assert "search is a grid of 200,000 configurations (init_scale: 1,000 x spectral_radius: 100 x lr: 2 values), " \
           "which is not allowed: at most 100,000" in str(info.value)


def _float_fields() -> list[str]:
    """Every TaskConfig field that takes a float, alone or in a list (eps, lr, mu_max, scales, ...)."""
    import typing

    from trainables.config import TaskConfig

    def takes_float(annotation) -> bool:
        return annotation is float or any(takes_float(a) for a in typing.get_args(annotation))

    return [name for name, f in TaskConfig.model_fields.items() if takes_float(f.annotation)]


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_no_float_field_of_the_training_config_takes_inf_or_nan(field, value):
    """config.eps: .inf used to pass validation; every configuration then failed in its trial."""
    from trainables.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"task": "curves", "optimizer": "adam", field: value})
    assert f"{field}={value!r} is not allowed" in str(info.value)


def test_the_float_fields_checked_include_every_numeric_setting():
    assert {"eps", "lr", "mu_max", "mu_0", "init_scale", "spectral_radius", "final_momentum", "polyak_decay",
            "adam_beta1", "adam_beta2", "rms_decay"} <= set(_float_fields())


def test_max_members_below_repeats_is_refused_and_at_repeats_allowed():
    with pytest.raises(SpecError, match=r"max_members=3 is not allowed with repeats=4: .*use max_members >= 4"):
        load_spec(quick_spec("m", repeats=4, max_members=3))
    assert load_spec(quick_spec("m", repeats=4, max_members=4)).max_members == 4


def test_several_asha_brackets_are_refused_for_fused_populations_and_allowed_with_fuse_off():
    # Fused populations share one bracket (study/run/rung_board.py); more would be ignored silently.
    spec = quick_spec("b", scheduler={"type": "asha", "brackets": 2})
    with pytest.raises(SpecError, match=r"scheduler.brackets=2 is not allowed with fuse: 'auto': .*brackets: 1, or fuse: 'off'"):
        load_spec(spec)
    assert load_spec({**spec, "fuse": "off"}).scheduler.brackets == 2


def test_a_relative_data_dir_is_taken_from_where_the_spec_is_loaded(tmp_path, monkeypatch):
    """Ray Tune runs each trial in a directory of its own, where `data_dir: data` named nothing."""
    monkeypatch.chdir(tmp_path)
    raw = {"name": "d", "task": "curves", "config": {"dataset": "original", "data_dir": "data", "updates": 8},
           "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}
    assert load_spec(raw).config["data_dir"] == str(tmp_path / "data")
    del raw["config"]["data_dir"]  # the loaders' default, ./data, from here too
    spec = load_spec(raw)
    assert spec.config["data_dir"] == str(tmp_path / "data")
    assert load_spec(spec.model_dump(mode="json")).config == spec.config  # stored so, read back the same
