"""Reports judge the paper's findings, flag best values at a grid's edge, tell pruned from failed,
and print paper values only where the protocol matches (issue 22): small synthetic results sets
in real SQLite files, read back through `study report`'s own code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.report import build_report, load_study, tables
from study.report.finding_verdicts import evaluate
from study.report.importances import few_trials_caveat
from study.report.sections import paper_tables

from test_report import make_study, rnn_trial

SPEC = {"config": {"updates": 2000, "seq_length": 20}, "sampler": "grid",
        "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                   "mu_0": {"type": "grid", "values": [0.0, 0.9, 0.995]},
                   "lr": {"type": "grid", "values": [0.0001, 0.001, 0.01]}}}
SEEDS = [0, 1, 2]


def pruned_trial(tid: str, optimizer: str, mu_0: float, lr: float) -> dict:
    """A configuration ASHA stopped at its first rung (a report at 1000 of 2000 updates)."""
    t = rnn_trial(tid, optimizer, mu_0, SEEDS, [0.5] * 3, lr=lr)
    return {**t, "state": "pruned", "points": {1000: [(0.8, "running")] * 3}}


@pytest.fixture
def table5_study(tmp_path):
    """NAG at mu_0 0.995 is best at the middle lr and clearly below CM (holds); NAG at mu_0 0 is
    best at the largest lr tried (an edge: its finding is not testable); NAG at 0.9 was pruned."""
    trials = []
    for lr, nag995, cm995, nag0 in ((0.0001, 0.30, 0.70, 0.90), (0.001, 0.01, 0.50, 0.80), (0.01, 0.60, 0.90, 0.40)):
        trials += [rnn_trial(f"n995-{lr}", "nag", 0.995, SEEDS, [nag995, nag995 + 0.01, nag995 + 0.02], lr=lr),
                   rnn_trial(f"c995-{lr}", "cm", 0.995, SEEDS, [cm995, cm995 + 0.02, cm995 + 0.01], lr=lr),
                   rnn_trial(f"n0-{lr}", "nag", 0.0, SEEDS, [nag0, nag0 + 0.01, nag0 - 0.01], lr=lr),
                   pruned_trial(f"n9-{lr}", "nag", 0.9, lr)]
    make_study(tmp_path, "t5", "addition", SPEC, trials)
    return tmp_path


def test_verdicts_are_computed_from_the_cells_and_say_why_not(table5_study):
    m = load_study("t5", table5_study).members
    t5 = tables.table5(m, "addition")
    verdicts = {r["finding"]: r for r in evaluate("table5", t5, m, "addition")}
    beats_cm = verdicts["NAG beats CM at mu_0 0.995"]
    assert beats_cm["verdict"] == "holds" and beats_cm["better_n"] == 3
    assert beats_cm["better_mean"] == pytest.approx(0.02) and beats_cm["worse_mean"] == pytest.approx(0.51)
    assert "0.02 [" in beats_cm["figures"] and "n=3" in beats_cm["figures"]
    # NAG at mu_0 = 0 was best at lr 0.01, the largest tried: its best lr is not established.
    edge = verdicts["NAG mu_0 0.995 beats 0"]
    assert edge["verdict"] == "not testable" and "edge" in edge["why"] and "0.01" in edge["why"]
    assert edge["worse_mean"] == pytest.approx(0.40)  # the figures are still shown
    pruned = verdicts["NAG mu_0 0.995 beats 0.9"]
    assert pruned["verdict"] == "not testable" and "pruned" in pruned["why"]


def test_a_best_lr_at_the_edge_of_its_grid_is_marked_with_a_legend(table5_study):
    m = load_study("t5", table5_study).members
    t5 = tables.table5(m, "addition").set_index(["optimizer", "mu_0"])
    assert bool(t5.loc[("nag", 0.0), "best_lr_at_edge"]) and t5.loc[("nag", 0.0), "best_lr"] == 0.01
    assert not t5.loc[("nag", 0.995), "best_lr_at_edge"] and not t5.loc[("cm", 0.995), "best_lr_at_edge"]
    shown = tables.display(t5.reset_index()).set_index(["optimizer", "mu_0"])
    assert shown.loc[("nag", 0.0), "best_lr"] == f"0.01 {tables.EDGE_MARK}"
    assert shown.loc[("nag", 0.995), "best_lr"] == 0.001
    (sec,) = paper_tables(m, "addition")
    assert f"{tables.EDGE_MARK} **best lr at the edge of the lrs tried** (1 of 4 rows)" in sec.note
    # One lr run is no grid, so no edge.
    assert not tables.at_edge(0.005, [0.005]) and tables.at_edge(1e-4, [1e-4, 1e-3]) and \
        not tables.at_edge(1e-3, [1e-4, 1e-3, 1e-2])


def test_pruned_configurations_are_shown_as_pruned_not_failed(table5_study):
    m = load_study("t5", table5_study).members
    t5 = tables.table5(m, "addition").set_index(["optimizer", "mu_0"])
    row = t5.loc[("nag", 0.9)]
    assert row.result == "pruned" and row.n_pruned == 9 and row.n_failed == 0 and row.n_diverged == 0
    assert tables.display(t5.reset_index()).set_index(["optimizer", "mu_0"]).loc[("nag", 0.9), "result_cell"] \
        == "pruned (9/9)"
    s = tables.sensitivity(m, "mu_0", SPEC["search"]["mu_0"])
    at_09 = s[np.isclose(s["x"], 0.1)].iloc[0]  # x is 1 - mu_0
    assert at_09.n_pruned == 9 and at_09.n_failed == 0
    (sec,) = paper_tables(m, "addition")
    ax = sec.figure.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "pruned by the scheduler (runs)" in labels and "diverged / failed (runs)" not in labels
    assert "9/9" in [t.get_text() for t in ax.texts]


def test_the_report_writes_and_prints_the_verdicts(table5_study, tmp_path):
    rep = build_report("t5", table5_study, out_dir=tmp_path / "out")
    md = rep.markdown
    assert "## Findings: verdicts computed from the numbers" in md and (tmp_path / "out" / "findings.csv").exists()
    assert rep.tables["findings"].set_index("finding").loc["NAG beats CM at mu_0 0.995", "verdict"] == "holds"
    line = next(v for v in rep.verdicts if "NAG beats CM at mu_0 0.995" in v)
    assert "holds" in line and "paired worse - better" in line and "n=3" in line


def constant_trial(tid: str, mu_max: float, finals: list, updates: int = 2000) -> dict:
    t = rnn_trial(tid, "nag", 0.9, [0, 1], finals, lr=0.005, mu_max=mu_max, momentum_schedule="constant",
                  updates=updates)
    return t


def test_a_constant_schedule_is_tabled_by_its_momentum_without_the_papers_mu_0_values(tmp_path):
    """The main example (search_spaces/quick.yaml) runs mu = mu_max from the first update: mu_0
    is never read, the rows are per mu_max, and the paper's Table 5 (RNN schedule, T = 80,
    50,000 updates) is not printed beside them."""
    trials = [constant_trial("m0", 0.0, [0.9, 0.92]), constant_trial("m99", 0.99, [0.02, 0.05])]
    spec = {"config": {"momentum_schedule": "constant", "updates": 2000},
            "search": {"mu_max": {"type": "grid", "values": [0.0, 0.99]}}, "sampler": "grid"}
    make_study(tmp_path, "quick", "addition", spec, trials)
    m = load_study("quick", tmp_path).members
    (sec,) = paper_tables(m, "addition")
    assert "mu_max" in sec.table and sec.table["paper"].isna().all()
    assert "mu_0 is not used" in sec.note and "after the" not in sec.note
    assert "No paper value is printed" in sec.note and "constant" in sec.note
    # The figure places the configurations at 1 - mu_max (1 and 0.01), not at mu_0's 0.1.
    xs = sorted(x for line in sec.figure.axes[0].lines for x in np.atleast_1d(line.get_xdata()))
    assert xs and min(xs) == pytest.approx(0.01) and not any(math.isclose(x, 0.1) for x in xs)
    verdicts = evaluate("table5", sec.table, m, "addition")
    assert verdicts and all(v["verdict"] == "not testable" and "constant" in v["why"] for v in verdicts)


def test_runs_inside_the_warm_up_get_no_paper_value_and_no_verdict(tmp_path):
    trials = [rnn_trial(f"{o}{mu}", o, mu, [0, 1], [0.9, 0.91], updates=500, report_every=250)
              for o in ("nag", "cm") for mu in (0.995,)]
    for t in trials:
        t["points"] = {250: [(0.95, "running")] * 2, 500: [(0.9, "completed"), (0.91, "completed")]}
    make_study(tmp_path, "short", "addition", {"config": {"updates": 500}, "sampler": "grid",
                                               "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]}}},
               trials)
    m = load_study("short", tmp_path).members
    (sec,) = paper_tables(m, "addition")
    assert sec.table["paper"].isna().all() and "warm-up" in sec.note
    verdicts = evaluate("table5", sec.table, m, "addition")
    assert len(verdicts) == 3 and all(v["verdict"] == "not testable" and "warm-up" in v["why"] for v in verdicts)


def test_importances_from_few_trials_carry_a_caveat_naming_the_count():
    caveat = few_trials_caveat(2, 1)
    assert "2 finite trials" in caveat and "fewer than 20" in caveat
    assert "fewer than 30" in few_trials_caveat(25, 3)
    assert few_trials_caveat(20, 2) is None and few_trials_caveat(30, 3) is None
