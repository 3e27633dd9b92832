"""`study best NAME` (issue #21, item 7): a spec that reruns a study's best configuration with new
seeds (or longer), checked by the project's own spec validation and `study plan`.

The best is checked against the results database read directly (sqlite3): the completed
configuration, no seed diverged, with the lowest final error. Most tests read a TPE study written
through the results database's own write functions (tests/test_cli_terminal.py); one reads the
session's finished quick study, run on Ray.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest
import yaml

from conftest import STUDY_BIN, study_in_process
from test_cli_terminal import NAME, TRIALS, write_tpe_study

from study.plan.population import solo_config
from study.spec.model import load_spec
from trainables.tasks import resolved_config


@pytest.fixture(scope="module")
def tpe_study(tmp_path_factory):
    return write_tpe_study(tmp_path_factory.mktemp("studies"))


def _stored_configs(loc) -> dict[str, dict]:
    with sqlite3.connect(loc.study_dir / "results.db") as c:
        return {t: json.loads(cfg) for t, cfg in c.execute("SELECT trial_id, config FROM ms_trials")}


def _best_by_sql(loc) -> tuple[str, float]:
    with sqlite3.connect(loc.study_dir / "results.db") as c:
        return c.execute("SELECT trial_id, metric_value FROM ms_trials WHERE state = 'completed' AND "
                         "members_diverged = 0 ORDER BY metric_value LIMIT 1").fetchone()


def test_best_writes_a_valid_spec_of_the_best_configuration_with_new_seeds(tpe_study, tmp_path):
    path = tmp_path / "rerun.yaml"
    out = study_in_process("best", NAME, "--dir", str(tpe_study.root), "-o", str(path), "--repeats", "5",
                           "--updates", "60")
    assert out.returncode == 0, out.stderr
    best_id, best_error = _best_by_sql(tpe_study)
    assert best_id == "a1b2c3d4-0"  # not e5f6a7b8-1, whose one surviving seed is lower: it diverged
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0].startswith(f"# Written by `study best {NAME}`")
    assert any(f"Best configuration: {best_id}" in line for line in header), header
    assert any(f"error: {best_error:.6g}, the mean over its 2 seeds" in line for line in header), header

    spec = load_spec(path)  # the project's own validation, from the file
    assert spec.name == f"{NAME}_best" and spec.repeats == 5 and spec.trials == 1
    assert spec.sampler.type == "grid" and spec.scheduler.type == "fifo"
    assert spec.config["seed"] == 2 and spec.config["updates"] == 60  # the study used seeds 0 and 1
    x = next(x for tid, _, x, *_ in TRIALS if tid == best_id)
    assert {k: (p.type, p.values) for k, p in spec.search.items()} == {
        "mu_max": ("categorical", [1.0 - x]), "spectral_radius": ("categorical", [1.1])}
    # It trains the best configuration: the stored training config, but for the seeds and the length.
    rerun = resolved_config(solo_config(spec, {"mu_max": 1.0 - x, "spectral_radius": 1.1}))
    stored = _stored_configs(tpe_study)[best_id]
    assert rerun["seed"] == [2, 3, 4, 5, 6] and stored["seed"] == [0, 1]
    assert {k: v for k, v in rerun.items() if k not in ("seed", "updates")} == \
        {k: v for k, v in stored.items() if k not in ("seed", "updates")}

    planned = study_in_process("plan", str(path), "--format", "json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert (plan["name"], plan["configurations"], plan["repeats"], plan["members"]) == (f"{NAME}_best", 1, 5, 5)


def test_best_refuses_to_overwrite_without_force_and_writes_name_best_yaml_here(tpe_study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(tpe_study.root)
    assert study_in_process("best", NAME, "--dir", root).returncode == 0
    path = tmp_path / f"{NAME}_best.yaml"
    first = path.read_text()
    assert load_spec(path).repeats == 10 and load_spec(path).config["updates"] == 40  # the defaults
    path.write_text(first + "# edited\n")
    again = study_in_process("best", NAME, "--dir", root, "--repeats", "3")
    assert again.returncode == 2
    assert again.stderr.strip() == (f"error: {str(path)!r} exists: `study best` does not overwrite a file without "
                                    "--force; give another path with -o")
    assert path.read_text().endswith("# edited\n")
    forced = study_in_process("best", NAME, "--dir", root, "--repeats", "3", "--force")
    assert forced.returncode == 0 and load_spec(path).repeats == 3
    for bad in (["--repeats", "0"], ["--updates", "-5"]):
        refused = study_in_process("best", NAME, "--dir", root, "--force", *bad)
        assert refused.returncode == 2 and "need an integer >= 1" in refused.stderr
    too_many = study_in_process("best", NAME, "--dir", root, "--force", "--repeats", "5000")
    assert too_many.returncode == 2 and "repeats=5000 is not allowed: at most 1,024" in too_many.stderr
    assert load_spec(path).repeats == 3  # a refused spec is never written


@pytest.mark.parametrize("states, why", [
    (("pruned",), "no configuration has finished (completed) yet"),
    (("diverged", "pruned"), "every finished configuration diverged"),
])
def test_best_of_a_study_without_a_finished_configuration_is_refused(tmp_path, states, why):
    trials = [(f"00000000-{i}", state, 0.01, 1.0, (0.5, None if state == "diverged" else 0.6))
              for i, state in enumerate(states)]
    loc = write_tpe_study(tmp_path / "studies", "unfinished", trials)
    out = study_in_process("best", "unfinished", "--dir", str(loc.root), "-o", str(tmp_path / "x.yaml"))
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"error: study 'unfinished' has no configuration to rerun: {why} "
                                         f"({len(states)} of {len(states)} ended")
    assert not (tmp_path / "x.yaml").exists()


def test_best_of_a_study_run_on_ray_through_the_executable(quick_study, tmp_path):
    path = tmp_path / "quick_best.yaml"
    out = subprocess.run([STUDY_BIN, "best", quick_study.name, "--dir", str(quick_study.root), "-o", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    best_id, _ = _best_by_sql(quick_study)
    spec = load_spec(yaml.safe_load(path.read_text()))
    assert spec.search["lr"].values == [_stored_configs(quick_study)[best_id]["lr"]]
    assert spec.repeats == 10 and spec.config["seed"] == 2 and spec.name == f"{quick_study.name}_best"
    assert study_in_process("plan", str(path)).returncode == 0
    assert best_id in out.stdout and os.fspath(path) in out.stdout


def test_best_carries_the_studys_target_for_the_rerun_task(tmp_path):
    """A per-task time-to-target (docs/study-specs.md) is measured again on the rerun: the rerun
    spec takes the entry of the task it runs."""
    loc = write_tpe_study(tmp_path / "studies")
    with sqlite3.connect(loc.study_dir / "results.db") as c:
        (text,) = c.execute("SELECT spec_yaml FROM ms_studies").fetchone()
        spec = yaml.safe_load(text)
        spec["target"] = {"addition": 0.25}
        c.execute("UPDATE ms_studies SET spec_yaml = ?", (yaml.safe_dump(spec),))
    path = tmp_path / "rerun.yaml"
    out = study_in_process("best", NAME, "--dir", str(loc.root), "-o", str(path))
    assert out.returncode == 0, out.stderr
    assert load_spec(path).target == 0.25
