"""study.report on results databases with known values, written through study.record.results (real SQLite
files), a real local MLflow SQLite store, and the `study report` command line."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.record import results
from study.record import tracking
from study.report import build_report, load_study, log_to_mlflow, published_value
from study.report import figures, tables
from study.report.figures.search import importance_figure, optuna_slice_figure, sensitivity_figure
from study.report.figures.style import fmt_value
from study.report.figures.tables import table1_figure, table3_figure
from study.report.figures.tick_labels import tidy
from trainables.config import parse_config

from conftest import STUDY_BIN, study_in_process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- building a results database with known values ----------------------------------------------


def make_study(root: Path, name: str, task: str, spec: dict, trials: list[dict], mlflow: bool = False) -> str:
    """Writes a study into <root>/<name>/results.db through the results API.

    Each trial (a configuration): {"id", "state", "config" (raw training config; lists make a
    population), "params", "points": {step: [(error, status), ...one per member]}, and optionally
    "population" (the Ray trial of a fused study that trained it)}.
    """
    study_dir = root / name
    url = results.sqlite_url(study_dir / "results.db")
    spec = {"name": name, "task": task, **spec}
    spec_yaml = yaml.safe_dump(spec)
    experiment_id = parent = None
    mlflow_uri = results.sqlite_url(study_dir / "mlflow.db")
    if mlflow:
        experiment_id, parent = tracking.setup_study(
            mlflow_uri, name, spec, spec_yaml, (study_dir / "mlartifacts").resolve().as_uri()
        )
    study_id = results.upsert_study(
        url, name=name, task=task, metric="error", mode="min", num_samples=len(trials),
        repeats=spec.get("repeats", 1), state="completed", spec_yaml=spec_yaml, tune_path=str(study_dir / "tune"),
        mlflow_uri=mlflow_uri, mlflow_experiment_id=experiment_id, mlflow_parent_run_id=parent,
    )
    for i, t in enumerate(trials):
        cfg = parse_config({"task": task, **t["config"]})
        seeds = cfg.member_values("seed")
        pk = results.upsert_trial(
            url, study_id, t["id"], state=t["state"], params=t.get("params", {}), config=cfg.model_dump(mode="json"),
            members=cfg.population_size, optuna_trial_number=i, population=t.get("population"),
        )
        for step, members in sorted(t.get("points", {}).items()):
            rows = []
            for k, (error, status) in enumerate(members):
                rows.append({"member": k, "seed": seeds[k], "error": error, "loss": error, "mu": 0.9,
                             "lr": cfg.member_values("lr")[k], "status": status,
                             "diverged_at": step - 5 if status == "diverged" else None})
            results.record_points(url, pk, step, rows)
        points = t.get("points") or {0: []}
        n_div = sum(s == "diverged" for _, s in points[max(points)])
        results.upsert_trial(url, study_id, t["id"], members_diverged=n_div)
    return url


def ae_trial(tid: str, optimizer: str, mu_max: float, lr: float, finals: list, before: list | None = None,
             state: str | None = None, init_scale: float | None = None, updates: int = 1000) -> dict:
    """An autoencoder trial with two seeds; final error None means that member diverged."""
    before = before or [f * 2 if f is not None else 5.0 for f in finals]
    final_row = [(f, "completed") if f is not None else (3.0, "diverged") for f in finals]
    config = {"optimizer": optimizer, "mu_max": mu_max, "lr": lr, "seed": [0, 1], "updates": updates,
              "report_every": 100, "train_cases": 2000}
    if init_scale is not None:
        config["init_scale"] = init_scale
    diverged = any(f is None for f in finals)
    return {
        "id": tid,
        "state": state or ("diverged" if diverged else "completed"),
        "params": {"lr": lr},
        "config": config,
        "points": {
            100: [(30.0, "running")] * 2,
            # the final phase of 1000 updates is the last 100 (trainables default_final_updates)
            900: [(b, "running") for b in before],
            1000: final_row,
        },
    }


@pytest.fixture
def curves_study(tmp_path):
    spec = {
        "config": {"updates": 1000, "train_cases": 2000},
        "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                   "mu_max": {"type": "grid", "values": [0.9, 0.99]},
                   "lr": {"type": "grid", "values": [0.01, 0.05]}},
        "sampler": {"type": "grid"},
        "repeats": 2,
    }
    trials = [
        ae_trial("n90a", "nag", 0.9, 0.01, [0.30, 0.34]),
        ae_trial("n90b", "nag", 0.9, 0.05, [0.20, 0.26], before=[0.5, 0.7]),  # best for (nag, 0.9)
        ae_trial("n99a", "nag", 0.99, 0.01, [0.12, 0.14]),                    # best: 0.05 had a divergence
        ae_trial("n99b", "nag", 0.99, 0.05, [0.01, None]),
        ae_trial("c90a", "cm", 0.9, 0.01, [0.40, 0.40]),
        ae_trial("c90b", "cm", 0.9, 0.05, [0.50, 0.70]),
        ae_trial("c99a", "cm", 0.99, 0.01, [None, None]),
        ae_trial("c99b", "cm", 0.99, 0.05, [None, None]),
    ]
    return tmp_path / "studies", make_study(tmp_path / "studies", "ae", "curves", spec, trials)


# --- tables -------------------------------------------------------------------------------------


def test_members_unpack_populations_and_mark_diverged_members(curves_study):
    root, _ = curves_study
    m = load_study("ae", root).members
    assert len(m) == 16
    row = m[(m.trial_id == "n99b") & (m.member == 1)].iloc[0]
    assert row.outcome == "diverged" and row.seed == 1 and row.diverged_at == 995
    assert row.final_error is None or math.isnan(row.final_error)
    ok = m[(m.trial_id == "n99b") & (m.member == 0)].iloc[0]
    assert ok.outcome == "completed" and ok.final_error == pytest.approx(0.01)


def test_table1_picks_the_best_clean_lr_per_mu_max_and_momentum_type(curves_study):
    root, _ = curves_study
    t1 = tables.table1(load_study("ae", root).members, "curves").set_index(["optimizer", "mu_max"])
    nag90 = t1.loc[("nag", 0.9)]
    # the sample sd over the two seeds 0.20 and 0.26 (n - 1 in the denominator)
    assert nag90.best_lr == 0.05 and nag90.error == pytest.approx(0.23)
    assert nag90["std"] == pytest.approx(0.03 * 2 ** 0.5)
    assert nag90.seeds == 2 and nag90.n_diverged == 0 and nag90.paper == 0.16
    # lr 0.05 reached 0.01 on one seed but diverged on the other: a failure, so 0.01 is best
    nag99 = t1.loc[("nag", 0.99)]
    assert nag99.best_lr == 0.01 and nag99.error == pytest.approx(0.13) and nag99.n_diverged == 1
    assert nag99.paper == 0.096
    cm90 = t1.loc[("cm", 0.9)]
    assert cm90.best_lr == 0.01 and cm90.error == pytest.approx(0.40) and cm90.paper == 0.15
    cm99 = t1.loc[("cm", 0.99)]
    assert cm99.result == "diverged" and cm99.n_diverged == 4 and cm99.n_members == 4 and math.isnan(cm99.error)
    shown = tables.display(t1.reset_index()).set_index(["optimizer", "mu_max"])
    assert shown.loc[("cm", 0.99), "result_cell"] == "diverged (4/4)"
    # mean ± the half-width of the 95% t interval: 12.71 (t, 1 degree of freedom) x 0.0424 / sqrt(2)
    assert shown.loc[("nag", 0.9), "result_cell"] == "0.23 ± 0.38"


def test_table2_reads_the_error_before_the_final_phase_from_the_history(curves_study):
    root, _ = curves_study
    t2 = tables.table2(load_study("ae", root).members, "curves").set_index("mu_max")
    row = t2.loc[0.9]
    assert row.best_lr == 0.05 and row.final_phase_updates == 100 and row.before_step == 900
    assert row.before == pytest.approx(0.6) and row.after == pytest.approx(0.23)
    assert row.paper_before == 0.096 and row.paper_after == 0.074
    assert t2.loc[0.99].before == pytest.approx(0.26)


def test_table3_per_si_scale_with_the_paper_beside(tmp_path):
    trials = [
        ae_trial("s025", "nag", 0.99, 0.01, [16.5, 16.7], init_scale=0.25),
        ae_trial("s1", "nag", 0.99, 0.01, [0.5, 0.7], init_scale=1.0),
        ae_trial("s4", "nag", 0.99, 0.01, [None, 2.0], init_scale=4.0),
        # a trial that crashed before its first report: its members are failures, not absent
        {**ae_trial("s2", "nag", 0.99, 0.01, [1, 1], init_scale=2.0), "state": "failed", "points": {}},
    ]
    spec = {"search": {"init_scale": {"type": "grid", "values": [0.25, 1.0, 4.0]}}, "sampler": "grid", "repeats": 2}
    make_study(tmp_path, "t3", "curves", spec, trials)
    t3 = tables.table3(load_study("t3", tmp_path).members, "curves").set_index("init_scale")
    assert t3.loc[0.25].error == pytest.approx(16.6) and t3.loc[0.25].paper == 16
    assert t3.loc[1.0].error == pytest.approx(0.6) and t3.loc[1.0].paper == 0.074
    assert t3.loc[4.0].result == "diverged" and t3.loc[4.0].n_diverged == 1 and t3.loc[4.0].paper == 0.35
    assert t3.loc[2.0].result == "failed" and t3.loc[2.0].n_failed == 2 and t3.loc[2.0].paper == 0.083


def rnn_trial(tid: str, optimizer: str, mu_0: float, seeds, finals: list, lr: float = 0.001, **config) -> dict:
    """An RNN trial (a configuration; a list of seeds makes its members); ``config``: other fields."""
    final_row = [(f, "completed") if f is not None else (0.9, "diverged") for f in finals]
    return {
        "id": tid,
        "state": "diverged" if None in finals else "completed",
        "config": {"optimizer": optimizer, "mu_0": mu_0, "lr": lr, "seed": seeds, "updates": 2000,
                   "report_every": 1000, "seq_length": 20, **config},
        "points": {1000: [(0.8, "running")] * len(finals), 2000: final_row},
    }


@pytest.fixture
def addition_study(tmp_path):
    trials = [
        # seeds as population members of one trial (repeats) AND as a separate trial
        rnn_trial("n9", "nag", 0.9, [0, 1], [0.10, 0.20]),
        rnn_trial("n9s2", "nag", 0.9, 2, [0.30]),
        rnn_trial("n9lr", "nag", 0.9, [0, 1], [0.50, 0.60], lr=0.0001),
        rnn_trial("c9", "cm", 0.9, [0, 1], [0.40, None]),
        rnn_trial("c0", "cm", 0.0, [0, 1], [0.80, 0.82]),
    ]
    spec = {"config": {"updates": 2000, "seq_length": 20},
            "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                       "mu_0": {"type": "grid", "values": [0.0, 0.9]},
                       "lr": {"type": "grid", "values": [0.001, 0.0001]}},
            "sampler": "grid"}
    make_study(tmp_path / "studies", "add", "addition", spec, trials, mlflow=True)
    return tmp_path / "studies"


def test_table5_averages_over_member_and_trial_seeds_with_spread(addition_study):
    t5 = tables.table5(load_study("add", addition_study).members, "addition").set_index(["optimizer", "mu_0"])
    nag = t5.loc[("nag", 0.9)]
    assert nag.best_lr == 0.001 and nag.seeds == 3
    assert nag.error == pytest.approx(0.2) and nag["min"] == pytest.approx(0.1) and nag["max"] == pytest.approx(0.3)
    assert nag["std"] == pytest.approx(math.sqrt(((0.1 - 0.2) ** 2 + 0 + (0.3 - 0.2) ** 2) / 2))
    assert nag.paper == 0.02 and nag.n_members == 5
    cm = t5.loc[("cm", 0.9)]
    assert cm.result == "diverged" and cm.n_diverged == 1 and cm.paper == 0.43
    # mu_0 = 0: one column in the paper for NAG and CM
    assert t5.loc[("cm", 0.0)].paper == 0.39 and t5.loc[("cm", 0.0)].error == pytest.approx(0.81)


def test_published_values_are_data():
    assert published_value("table5", "addition", "nag", mu_0=0.995) == 0.00025
    assert published_value("table5", "mem20", "cm", mu_0=0.98) == 0.0017
    assert published_value("table1", "faces", "cm", mu_max=0.999) == 9.3
    assert published_value("table1", "mnist", "nag", mu_max=0.0) == 2.1
    assert published_value("table3", "curves", "nag", init_scale=2.0) == 0.083


# --- grouping: every varied field splits a table (issue #12) -------------------------------------


@pytest.fixture
def multitask_study(tmp_path):
    """Table 5 over two problems, as search_spaces/table5_rnn.yaml varies the task. The best lr
    differs by problem: lr 1e-3 for addition, 1e-4 for mem5; pooled over both problems (mean of
    0.1 and 2.4 against 0.3 and 1.0) 1e-4 would win for both."""
    trials = []
    finals = {("addition", 1e-3): 0.10, ("addition", 1e-4): 0.30, ("mem5", 1e-3): 2.40, ("mem5", 1e-4): 1.00}
    for (task, lr), f in finals.items():
        for opt, extra in (("nag", 0.0), ("cm", 0.05)):
            trials.append(rnn_trial(f"{task}-{opt}-{lr:g}", opt, 0.9, [0, 1], [f + extra, f + extra + 0.02], lr=lr,
                                    task=task))
    spec = {"config": {"updates": 2000, "seq_length": 20},
            "search": {"task": {"type": "grid", "values": ["addition", "mem5"]},
                       "mu_0": {"type": "grid", "values": [0.9]},
                       "optimizer": {"type": "grid", "values": ["nag", "cm"]},
                       "lr": {"type": "grid", "values": [1e-3, 1e-4]}},
            "sampler": "grid", "repeats": 2}
    make_study(tmp_path / "studies", "multi", "addition", spec, trials)
    return tmp_path / "studies"


def _blocks(md: str, title: str) -> dict[str, str]:
    """The '### <task>' blocks of one '## <title>' section of a report."""
    section = md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return {part.split("\n", 1)[0].strip(): part for part in section.split("\n### ")[1:]}


def test_a_study_over_several_problems_gets_one_table5_block_per_problem(multitask_study, tmp_path):
    rep = build_report("multi", multitask_study, out_dir=tmp_path / "out")
    t5 = rep.tables["table5"].set_index(["task", "optimizer", "mu_0"])
    assert len(t5) == 4  # (task, optimizer, mu_0): never pooled over problems
    # the best lr per (task, optimizer, mu_0), each with its own problem's published value
    assert t5.loc[("addition", "nag", 0.9)].best_lr == 1e-3 and t5.loc[("addition", "nag", 0.9)].paper == 0.02
    assert t5.loc[("addition", "cm", 0.9)].best_lr == 1e-3 and t5.loc[("addition", "cm", 0.9)].paper == 0.43
    assert t5.loc[("mem5", "nag", 0.9)].best_lr == 1e-4 and t5.loc[("mem5", "nag", 0.9)].paper == 1.02
    assert t5.loc[("mem5", "cm", 0.9)].best_lr == 1e-4 and t5.loc[("mem5", "cm", 0.9)].paper == 1.12
    assert t5.loc[("addition", "nag", 0.9)].error == pytest.approx(0.11)
    assert t5.loc[("mem5", "nag", 0.9)].error == pytest.approx(1.01)
    assert set(pd.read_csv(tmp_path / "out" / "table5.csv").task) == {"addition", "mem5"}
    # the Markdown: one block per problem, each with that problem's values only
    blocks = _blocks(rep.markdown, "Table 5")
    assert set(blocks) == {"addition", "mem5"}
    assert "| 0.02 |" in blocks["addition"] and "| 1.02 |" not in blocks["addition"]
    assert "| 1.02 |" in blocks["mem5"] and "| 0.02 |" not in blocks["mem5"]
    assert "bias-only error: 0.82" in blocks["addition"] and "bias-only error: 2.5" in blocks["mem5"]
    # one figure per problem, each with its own problem's published points
    assert _paper_points(rep.figures["table5_addition"].axes[0], "NAG (paper)") == [(0.1, 0.02)]
    assert _paper_points(rep.figures["table5_mem5"].axes[0], "NAG (paper)") == [(0.1, 1.02)]
    assert (tmp_path / "out" / "table5_mem5.png").is_file() and not (tmp_path / "out" / "table5.png").exists()
    # sensitivity per problem, with the problem's published best of NAG and CM at mu_0 = 0.9
    sens = rep.tables["sensitivity_mu_0"].set_index("task")
    assert sens.loc["addition"].paper == 0.02 and sens.loc["mem5"].paper == 1.02
    assert _paper_points(rep.figures["sensitivity_mu_0_mem5"].axes[0], "paper") == [(0.1, 1.02)]
    # learning curves per problem, each with its own bias-only levels
    assert _axhlines(rep.figures["curves_addition"].axes[0])["bias-only, paper Table 5: 0.82"] == 0.82
    assert _axhlines(rep.figures["curves_mem5"].axes[0])["bias-only, paper Table 5: 2.5"] == 2.5


def test_a_varied_field_that_is_no_table_axis_splits_the_table_and_is_named(tmp_path):
    # seq_length differs between configurations: its settings are kept apart, never averaged
    trials = [rnn_trial("t20", "nag", 0.9, [0, 1], [0.1, 0.1], seq_length=20),
              rnn_trial("t40", "nag", 0.9, [0, 1], [0.5, 0.5], seq_length=40),
              rnn_trial("t40lr", "nag", 0.9, [0, 1], [0.3, 0.3], lr=1e-4, seq_length=40),
              # seeds and the device are not settings: these two configurations are one setting
              rnn_trial("t20b", "nag", 0.0, [0, 1], [0.2, 0.2], device="cpu"),
              rnn_trial("t20c", "nag", 0.0, [2, 3], [0.4, 0.4], device="cuda:0")]
    spec = {"search": {"seq_length": {"type": "grid", "values": [20, 40]},
                       "lr": {"type": "grid", "values": [1e-3, 1e-4]}}, "sampler": "grid"}
    make_study(tmp_path, "len", "addition", spec, trials)
    m = load_study("len", tmp_path).members
    assert tables.other_varied(m, ["optimizer", "mu_0"]) == ["seq_length"]
    t5 = tables.table5(m, "addition").set_index(["mu_0", "seq_length"])
    assert t5.loc[(0.9, 20)].error == pytest.approx(0.1) and t5.loc[(0.9, 20)].best_lr == 1e-3
    assert t5.loc[(0.9, 40)].error == pytest.approx(0.3) and t5.loc[(0.9, 40)].best_lr == 1e-4
    assert t5.loc[(0.0, 20)].seeds == 4 and t5.loc[(0.0, 20)].error == pytest.approx(0.3)
    rep = build_report("len", tmp_path, out_dir=tmp_path / "out")
    md = rep.markdown.split("## Table 5", 1)[1].split("\n## ", 1)[0]
    assert "Rows are also split by `seq_length`" in md and "| seq_length |" in md
    # the sensitivity to the lr says what it is the best and median over
    assert "over every other parameter the study varied: mu_0, seq_length." in rep.markdown



def test_reports_read_configurations_whether_fused_or_not(tmp_path):
    # a fused study records each configuration as its own row, with the Ray trial that trained it
    # in ms_trials.population: the same configurations give the same table either way
    def trials(prefix: str) -> list[dict]:
        return [rnn_trial(f"{prefix}-0", "nag", 0.9, [0, 1], [0.1, 0.2]),
                rnn_trial(f"{prefix}-1", "nag", 0.9, [0, 1], [0.3, 0.2], lr=1e-4),
                rnn_trial(f"{prefix}-2", "cm", 0.9, [0, 1], [0.4, None])]

    spec = {"search": {"lr": {"type": "grid", "values": [1e-3, 1e-4]}}, "sampler": "grid", "repeats": 2}
    make_study(tmp_path, "solo", "addition", spec, trials("solo"))
    make_study(tmp_path, "fused", "addition", spec, [{**t, "population": "ray1"} for t in trials("ray1")])
    solo = tables.table5(load_study("solo", tmp_path).members, "addition")
    fused = tables.table5(load_study("fused", tmp_path).members, "addition")
    pd.testing.assert_frame_equal(solo, fused)

# --- 95% intervals over seeds ---------------------------------------------------------------------


def test_cells_show_the_mean_and_its_95_percent_t_interval_over_seeds(addition_study, tmp_path):
    import numpy as np
    from scipy import stats as st

    from study.report.stats import mean_interval, t_quantile

    assert t_quantile(3) == pytest.approx(4.302652729911275)  # t_{0.975} with 2 degrees of freedom
    t5 = tables.table5(load_study("add", addition_study).members, "addition").set_index(["optimizer", "mu_0"])
    nag = t5.loc[("nag", 0.9)]  # seeds 0.1, 0.2, 0.3
    x = np.array([0.1, 0.2, 0.3])
    half = st.t.ppf(0.975, df=2) * x.std(ddof=1) / np.sqrt(3)
    assert nag.error_ci_low == pytest.approx(0.2 - half) and nag.error_ci_high == pytest.approx(0.2 + half)
    assert half == pytest.approx(0.248414, abs=1e-6)
    assert tables.display(t5.reset_index()).set_index(["optimizer", "mu_0"]).loc[("nag", 0.9), "result_cell"] \
        == "0.2 ± 0.25"
    # one seed: no interval
    mean, sd, low, high = mean_interval([0.4])
    assert mean == 0.4 and math.isnan(sd) and math.isnan(low) and math.isnan(high)
    assert tables.interval_cell(0.4, high) == "0.4 ± n/a"
    # the CSV holds the interval's ends beside the mean; the Markdown the same numbers
    rep = build_report("add", addition_study, out_dir=tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "table5.csv").set_index(["optimizer", "mu_0"])
    assert {"error", "error_ci_low", "error_ci_high"} <= set(csv.columns)
    assert csv.loc[("nag", 0.9)].error_ci_high == pytest.approx(0.2 + half)
    assert "| 0.2 ± 0.25 |" in rep.markdown and "error: mean ± 95% CI over seeds" in rep.markdown


def test_table2_before_and_after_carry_intervals(curves_study):
    import numpy as np
    from scipy import stats as st

    root, _ = curves_study
    t2 = tables.table2(load_study("ae", root).members, "curves").set_index("mu_max")
    row = t2.loc[0.9]  # before 0.5 and 0.7, after 0.20 and 0.26
    for value, xs in (("before", [0.5, 0.7]), ("after", [0.20, 0.26])):
        half = st.t.ppf(0.975, df=1) * np.std(xs, ddof=1) / np.sqrt(2)
        assert row[f"{value}_ci_low"] == pytest.approx(np.mean(xs) - half)
        assert row[f"{value}_ci_high"] == pytest.approx(np.mean(xs) + half)
    shown = tables.display(t2.reset_index()).set_index("mu_max")
    assert shown.loc[0.9, "before_cell"] == "0.6 ± 1.3" and shown.loc[0.9, "after_cell"] == "0.23 ± 0.38"


# --- Table 3 at the paper's settings, best lr per SI scale ------------------------------------------


def test_table3_specs_use_the_papers_settings_and_search_table1s_lr_grid():
    from study.report import load_published
    from study.spec.model import load_spec

    published = load_published()
    scales = [r["init_scale"] for r in published["table3"]]
    for name in ("table3_curves", "table3_curves_quick"):
        spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / f"{name}.yaml")
        assert spec.task == "curves" and spec.config["optimizer"] == "nag"
        assert spec.config["mu_max"] == published["table3_setting"]["mu_max"] == 0.999
        assert spec.search["init_scale"].values == scales
        # The paper's spec searches Table 1's lr grid; the quick one (10 minutes on 2 cores) runs
        # one lr of it (tests/test_quick_specs.py).
        lrs = spec.search["lr"].values if "lr" in spec.search else [spec.config["lr"]]
        assert set(lrs) <= set(published["scale"]["autoencoder"]["lr_grid"])
        if name == "table3_curves":
            assert "lr" not in spec.config and lrs == published["scale"]["autoencoder"]["lr_grid"]
    # the inference behind mu_max 0.999: Table 3 at scale 1 is Table 1's NAG mu_max = 0.999 entry
    assert published_value("table3", "curves", "nag", init_scale=1.0) == published_value(
        "table1", "curves", "nag", mu_max=0.999)


def test_table3_report_picks_the_best_lr_per_si_scale_and_says_which(tmp_path):
    trials = [
        ae_trial("a", "nag", 0.999, 0.01, [16.5, 16.7], init_scale=0.25),
        ae_trial("b", "nag", 0.999, 0.001, [16.9, 16.9], init_scale=0.25),
        ae_trial("c", "nag", 0.999, 0.01, [0.9, 0.9], init_scale=1.0),
        ae_trial("d", "nag", 0.999, 0.001, [0.2, 0.3], init_scale=1.0),
        ae_trial("e", "nag", 0.999, 0.01, [None, 0.1], init_scale=4.0),  # diverged once: not eligible
        ae_trial("f", "nag", 0.999, 0.001, [0.5, 0.5], init_scale=4.0),
    ]
    spec = {"config": {"optimizer": "nag", "mu_max": 0.999},
            "search": {"init_scale": {"type": "grid", "values": [0.25, 1.0, 4.0]},
                       "lr": {"type": "grid", "values": [0.01, 0.001]}}, "sampler": "grid", "repeats": 2}
    make_study(tmp_path, "t3", "curves", spec, trials)
    rep = build_report("t3", tmp_path, out_dir=tmp_path / "out")
    t3 = rep.tables["table3"].set_index("init_scale")
    assert list(t3.best_lr) == [0.01, 0.001, 0.001]
    assert t3.loc[1.0].error == pytest.approx(0.25) and t3.loc[1.0].paper == 0.074
    assert t3.loc[4.0].n_diverged == 1 and t3.loc[4.0].error == pytest.approx(0.5)
    assert "table1" not in rep.tables  # one optimizer and one mu_max: Table 3 alone
    md = rep.markdown.split("## Table 3", 1)[1].split("\n## ", 1)[0]
    assert "scale 0.25 -> lr 0.01, scale 1 -> lr 0.001, scale 4 -> lr 0.001" in md
    assert "| best lr |" in md and "mu_max differs" not in md and "Only one lr" not in md
    # the sensitivity to the SI scale carries the paper's Table 3 values
    assert _paper_points(rep.figures["sensitivity_init_scale"].axes[0], "paper") == [(0.25, 16.0), (1.0, 0.074),
                                                                                    (4.0, 0.35)]
    # at another mu_max, with a single lr, the report says so
    make_study(tmp_path, "t3b", "curves", {"search": {"init_scale": {"type": "grid", "values": [0.25, 1.0]}},
                                           "sampler": "grid", "repeats": 2},
               [ae_trial("g", "nag", 0.99, 0.01, [1, 1], init_scale=0.25),
                ae_trial("h", "nag", 0.99, 0.01, [1, 1], init_scale=1.0)])
    md = build_report("t3b", tmp_path, out_dir=tmp_path / "out-b").markdown
    assert "**mu_max differs from the paper's**: 0.99 here vs 0.999" in md and "**Only one lr was run**" in md


# --- sensitivity and importances ----------------------------------------------------------------


def test_sensitivity_best_and_median_and_log_axis(curves_study):
    root, _ = curves_study
    m = load_study("ae", root).members
    s = tables.sensitivity(m, "lr", {"type": "grid", "values": [0.01, 0.05]}).set_index("x")
    assert s.loc[0.01].best == pytest.approx(0.12) and s.loc[0.01].n_diverged == 2
    assert s.loc[0.05, "median"] == pytest.approx(0.26)  # 0.01, 0.2, 0.26, 0.5, 0.7 completed
    assert s.attrs["log"] is False  # 0.01..0.05 is less than a decade
    assert tables.axis_of("lr", {"type": "float", "log": True}, [0.01, 0.02]) == ("lr", True)
    assert tables.axis_of("lr", None, [1e-4, 1e-2]) == ("lr", True)
    assert tables.axis_of("mu_max", {"transform": "one_minus", "log": True}, [0.9]) == ("1 - mu_max", True)


def test_importances_skip_grids_and_too_few_trials_and_run_on_a_search(tmp_path):
    import optuna

    url = make_study(tmp_path, "tpe", "addition", {"search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                                       "log": True}}, "sampler": "tpe"}, [])
    _, why = tables.importances("tpe", url, {"search": {"lr": {}}, "sampler": {"type": "grid"}})
    assert "grid" in why
    study = optuna.create_study(study_name="tpe", storage=url)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "mu_0": optuna.distributions.CategoricalDistribution([0.0, 0.9])}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "mu_0": 0.0}, distributions=dists, value=0.5))
    _, why = tables.importances("tpe", url, {"search": {"lr": {}}, "sampler": {"type": "tpe"}})
    assert "1 completed" in why
    for i, lr in enumerate([2e-4, 5e-4, 2e-3, 5e-3, 8e-3]):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr, "mu_0": 0.9 if i % 2 else 0.0},
                                                  distributions=dists, value=lr * 10))
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-2, "mu_0": 0.9}, distributions=dists,
                                              value=math.inf))  # a diverged trial
    df, why = tables.importances("tpe", url, {"search": {"lr": {}, "mu_0": {}}, "sampler": {"type": "tpe"}})
    assert why is None and set(df.parameter) == {"lr", "mu_0"}
    assert df.set_index("parameter").importance.sum() == pytest.approx(1.0)


# --- figures ------------------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_figures_carry_the_right_axes_and_are_png(curves_study, tmp_path):
    root, _ = curves_study
    m = load_study("ae", root).members
    fig = table1_figure(tables.table1(m, "curves"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "1 - mu_max (log scale)" and ax.get_ylabel() == "final training squared error"
    assert _is_png(figures.save(fig, tmp_path / "t1.png"))
    fig = table3_figure(tables.table3(m.assign(init_scale=1.0), "curves"))
    assert fig.axes[0].get_xlabel() == "SI scale multiplier (log scale)" and fig.axes[0].get_xscale() == "log"
    s = tables.sensitivity(m, "lr", {"type": "float", "log": True})
    fig = sensitivity_figure(s, "autoencoder")
    assert fig.axes[0].get_xlabel() == "lr (log scale)" and fig.axes[0].get_xscale() == "log"
    assert fig.axes[0].get_ylabel() == "final training squared error"
    assert _is_png(figures.save(fig, tmp_path / "s.png"))


# --- figure properties (issue #13, "Figures") ------------------------------------------------------


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _drawn_tick_labels(axis):
    """The tick labels of one axis that are drawn: inside the view, visible, not empty."""
    lo, hi = sorted(axis.get_view_interval())
    span = max(abs(lo), abs(hi))
    out = []
    for ticks, locs in ((axis.get_major_ticks, axis.get_majorticklocs()),
                        (axis.get_minor_ticks, axis.get_minorticklocs())):
        for tick, loc in zip(ticks(len(locs)), locs):
            if lo - 1e-9 * span <= loc <= hi + 1e-9 * span and tick.get_visible():
                out += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text().strip()]
    return out


def overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels of the same axis whose renderer extents intersect."""
    renderer = _renderer(fig)
    pairs = []
    for ax in [a for parent in fig.axes for a in (parent, *parent.child_axes)]:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_tick_labels(axis)]
            for i, (ta, a) in enumerate(boxes):
                for tb, b in boxes[i + 1:]:
                    if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                        pairs.append((ta, tb))
    return pairs


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def _axvlines(ax) -> dict[float, str]:
    """x -> label of the vertical lines spanning the axes (axvline)."""
    out = {}
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 2 and x[0] == x[1] and list(y) == [0, 1]:
            out[float(x[0])] = line.get_label()
    return out


def _axhlines(ax) -> dict[str, float]:
    """label -> y of the horizontal lines spanning the axes (axhline)."""
    out = {}
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(y) == 2 and y[0] == y[1] and list(x) == [0, 1]:
            out[line.get_label()] = float(y[0])
    return out


def _momentum_members(mus: list[float], key: str = "mu_max") -> pd.DataFrame:
    rows = []
    for opt in ("nag", "cm"):
        for i, mu in enumerate(mus):
            for seed in (0, 1):
                rows.append({"optimizer": opt, key: mu, "lr": 0.01, "outcome": "completed", "seed": seed,
                             "final_error": 0.1 + 0.01 * i + 0.001 * seed + (0.05 if opt == "cm" else 0)})
    m = pd.DataFrame(rows)
    for c in ("mu_max", "mu_0", "init_scale", "spectral_radius", "task"):
        if c not in m:
            m[c] = None
    return m


def test_momentum_axes_are_one_minus_mu_on_a_log_scale_with_mu_on_top(curves_study):
    root, _ = curves_study
    m = load_study("ae", root).members
    for fig in (table1_figure(tables.table1(m, "curves")),
                sensitivity_figure(tables.sensitivity(m, "mu_max", {"type": "grid", "values": [0.9, 0.99]}),
                                   "autoencoder")):
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "1 - mu_max (log scale)"
        plotted = {round(float(x), 9) for line in ax.get_lines() for x in line.get_xdata()}
        assert {0.1, 0.01} <= plotted and not plotted & {0.9, 0.99}
        top = ax.child_axes[0]
        assert top.get_xlabel() == "mu_max"
        assert [t.get_text() for t in _drawn_tick_labels(top.xaxis)] == ["0.99", "0.9"]
        assert [t.get_text() for t in _drawn_tick_labels(ax.xaxis)] == ["0.01", "0.1"]
    s = tables.sensitivity(m, "mu_max", {"type": "grid", "values": [0.9, 0.99]})
    assert s.attrs["label"] == "1 - mu_max" and list(s["x"].round(9)) == [0.01, 0.1]


def test_tick_labels_never_overlap_even_on_crowded_axes():
    from matplotlib.figure import Figure

    # The check itself finds overlaps: ticks 1% apart on a 6-inch axis cannot all be read.
    crowded = Figure(figsize=(6, 4))
    ax = crowded.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_xticks([i / 100 for i in range(0, 101, 2)], [f"{i / 100:.2f}" for i in range(0, 101, 2)])
    assert overlapping_tick_labels(crowded)
    assert not overlapping_tick_labels(tidy(crowded))
    # mu near 1: 1 - mu = 0.001, 0.002, 0.005 ... crowd the log axis, and the mu labels on top
    mus = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995]
    t1 = tables.table1(_momentum_members(mus), "curves")
    fig = table1_figure(t1)
    assert overlapping_tick_labels(fig) == []
    assert len(_drawn_tick_labels(fig.axes[0].xaxis)) >= 4  # thinned, not emptied
    lr = _momentum_members([0.9]).assign(lr=lambda d: [10 ** -(1 + i / 7) for i in range(len(d))])
    s = tables.sensitivity(lr, "lr", {"type": "float", "low": 1e-4, "high": 0.1, "log": True})
    assert overlapping_tick_labels(sensitivity_figure(s, "autoencoder")) == []
    categories = pd.DataFrame({"optimizer": [f"a_very_long_optimizer_name_{i}" for i in range(9)], "lr": 0.01,
                               "outcome": "completed", "final_error": range(1, 10)})
    s = tables.sensitivity(categories, "optimizer", {"type": "grid", "values": list(categories.optimizer)})
    assert overlapping_tick_labels(sensitivity_figure(s, "rnn")) == []


def test_legends_show_rounded_values(tmp_path):
    trials = [rnn_trial("a", "nag", 0.98765432, [0, 1], [0.1, 0.2], lr=0.0031622776601683794),
              rnn_trial("b", "nag", 0.9, [0, 1], [0.3, 0.4])]
    trials[0]["config"]["spectral_radius"] = 1.1234567
    make_study(tmp_path, "r", "addition", {"search": {"mu_0": {"type": "float", "low": 0.9, "high": 0.99}},
                                           "sampler": "tpe"}, trials)
    rep = build_report("r", tmp_path, out_dir=tmp_path / "out")
    texts = _legend_texts(rep.figures["curves"])
    assert "mu_0=0.988, spectral_radius=1.12" in texts and "mu_0=0.9, spectral_radius=1.1" in texts
    for fig in rep.figures.values():
        for text in _legend_texts(fig):
            assert not re.search(r"\d\.\d{5,}", text), text
    assert fmt_value(0.9995, "mu_0") == "0.9995" and fmt_value(0.0, "mu_max") == "0"
    assert fmt_value(0.0031622776601683794, "lr") == "0.00316"


def test_categorical_parameters_are_points_not_joined_lines(curves_study):
    root, _ = curves_study
    m = load_study("ae", root).members
    cat = sensitivity_figure(tables.sensitivity(m, "optimizer", {"type": "grid", "values": ["nag", "cm"]}),
                             "autoencoder")
    data_lines = [ln for ln in cat.axes[0].get_lines() if ln.get_label() in ("best", "median")]
    assert len(data_lines) == 2 and all(len(ln.get_xdata()) == 2 for ln in data_lines)
    assert all(ln.get_linestyle() == "None" and ln.get_marker() not in ("None", "") for ln in data_lines)
    assert [t.get_text() for t in _drawn_tick_labels(cat.axes[0].xaxis)] == ["cm", "nag"]
    # A numeric search of type categorical has no order either; a numeric grid is joined.
    num = tables.sensitivity(m, "lr", {"type": "categorical", "values": [0.01, 0.05]})
    lines = sensitivity_figure(num, "autoencoder").axes[0].get_lines()
    assert all(ln.get_linestyle() == "None" for ln in lines if ln.get_label() in ("best", "median"))
    grid = tables.sensitivity(m, "lr", {"type": "grid", "values": [0.01, 0.05]})
    lines = sensitivity_figure(grid, "autoencoder").axes[0].get_lines()
    assert {ln.get_linestyle() for ln in lines if ln.get_label() in ("best", "median")} == {"-", "--"}


def _paper_points(ax, label_part: str) -> list[tuple[float, float]]:
    out = []
    for c in ax.collections:
        if label_part in c.get_label():
            out += [tuple(map(float, xy)) for xy in c.get_offsets()]
    for ln in ax.get_lines():
        if label_part in ln.get_label():
            out += list(zip(map(float, ln.get_xdata()), map(float, ln.get_ydata())))
    return sorted({(round(x, 9), y) for x, y in out})


def test_every_figure_with_published_values_shows_them(curves_study, addition_study, tmp_path):
    root, _ = curves_study
    rep = build_report("ae", root, out_dir=tmp_path / "ae")
    ax1 = rep.figures["table1"].axes[0]
    assert _paper_points(ax1, "NAG (paper)") == [(0.01, 0.096), (0.1, 0.16)]
    assert _paper_points(ax1, "CM (paper)") == [(0.01, 0.10), (0.1, 0.15)]
    # Table 2: the paper's before/after at its best mu_max (0.999 for curves, Table 1's best NAG)
    ax2 = rep.figures["table2"].axes[0]
    assert _paper_points(ax2, "paper before") == [(0.001, 0.096)]
    assert _paper_points(ax2, "paper after") == [(0.001, 0.074)]
    # sensitivity to mu_max: the paper's best of NAG and CM at each mu_max run
    axs = rep.figures["sensitivity_mu_max"].axes[0]
    assert _paper_points(axs, "paper") == [(0.01, 0.096), (0.1, 0.15)]
    assert list(rep.tables["sensitivity_mu_max"]["paper"]) == [0.096, 0.15]
    # the lr has no published values: nothing labelled paper
    assert not _paper_points(rep.figures["sensitivity_lr"].axes[0], "paper")
    t3 = table3_figure(tables.table3(load_study("ae", root).members.assign(init_scale=1.0), "curves"))
    assert _paper_points(t3.axes[0], "paper") == [(1.0, 0.074)]
    rnn = build_report("add", addition_study, out_dir=tmp_path / "add")
    assert _paper_points(rnn.figures["table5"].axes[0], "NAG (paper)") == [(0.1, 0.02)]  # NAG ran mu_0 = 0.9 only
    assert _paper_points(rnn.figures["table5"].axes[0], "CM (paper)") == [(0.1, 0.43), (1.0, 0.39)]
    assert _axhlines(rnn.figures["curves"].axes[0])["bias-only, paper Table 5: 0.82"] == 0.82


def test_learning_curves_mark_the_rnn_warmup_and_the_bias_only_level(addition_study, tmp_path):
    from study.report.bias_only import bias_only_error

    rep = build_report("add", addition_study, out_dir=tmp_path / "out")
    ax = rep.figures["curves"].axes[0]
    # sec. 4.2: mu = 0.9 for the first 1000 updates, then mu_0; these runs have 2000
    assert _axvlines(ax) == {1000.0: "mu = 0.9 -> mu_0 (update 1,000)"}
    level = bias_only_error({"task": "addition", "seq_length": 20})[0]
    # predicting the target mean 1 of v_I + v_J (triangular on [0, 2]) is within 0.04 with
    # probability 0.08 - 0.04^2: the zero-one error is 0.9216 in expectation
    assert level == pytest.approx(0.9216, abs=0.015)
    assert _axhlines(ax)[f"bias-only, mean output, T=20: {fmt_value(level)}"] == level
    assert "mu = 0.9 -> mu_0" in rep.markdown and "bias-only" in rep.markdown
    assert overlapping_tick_labels(rep.figures["curves"]) == []


def test_memorization_bias_only_level_is_the_papers_bias_row():
    from study.report.bias_only import bias_only_error

    # one fixed symbol gets n (1 - 1/alphabet) symbols wrong: Table 5's bias row, 2.5 and 8.0
    assert bias_only_error({"task": "mem5"})[0] == pytest.approx(2.5, abs=0.06)
    assert bias_only_error({"task": "mem20"})[0] == pytest.approx(8.0, abs=0.1)


def test_learning_curves_mark_the_final_phase_and_the_mean_image_level(curves_study, tmp_path):
    from trainables.data.curves_replica import make_curves

    root, _ = curves_study
    rep = build_report("ae", root, out_dir=tmp_path / "out")
    ax = rep.figures["curves"].axes[0]
    # 1000 updates: the final low-momentum phase is the last 100 (default_final_updates)
    assert _axvlines(ax) == {900.0: "final phase, mu <= 0.9 (from update 900)"}
    x = make_curves(2000, seed=0).astype("float64")  # the study's 2,000 training cases, all scored
    mean_image_error = float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
    levels = _axhlines(ax)
    assert list(levels.values()) == [pytest.approx(mean_image_error, rel=1e-9)]
    assert list(levels)[0].startswith("bias-only, mean image: ")
    # no data, no level: an original data set that is not on this machine is said, not guessed
    trials = [ae_trial("o", "nag", 0.9, 0.01, [0.3, 0.3])]
    trials[0]["config"].update(dataset="original", data_dir=str(tmp_path / "nothing-here"))
    trials[0]["config"].pop("train_cases")
    make_study(tmp_path, "orig", "mnist", {"search": {}, "sampler": "grid"}, trials)
    orig = build_report("orig", tmp_path, out_dir=tmp_path / "orig-out")
    assert _axhlines(orig.figures["curves"].axes[0]) == {}
    assert "no bias-only level: the mnist data could not be read here" in orig.markdown


def test_importances_and_slice_figures_are_optunas(tmp_path):
    import optuna

    spec = {"search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                       "mu_0": {"type": "float", "low": 1e-3, "high": 0.5, "log": True, "transform": "one_minus"}},
            "sampler": {"type": "tpe"}}
    url = make_study(tmp_path, "tpe", "addition", spec, [])
    study = optuna.create_study(study_name="tpe", storage=url)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "one_minus_mu_0": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)}
    for i, lr in enumerate([2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 8e-3]):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr, "one_minus_mu_0": 0.5 / (i + 1)},
                                                  distributions=dists, value=lr * 10))
    finite, why = tables.finite_optuna_study("tpe", url, spec)
    imp, _ = tables.importances("tpe", url, spec)
    fig = importance_figure(finite, tables.importance_evaluator())
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "Hyperparameter Importances"  # Optuna's plot_param_importances
    widths = sorted(round(p.get_width(), 2) for p in ax.patches)
    assert widths == sorted(round(v, 2) for v in imp.importance)  # the same numbers as importances.csv
    sl = optuna_slice_figure(finite)
    assert sl.get_suptitle() == "Slice Plot"
    assert {a.get_xlabel() for a in sl.axes} >= {"lr", "one_minus_mu_0"}
    # Optuna's ggplot style did not leak into the report's other figures
    import matplotlib

    assert matplotlib.rcParams["axes.facecolor"] == "white"


# --- the whole report, MLflow and the command line ------------------------------------------------


def test_report_writes_markdown_csv_png_with_scale_and_paper(addition_study, tmp_path):
    rep = build_report("add", addition_study, out_dir=tmp_path / "out")
    out = tmp_path / "out"
    for name in ("report.md", "table5.csv", "table5.png", "curves.png", "sensitivity_mu_0.png",
                 "sensitivity_lr.csv", "members.csv"):
        assert (out / name).is_file(), name
    assert _is_png(out / "table5.png")
    assert rep.figures["table5"].axes[0].get_ylabel() == "final zero-one error"
    assert rep.figures["table5"].axes[0].get_xlabel() == "1 - mu_0 (log scale)"
    csv = pd.read_csv(out / "table5.csv")
    assert list(csv.sort_values(["optimizer", "mu_0"]).result) == ["ok", "diverged", "ok"]
    md = (out / "report.md").read_text()
    assert "updates: 2,000 here vs 50,000 in the paper" in md
    assert "sequence length T: 20 here vs 80 in the paper" in md
    assert "seeds: 3 here vs 4 in the paper" in md
    assert "diverged (1/2)" in md and "| 0.43 |" in md
    assert "Importances skipped: a grid study" in md


def test_report_states_the_autoencoder_data_set_scale(curves_study, tmp_path):
    root, _ = curves_study
    rep = build_report("ae", root, out_dir=tmp_path / "r")
    assert "data set: curves-replica (procedural) here vs original Curves (digs3pts_1.mat) in the paper" in rep.markdown
    assert "training cases: 2,000 here vs 20,000 in the paper" in rep.markdown
    assert {"table1", "table2"} <= set(rep.tables) and "table3" not in rep.tables


def test_report_is_logged_on_the_mlflow_parent_run(addition_study, tmp_path):
    from mlflow.tracking import MlflowClient

    rep = build_report("add", addition_study, out_dir=tmp_path / "out")
    run_id = log_to_mlflow(rep)
    data = load_study("add", addition_study)
    assert run_id == data.mlflow_parent_run_id
    client = MlflowClient(tracking_uri=data.mlflow_uri)
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    assert {"report.md", "table5.csv", "table5.png", "members.csv"} <= names
    local = Path(client.download_artifacts(run_id, "report/table5.png", str(tmp_path / "dl")))
    assert _is_png(local)


def test_cli_report_default_out_dir_and_mlflow(addition_study):
    proc = subprocess.run([STUDY_BIN, "report", "add", "--dir", str(addition_study)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (addition_study / "add" / "report" / "report.md").is_file()
    assert "logged as artifacts report/ of MLflow parent run" in proc.stdout
    # The findings' verdicts, with why: this study never ran mu_0 = 0.995; a finding none of whose
    # cells it ran (NAG against CM at 0.995) is not one it can judge, and is not listed.
    assert re.search(r"finding: table5 addition: NAG mu_0 0\.995 beats 0\.9: not testable \(NAG mu_0=0\.995 was "
                     r"not run", proc.stdout.replace("\n", " ")), proc.stdout
    assert "NAG beats CM at mu_0 0.995" not in proc.stdout
    missing = study_in_process("report", "nope", "--dir", str(addition_study))  # a refusal: the same code in process
    assert missing.returncode == 2 and "nope" in missing.stderr


def _members(errors_by_lr: dict[float, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"optimizer": "nag", "lr": lr, "outcome": "completed", "final_error": e}
                         for lr, errors in errors_by_lr.items() for e in errors])


def test_a_best_lr_at_the_edge_is_flagged_unless_a_tie_inside_or_the_floor_brackets_it():
    row = tables.best_over(_members({1e-3: [0.5, 0.6], 1e-2: [0.7, 0.8], 1e-1: [0.9, 0.9]}), ["optimizer"]).iloc[0]
    assert row["best_lr"] == 1e-3 and row["best_lr_at_edge"]
    row = tables.best_over(_members({1e-3: [0.8, 0.8], 1e-2: [0.5, 0.6], 1e-1: [0.9, 0.9]}), ["optimizer"]).iloc[0]
    assert row["best_lr"] == 1e-2 and not row["best_lr_at_edge"]
    # the edge and an inner lr reach the same lowest mean: the inner one is the best, established
    row = tables.best_over(_members({1e-5: [0.0, 0.2], 1e-4: [0.1, 0.1], 1e-3: [0.9, 0.9]}), ["optimizer"]).iloc[0]
    assert row["best_lr"] == 1e-4 and not row["best_lr_at_edge"]
    # error 0 on every seed at the edge: nothing beyond the grid can do better
    row = tables.best_over(_members({1e-5: [0.0, 0.0], 1e-4: [0.1, 0.3], 1e-3: [0.9, 0.9]}), ["optimizer"]).iloc[0]
    assert row["best_lr"] == 1e-5 and row["error"] == 0 and not row["best_lr_at_edge"]


def test_a_cell_that_learns_at_no_lr_tried_has_no_edge_to_widen_and_is_marked():
    """On the bias-only plateau at every lr (addition's level is about 0.92), the lowest mean is
    noise: no edge flag, the ‡ mark instead. A cell that learns keeps its edge flag."""
    data = {"task": "addition", "seq_length": 20, "eval_cases": 1000}
    flat = _members({1e-3: [0.91, 0.915], 1e-2: [0.92, 0.92], 1e-1: [0.93, 0.925]}).assign(**data)
    row = tables.best_over(flat, ["optimizer"]).iloc[0]
    assert row["best_lr"] == 1e-3 and not row["best_lr_at_edge"] and row["learns_at_no_lr"]
    assert tables.display(tables.best_over(flat, ["optimizer"]))["best_lr"].iloc[0] == "0.001 ‡"
    learning = _members({1e-3: [0.1, 0.12], 1e-2: [0.5, 0.6], 1e-1: [0.93, 0.925]}).assign(**data)
    row = tables.best_over(learning, ["optimizer"]).iloc[0]
    assert row["best_lr_at_edge"] and not row["learns_at_no_lr"]
