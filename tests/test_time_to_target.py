"""Time to target (issue #22, item 5): the first report at which a configuration's metric (the mean
over its seeds) reaches a target, from the spec's ``target`` or the paper's value for a cell.

Real parts throughout: the spec model, a real SQLite results DB migrated by Alembic (from a file
made at revision 0004), the recorder against it and a real MLflow store (SQLite), and the report
built from metric points written through the results API. Every expected step is worked out by
hand from the points the test writes.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from mlflow import MlflowClient
from sqlalchemy import create_engine

from study.errors import SpecError
from study.locations import resolve
from study.plan.population import Configuration
from study.record import outcome, results, tracking
from study.record import recorder as rec
from study.record.journal import JOURNAL_FILE, Journal
from study.record.outcome import ConfigurationEnd
from study.report import build_report, load_study
from study.spec.model import load_spec

from test_record_units import SPEC, report
from test_report import make_study


# --- the rule ------------------------------------------------------------------------------------


def test_the_rule_is_the_first_report_that_reaches_the_target_and_none_where_none_does():
    curve = [(10, 0.5), (20, None), (30, 0.3), (40, 0.29), (50, 0.35)]
    assert outcome.updates_to_target(curve, 0.3, "min") == 30  # at the target counts
    assert outcome.updates_to_target(curve, 0.4, "min") == 30  # step 20 cannot count (None)
    assert outcome.updates_to_target(curve, 0.1, "min") is None  # never reached: None, not 0 or inf
    assert outcome.updates_to_target(curve, None, "min") is None
    assert outcome.updates_to_target(curve, 0.45, "max") == 10
    assert outcome.updates_to_target([(10, float("nan")), (20, float("inf"))], 1.0, "min") is None
    # A report where a seed diverged never reaches (that seed's error is its last good one).
    assert report("c", 10, [0.1, 0.2]).reached(0.2, "min")
    assert not report("c", 10, [0.1, 0.2], "diverged").reached(0.2, "min")


# --- the spec ------------------------------------------------------------------------------------


def _spec(**extra):
    return {**SPEC, **extra}


def test_a_spec_target_is_a_number_or_one_per_task_it_runs():
    assert load_spec(_spec(target=0.25)).target_for("addition") == 0.25
    assert load_spec(_spec()).target_for("addition") is None
    several = {k: v for k, v in SPEC.items() if k != "task"}
    several["search"] = {**SPEC["search"], "task": {"type": "categorical", "values": ["addition", "mem5"]}}
    spec = load_spec({**several, "target": {"mem5": 1.5}})
    assert (spec.target_for("mem5"), spec.target_for("addition")) == (1.5, None)


@pytest.mark.parametrize("value, words", [
    (-0.1, "target=-0.1 is not allowed: need a finite number >= 0"),
    (".nan", "target=nan is not allowed: need a finite number >= 0"),
    (True, "target=True is not allowed"),
    ("low", "target='low' is not allowed"),
    ({"mem5": 0.1}, "target={'mem5': 0.1} is not allowed (task 'mem5' is not run by this study): a target per task "
                    "names one or more of the tasks this study runs: addition"),
    ({"addition": -1}, "target={'addition': -1} is not allowed (task 'addition': -1)"),
])
def test_a_bad_target_is_refused_naming_the_field_the_value_and_the_rule(value, words):
    value = float("nan") if value == ".nan" else value
    with pytest.raises(SpecError) as err:
        load_spec(_spec(target=value))
    assert words in str(err.value)


# --- the results DB: migration 0005 ----------------------------------------------------------------


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(results.__file__).with_name("migrations")))
    return cfg


def _at(url: str, revision: str, how=command.upgrade) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg = _alembic(url)
        cfg.attributes["connection"] = conn
        how(cfg, revision)
    engine.dispose()


def test_migration_0005_adds_the_target_columns_to_a_database_made_at_0004(tmp_path):
    path = tmp_path / "results.db"
    url = results.sqlite_url(path)
    _at(url, "0004")
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(ms_trials)")}
        assert "population" in columns and "target" not in columns
        db.execute("INSERT INTO ms_studies (name, task, metric, mode, num_samples, repeats, state, spec_yaml, "
                   "tune_path, mlflow_uri, created_at, updated_at) VALUES ('old', 'addition', 'error', 'min', 1, 1, "
                   "'completed', '', '', '', '2026-11-30 00:00:00', '2026-11-30 00:00:00')")
        db.execute("INSERT INTO ms_trials (study_id, trial_id, state, params, config, members, members_diverged, "
                   "metric_value, population) VALUES (1, 'p-0', 'completed', '{}', '{}', 2, 0, 0.25, 'p')")
    results.engine_for(url)  # opening migrates to head
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT trial_id, metric_value, population, target, updates_to_target "
                         "FROM ms_trials").fetchone()
        version = db.execute("SELECT version_num FROM ms_alembic_version").fetchone()[0]
    assert row == ("p-0", 0.25, "p", None, None)
    assert version >= "0005"
    results.report_trial(url, 1, "p-0", "min", last_step=40, updates_to_target=20)
    results.report_trial(url, 1, "p-0", "min", last_step=40, updates_to_target=30)  # a later report, written again
    results.report_trial(url, 1, "p-0", "min", last_step=40, updates_to_target=None)
    assert results.study_trials(url, 1)[0].updates_to_target == 20  # the earliest stays
    results.report_trial(url, 1, "p-0", "min", last_step=40, updates_to_target=10)  # an earlier one replayed
    assert results.study_trials(url, 1)[0].updates_to_target == 10
    results.forget_engine(url)
    _at(url, "0004", command.downgrade)
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(ms_trials)")}
        assert "target" not in columns and "updates_to_target" not in columns
        assert db.execute("SELECT trial_id, metric_value FROM ms_trials").fetchone() == ("p-0", 0.25)


# --- the recorder: results DB and MLflow -----------------------------------------------------------


@pytest.fixture
def stores(tmp_path):
    spec = load_spec(_spec(name="timed", target=0.3))
    loc = resolve(spec.name, tmp_path / "studies", None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=spec.name, task=spec.task, metric=spec.metric,
                                    mode=spec.mode, num_samples=spec.trials, repeats=spec.repeats, state="running",
                                    spec_yaml="", tune_path="", mlflow_uri="")
    experiment_id, parent = tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), "",
                                                 loc.artifact_location)
    return spec, loc, study_id, experiment_id, parent


def _recorder(stores) -> rec.Recorder:
    spec, loc, study_id, experiment_id, parent = stores
    return rec.Recorder(spec, loc, study_id, experiment_id, parent, Journal(loc.study_dir / JOURNAL_FILE),
                        rec.RunIds())


def test_the_recorder_keeps_the_target_and_the_first_step_that_reached_it(stores):
    spec, loc, study_id, *_ = stores
    where = {"timestamp": 1_700_000_000}
    recorder = _recorder(stores)
    recorder.started("pop", [Configuration("pop-0", 0, {"lr": 1e-3}), Configuration("pop-1", 1, {"lr": 1e-2}),
                             Configuration("pop-2", 2, {"lr": 5e-3})])
    # pop-0: means 0.5, 0.25 (reached at 20), 0.2; pop-1: never below 0.35; pop-2: its mean 0.15 at 10
    # comes with a diverged seed, so it does not count (the rule of best_metric_value).
    recorder.reported([report("pop-0", 10, [0.4, 0.6]), report("pop-1", 10, [0.5, 0.5], number=1),
                       report("pop-2", 10, [0.1, 0.2], "diverged", number=2)], where)
    recorder.reported([report("pop-0", 20, [0.2, 0.3]), report("pop-1", 20, [0.4, 0.3], number=1)], where)
    recorder.ended(ConfigurationEnd("pop-2", 2, "pop", "diverged", report("pop-2", 10, [0.1, 0.2], "diverged")))
    # A new recorder (a resumed study's driver) hears step 30 again: neither store moves the step.
    assert recorder.drain() is None
    again = _recorder(stores)
    again.started("pop", [Configuration("pop-0", 0, {"lr": 1e-3}), Configuration("pop-1", 1, {"lr": 1e-2})])
    last0 = report("pop-0", 30, [0.1, 0.3], "completed", final=True)
    last1 = report("pop-1", 30, [0.4, 0.3], "completed", final=True, number=1)
    again.reported([last0, last1], where)
    again.ended(ConfigurationEnd("pop-0", 0, "pop", "completed", last0))
    again.ended(ConfigurationEnd("pop-1", 1, "pop", "completed", last1))
    assert again.drain() is None

    rows = {t.trial_id: t for t in results.study_trials(loc.results_db, study_id)}
    assert [(rows[c].target, rows[c].updates_to_target) for c in ("pop-0", "pop-1", "pop-2")] == [
        (0.3, 20), (0.3, None), (0.3, None)]
    client = MlflowClient(loc.mlflow_uri)
    history = [(m.step, m.value) for m in client.get_metric_history(rows["pop-0"].mlflow_run_id,
                                                                     tracking.UPDATES_TO_TARGET)]
    assert history == [(20, 20.0)]  # logged once, at the step that reached it
    never = client.get_run(rows["pop-1"].mlflow_run_id).data.metrics
    assert never[tracking.TARGET] == 0.3 and tracking.UPDATES_TO_TARGET not in never
    assert tracking.UPDATES_TO_TARGET not in client.get_run(rows["pop-2"].mlflow_run_id).data.metrics


def test_without_a_target_nothing_is_timed(tmp_path):
    spec = load_spec(_spec(name="untimed"))
    loc = resolve(spec.name, tmp_path / "studies", None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=spec.name, task=spec.task, metric=spec.metric,
                                    mode=spec.mode, num_samples=1, repeats=2, state="running", spec_yaml="",
                                    tune_path="", mlflow_uri="")
    experiment_id, parent = tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), "",
                                                 loc.artifact_location)
    recorder = _recorder((spec, loc, study_id, experiment_id, parent))
    recorder.started("pop", [Configuration("pop-0", 0, {"lr": 1e-3})])
    recorder.reported([report("pop-0", 10, [0.0, 0.0])], {"timestamp": 1_700_000_000})
    assert recorder.drain() is None
    row = results.study_trials(loc.results_db, study_id)[0]
    assert (row.target, row.updates_to_target) == (None, None)
    logged = MlflowClient(loc.mlflow_uri).get_run(row.mlflow_run_id).data.metrics
    assert tracking.TARGET not in logged and tracking.UPDATES_TO_TARGET not in logged


# --- the report -----------------------------------------------------------------------------------


def _trial(tid: str, optimizer: str, lr: float, errors: dict[int, list[float]], **config) -> dict:
    """An addition configuration with seeds 0 and 1, reporting every 500 of 2,000 updates."""
    return {"id": tid, "state": "completed",
            "config": {"optimizer": optimizer, "mu_0": 0.9, "lr": lr, "seed": [0, 1], "updates": 2000,
                       "report_every": 500, "seq_length": 20, **config},
            "points": {s: [(e, "completed" if s == 2000 else "running") for e in es] for s, es in errors.items()}}


TRIALS = [
    # NAG's best lr (final mean 0.2): means 0.9, 0.55, 0.35, 0.2 -> a target of 0.4 is reached at 1,500,
    # though seed 0 alone reached it at 1,000 and seed 1 only at 2,000.
    _trial("a", "nag", 0.001, {500: [0.9, 0.9], 1000: [0.2, 0.9], 1500: [0.2, 0.5], 2000: [0.1, 0.3]}),
    _trial("b", "nag", 0.0001, {500: [0.9, 0.9], 1000: [0.8, 0.8], 1500: [0.7, 0.7], 2000: [0.6, 0.6]}),
    # CM: its best mean at any report is 0.5 (the last), never 0.4.
    _trial("c", "cm", 0.001, {500: [0.9, 0.9], 1000: [0.8, 0.8], 1500: [0.6, 0.6], 2000: [0.5, 0.5]}),
]
SEARCH = {"config": {"updates": 2000, "seq_length": 20, "report_every": 500},
          "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                     "lr": {"type": "grid", "values": [0.001, 0.0001]}},
          "sampler": "grid"}


def _table5(root: Path, name: str, spec: dict, trials=TRIALS):
    make_study(root, name, "addition", spec, trials)
    rep = build_report(name, root, out_dir=root / name / "report")
    return rep, rep.tables["table5"].set_index("optimizer")


def test_the_report_times_each_cell_to_the_spec_target_beside_its_final_error(tmp_path):
    rep, t5 = _table5(tmp_path, "spec-target", {**SEARCH, "target": 0.4})
    nag, cm = t5.loc["nag"], t5.loc["cm"]
    assert (nag.best_lr, nag.target, nag.target_from, nag.updates_to_target) == (0.001, 0.4, "spec", 1500)
    assert pd_na(cm.updates_to_target) and cm.best_at_any_report == pytest.approx(0.5)
    header = next(line for line in rep.markdown.splitlines() if line.startswith("| optimizer"))
    cells = [c.strip() for c in header.split("|")]
    assert cells.index("updates to target") == cells.index("error: mean ± 95% CI over seeds") + 1
    rows = [line for line in rep.markdown.splitlines() if line.startswith("| nag") or line.startswith("| cm")]
    assert "| 1,500 |" in next(r for r in rows if r.startswith("| nag"))
    assert "| not reached (best 0.5) |" in next(r for r in rows if r.startswith("| cm"))
    assert "reached the spec's `target` (0.4) (at or below it); resolution: a report every 500 updates" in rep.markdown
    # members.csv: each seed's own first report at or below 0.4.
    members = load_study("spec-target", tmp_path).members.set_index(["trial_id", "member"])
    assert members.loc[("a", 0), "updates_to_target"] == 1000 and members.loc[("a", 1), "updates_to_target"] == 2000
    assert pd_na(members.loc[("c", 0), "updates_to_target"]) and members.loc[("c", 0), "target"] == 0.4
    csv = (tmp_path / "spec-target" / "report" / "members.csv").read_text().splitlines()
    assert "updates_to_target" in csv[0].split(",")


def pd_na(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def test_without_a_spec_target_the_paper_value_is_the_target_where_it_may_stand(tmp_path):
    # The paper's Table 5, addition, mu_0 0.9: NAG 0.02, CM 0.43 (study/published_results.yaml).
    _, t5 = _table5(tmp_path, "paper-target", SEARCH)
    nag, cm = t5.loc["nag"], t5.loc["cm"]
    assert (nag.paper, nag.target, nag.target_from) == (0.02, 0.02, "paper")
    assert pd_na(nag.updates_to_target) and nag.best_at_any_report == pytest.approx(0.2)
    assert nag.to_target_cell == "not reached (best 0.2)"
    # CM's best mean is 0.5, above its paper value 0.43; with a last report of 0.4 it reaches it at 2,000.
    trials = [*TRIALS[:2], _trial("c", "cm", 0.001, {500: [0.9, 0.9], 1000: [0.8, 0.8], 1500: [0.6, 0.6],
                                                       2000: [0.4, 0.4]})]
    _, t5 = _table5(tmp_path, "paper-target-2", SEARCH, trials)
    assert (t5.loc["cm"].target, t5.loc["cm"].updates_to_target) == (0.43, 2000)


def test_no_target_where_the_protocol_keeps_the_paper_value_out(tmp_path):
    # A constant momentum never reads mu_0: no paper value may stand, so there is no target either.
    trials = [_trial(t["id"], t["config"]["optimizer"], t["config"]["lr"],
                     {s: [e for e, _ in m] for s, m in t["points"].items()}, momentum_schedule="constant")
              for t in TRIALS]
    rep, t5 = _table5(tmp_path, "no-target", {**SEARCH, "config": {**SEARCH["config"],
                                                                   "momentum_schedule": "constant"}}, trials)
    assert t5["paper"].isna().all() and t5["target"].isna().all()
    assert set(t5["to_target_cell"]) == {"no target"}
    assert "**Updates to target**: no target" in rep.markdown


# --- study results ----------------------------------------------------------------------------------


def test_study_results_shows_the_target_and_the_updates_to_it(tmp_path):
    from io import StringIO

    import pandas as pd

    from conftest import study_in_process

    url = make_study(tmp_path, "timed-results", "addition", {**SEARCH, "target": 0.4}, TRIALS)
    study_id = results.get_study(url, "timed-results").id
    for tid in ("a", "b", "c"):  # what the recorder writes: the target at the start, the step once reached
        results.upsert_trial(url, study_id, tid, target=0.4)
    results.report_trial(url, study_id, "a", "min", updates_to_target=1500)
    csv = pd.read_csv(StringIO(study_in_process("results", "timed-results", "--dir", str(tmp_path),
                                                "--format", "csv").stdout)).set_index("trial_id")
    assert csv.loc["a", "updates_to_target"] == 1500 and pd.isna(csv.loc["c", "updates_to_target"])
    assert set(csv["target"]) == {0.4}
    table = study_in_process("results", "timed-results", "--dir", str(tmp_path)).stdout  # 200 columns
    header = next(line for line in table.splitlines() if line.startswith("trial"))
    assert header.split()[6:9] == ["diverged", "target", "to_target"]
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0] in ("a", "b", "c")}
    assert re.search(r"\b0\.4\s+1500\b", rows["a"]) and "not reached" in rows["c"]


def _curves_study(root: Path, name: str) -> pd.DataFrame:
    """Table 1 of an autoencoder study with the spec's target 1.0 (reports at 100, 900 and 1,000:
    ae_trial's 30.0, twice the final error, the final error)."""
    from test_report import ae_trial

    spec = {"config": {"updates": 1000, "train_cases": 2000}, "target": 1.0,
            "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                       "mu_max": {"type": "grid", "values": [0.0, 0.9]}, "lr": {"type": "grid", "values": [0.01]}},
            "sampler": {"type": "grid"}, "repeats": 2}
    trials = [ae_trial("n9", "nag", 0.9, 0.01, [0.2, 0.3]),   # means 30, 0.5, 0.25: reached at 900
              ae_trial("c9", "cm", 0.9, 0.01, [0.6, 0.6]),    # 30, 1.2, 0.6: reached at 1,000
              ae_trial("s0", "cm", 0.0, 0.01, [0.7, 0.9])]    # plain SGD, run once as CM: 30, 1.6, 0.8
    make_study(root, name, "curves", spec, trials)
    return build_report(name, root, out_dir=root / name / "report").tables["table1"]


def test_table1_times_each_cell_at_its_best_lr(tmp_path):
    t1 = _curves_study(tmp_path, "ae-timed").set_index(["optimizer", "mu_max"])
    assert t1.loc[("nag", 0.9), "updates_to_target"] == 900
    assert t1.loc[("cm", 0.9), "updates_to_target"] == 1000
    assert t1.loc[("cm", 0.0), "updates_to_target"] == 1000


def test_table1s_shared_sgd_row_is_timed_from_the_cm_runs_it_shows(tmp_path):
    # Plain SGD ran once, as CM; Table 1 shows it under NAG too (tables.with_shared_sgd).
    t1 = _curves_study(tmp_path, "ae-sgd").set_index(["optimizer", "mu_max"])
    assert t1.loc[("nag", 0.0), "updates_to_target"] == 1000
