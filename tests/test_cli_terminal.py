"""What the command line shows on a terminal and how it refuses (issue #21, item 6): tables that
shorten values, never words, at 80 columns and on a wide terminal; one name per searched parameter
(mu_max, not the sampler's one_minus_mu_max); a studies directory that is not there; an unknown
study's error listing the studies there are.

The TPE study here is written without Ray, through the results database's own write functions
(study/record/results.py) with configs resolved as the recorder resolves them, so every test reads a
real SQLite database in a few seconds. The tables are read on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import re
import sqlite3
from io import StringIO

import pandas as pd
import pytest

from conftest import quick_spec, study_in_process
from test_cli_output import _in_terminal

from study.locations import resolve
from study.plan.population import solo_config
from study.record import results
from study.spec.model import load_spec, spec_to_yaml
from trainables.tasks import resolved_config

NAME = "tpe-names"
# (trial id, state, 1 - mu_max as sampled, spectral_radius, final error of the two seeds)
TRIALS = [
    ("a1b2c3d4-0", "completed", 0.007, 1.1, (0.07, 0.09)),
    ("a1b2c3d4-1", "pruned", 0.2, 0.75, (0.6, 0.7)),
    ("e5f6a7b8-0", "completed", 0.05, 0.9, (0.3, 0.34)),
    ("e5f6a7b8-1", "diverged", 0.001, 1.4, (0.01, None)),
]
# The words a table must never split: every header and every state.
WORDS = ["trial", "optuna", "state", "step", "error", "lowest_seen", "diverged", "mu_max", "spectral_radius",
         "completed", "pruned"]


def write_tpe_study(root, name: str = NAME, trials=TRIALS):
    """A finished TPE study over mu_max (transform one_minus) and spectral_radius, two seeds per
    configuration, in a results database of its own under ``root``; returns its Locations."""
    spec = load_spec(quick_spec(
        name, repeats=2, num_samples=len(trials),
        search={"mu_max": {"type": "float", "low": 1e-3, "high": 0.5, "log": True, "transform": "one_minus"},
                "spectral_radius": {"type": "float", "low": 0.5, "high": 1.5}},
    ))
    loc = resolve(name, root, None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=name, task=spec.task, metric=spec.metric, mode=spec.mode,
                                    num_samples=spec.trials, repeats=spec.repeats, state="completed",
                                    spec_yaml=spec_to_yaml(spec), tune_path="tune", mlflow_uri="")
    for number, (tid, state, x, radius, errors) in enumerate(trials):
        params = {"one_minus_mu_max": x, "spectral_radius": radius}
        config = resolved_config(solo_config(spec, params))
        step = 40 if state in ("completed", "diverged") else 20
        diverged = sum(e is None for e in errors)
        mean = None if diverged else sum(errors) / len(errors)
        results.upsert_trial(loc.results_db, study_id, tid, state=state, params=params, config=config,
                             optuna_trial_number=number, members=2, members_diverged=diverged, last_step=step,
                             metric_value=mean, best_metric_value=mean, objective=mean)
        results.record_trial_points(loc.results_db, study_id, tid, step, [
            {"member": k, "seed": k, "error": e, "loss": e, "mu": config["mu_max"], "lr": config["lr"],
             "status": "diverged" if e is None else ("pruned" if state == "pruned" else "completed")}
            for k, e in enumerate(errors)])
    return loc


@pytest.fixture(scope="module")
def tpe_study(tmp_path_factory):
    return write_tpe_study(tmp_path_factory.mktemp("studies"))


def _split_or_lost(shown: str, words: list[str]) -> list[str]:
    """The words that appear nowhere whole on one line of ``shown`` (an abbreviated header appears
    whole in the legend under the table) and are not named as left out either."""
    lines = shown.splitlines()
    left_out = re.search(r"not shown .*?: (.*)$", " ".join(lines), re.S)
    dropped = set(left_out.group(1).replace(",", " ").split()) if left_out else set()
    return [w for w in words
            if w not in dropped and not re.search(rf"(^|[\s=]){re.escape(w)}(\s|$|;)", shown, re.M)]


@pytest.mark.parametrize("columns", [80, 200])
def test_results_and_status_tables_shorten_values_never_words(tpe_study, columns):
    shown = _in_terminal("results", NAME, "--dir", str(tpe_study.root), columns=columns)
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= columns, shown
    assert "one_minus" not in shown, shown
    assert _split_or_lost(shown, WORDS) == [], shown
    for tid, *_ in TRIALS:  # each trial whole, on a line of its own
        assert re.search(rf"^{re.escape(tid)}\s", shown, re.M), (tid, shown)
    if columns == 200:  # room for everything: no legend, nothing left out or cut
        assert "not shown" not in shown and "=" not in shown and "…" not in shown, shown
        header = next(line for line in lines if line.startswith("trial"))
        assert header.split() == ["trial", "optuna", "state", "step", "error", "lowest_seen", "diverged", "mu_max",
                                  "spectral_radius"]
    status = _in_terminal("status", NAME, "--dir", str(tpe_study.root), columns=columns)
    assert max(len(line) for line in status.splitlines()) <= columns, status
    assert _split_or_lost(status, ["trial", "optuna", "state", "step", "error", "lowest_seen", "completed",
                                   "pruned", "diverged"]) == [], status


def test_the_searched_field_is_mu_max_in_tables_csv_and_json_and_the_store_keeps_the_sampler_name(tpe_study):
    root = str(tpe_study.root)
    out = study_in_process("results", NAME, "--dir", root, "--format", "csv")
    df = pd.read_csv(StringIO(out.stdout))
    assert "one_minus_mu_max" not in df.columns
    # mu_max is the value the configuration trained with, 1 - the sampled value, every digit.
    assert dict(zip(df["trial_id"], df["mu_max"])) == {tid: 1.0 - x for tid, _, x, *_ in TRIALS}
    rows = json.loads(study_in_process("results", NAME, "--dir", root, "--format", "json").stdout)
    assert {r["trial_id"]: r["mu_max"] for r in rows} == {tid: 1.0 - x for tid, _, x, *_ in TRIALS}
    assert all("one_minus_mu_max" not in r for r in rows)
    table = study_in_process("results", NAME, "--dir", root).stdout
    assert "mu_max" in table and "one_minus" not in table and "0.993" in table
    # The results database keeps the sampler's coordinate, in which Optuna's model is fitted.
    with sqlite3.connect(tpe_study.study_dir / "results.db") as c:
        stored = [json.loads(p) for (p,) in c.execute("SELECT params FROM ms_trials ORDER BY optuna_trial_number")]
    assert [p["one_minus_mu_max"] for p in stored] == [x for _, _, x, *_ in TRIALS]


def test_status_names_the_best_final_result_and_the_lowest_seen_apart(tpe_study):
    out = study_in_process("status", NAME, "--dir", str(tpe_study.root), "--format", "json")
    status = json.loads(out.stdout)
    # The best completed configuration by its final mean (0.08), not the diverged one's 0.01 seed.
    assert (status["best_trial"], status["best"]) == ("a1b2c3d4-0", pytest.approx(0.08))
    assert {"trial", "state", "error", "lowest_seen"} <= set(status["trials"][0])
    shown = study_in_process("status", NAME, "--dir", str(tpe_study.root)).stdout
    assert "best error: 0.08 (trial a1b2c3d4-0" in shown
    assert "lowest_seen: the lowest error of a configuration at any of its reports, not a final result" in shown


def test_a_studies_directory_that_is_not_there_is_an_error_that_says_where(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    for args in (["status"], ["status", "quick"], ["results", "quick"], ["best", "quick"], ["delete", "quick", "-y"]):
        out = study_in_process(*args, "--dir", str(missing))
        assert out.returncode == 2, (args, out)
        assert out.stderr.strip() == (f"error: the studies directory {str(missing)!r} does not exist (from --dir); "
                                      "give the directory the study was run in"), (args, out.stderr)
    assert not missing.exists()
    # The default ./studies before a first run is no mistake: nothing yet, and where it looked.
    monkeypatch.chdir(tmp_path)
    out = study_in_process("status", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.startswith(f"no studies yet: {tmp_path / 'studies'} does not exist")


def test_an_unknown_study_is_refused_with_the_studies_there_are(tpe_study, tmp_path):
    root = str(tpe_study.root)
    for args in (["status", "tpe-nams"], ["results", "tpe-nams"], ["query", "tpe-nams", "SELECT 1"],
                 ["resume", "tpe-nams"], ["stop", "tpe-nams"], ["delete", "tpe-nams", "-y"], ["report", "tpe-nams"],
                 ["ui", "tpe-nams"], ["best", "tpe-nams"]):
        out = study_in_process(*args, "--dir", root)
        assert out.returncode == 2, (args, out)
        assert out.stderr.strip() == f"error: no study named 'tpe-nams' in {root!r}; the studies there: {NAME}", args
    empty = tmp_path / "empty"
    empty.mkdir()
    out = study_in_process("results", "quick", "--dir", str(empty))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: no study named 'quick' in {str(empty)!r}; there are no studies there"


def test_study_plan_fits_80_columns_without_splitting_a_word():
    from conftest import REPO

    shown = _in_terminal("plan", str(REPO / "search_spaces" / "search_curves_tpe.yaml"), columns=80)
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert "…" not in shown, shown
    assert _split_or_lost(shown, ["shape", "populations", "configurations", "members", "memory", "training_time",
                                  "device", "where", "wall_time"]) == [], shown
    assert re.search(r"^cpu\s+this machine\s", shown, re.M) and re.search(r"^gpu\s", shown, re.M), shown
