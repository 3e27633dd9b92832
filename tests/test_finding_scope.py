"""Which of the paper's findings a report lists: only those whose cells the study ran at least one
of, and a protocol that rules a whole table out said once per finding, not once per row group
(the main example's report listed 18 "not testable" rows for Table 5 findings about NAG against
CM and mu_0, which it never varied)."""

from __future__ import annotations

from study.report import load_study, tables
from study.report.finding_verdicts import evaluate

from test_report import make_study, rnn_trial

SEEDS = [0, 1]


def _study(tmp_path, name, trials, spec):
    make_study(tmp_path, name, "addition", spec, trials)
    m = load_study(name, tmp_path).members
    return m, tables.table5(m, "addition")


def test_a_finding_about_settings_the_study_never_ran_is_not_listed(tmp_path):
    spec = {"config": {"updates": 2000}, "sampler": "grid",
            "search": {"mu_0": {"type": "grid", "values": [0.0, 0.9]}}}
    trials = [rnn_trial(f"c{mu}", "cm", mu, SEEDS, [0.5, 0.6]) for mu in (0.0, 0.9)]
    m, t5 = _study(tmp_path, "cm_only", trials, spec)
    listed = {r["finding"] for r in evaluate("table5", t5, m, "addition")}
    # CM alone: NAG's cells were never run, so no Table 5 finding (each compares a NAG cell with
    # another NAG cell or with CM at 0.995, which was not run either) can be judged.
    assert listed == set()


def test_a_schedule_that_rules_the_table_out_is_said_once_per_finding(tmp_path):
    spec = {"config": {"updates": 2000, "momentum_schedule": "constant"}, "sampler": "grid",
            "search": {"mu_0": {"type": "grid", "values": [0.0, 0.995]},
                       "spectral_radius": {"type": "grid", "values": [1.1, 0.5]}}}
    trials = [rnn_trial(f"n{mu}-{r}", "nag", mu, SEEDS, [0.5, 0.6], spectral_radius=r, momentum_schedule="constant")
              for mu in (0.0, 0.995) for r in (1.1, 0.5)]
    m, t5 = _study(tmp_path, "constant", trials, spec)
    rows = evaluate("table5", t5, m, "addition")
    findings = [r["finding"] for r in rows]
    assert "NAG mu_0 0.995 beats 0" in findings
    assert len(findings) == len(set(findings))  # not once per spectral radius
    assert all(r["verdict"] == "not testable" and "constant" in r["why"] for r in rows)
