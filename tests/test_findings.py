"""The rule that turns per-seed values into a verdict on one of the paper's findings
(study/report/findings.py), checked against intervals computed here with numpy and scipy's t
quantiles, and the findings' data against the published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from study.report.findings import (AGAINST, CONTRADICTED, DIRECTION, FINDINGS, HOLDS, NOT_TESTABLE, OUTCOMES,
                                   decide)
from study.report.finding_verdicts import paper_best_mu_max
from study.report.published import published_row, published_value


def interval(values):
    """The 95% Student t interval of the mean, computed independently of study.report.stats."""
    x = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean() - half, x.mean() + half


# The docs/results case of issue 22 (table1_long_small_lr: NAG, lr 0.002, seeds 0 and 1).
MU_995 = {0: 0.242608, 1: 0.232532}
MU_99 = {0: 0.355333, 1: 0.336324}


def test_the_docs_case_intervals_overlap_so_unpaired_it_is_a_direction_not_holds():
    low_b, high_b = interval(list(MU_995.values()))
    low_w, high_w = interval(list(MU_99.values()))
    assert (round(low_b, 3), round(high_b, 3)) == (0.174, 0.302)
    assert (round(low_w, 3), round(high_w, 3)) == (0.225, 0.467)
    v = decide(list(MU_995.values()), list(MU_99.values()))  # lists: no pairing by seed
    assert v.outcome == DIRECTION and "overlap" in v.reason
    assert v.better.low == pytest.approx(low_b) and v.worse.high == pytest.approx(high_w)


def test_the_same_seeds_in_both_cells_are_compared_paired():
    # Seed by seed, 0.99 is above 0.995 by 0.1127 and 0.1038: the paired t interval of the
    # differences, [0.052, 0.165], excludes 0 although the two cells' intervals overlap.
    diffs = [MU_99[s] - MU_995[s] for s in (0, 1)]
    low, high = interval(diffs)
    assert low > 0
    v = decide(MU_995, MU_99)
    assert v.outcome == HOLDS and "paired" in v.reason
    assert (v.paired.n, v.paired.low, v.paired.high) == (2, pytest.approx(low), pytest.approx(high))
    # Against the paper the same differences contradict it.
    assert decide(MU_99, MU_995).outcome == CONTRADICTED


def test_only_common_seeds_are_paired():
    # Seeds 2 and 3 differ: one common seed is no paired interval, and the intervals overlap.
    v = decide({0: 0.242608, 2: 0.30}, {0: 0.355333, 3: 0.30})
    assert v.paired is None and v.outcome == DIRECTION


def test_separate_intervals_hold_or_contradict():
    better, worse = [0.10, 0.12, 0.11], [0.50, 0.55, 0.52]
    assert interval(better)[1] < interval(worse)[0]
    v = decide(better, worse)
    assert v.outcome == HOLDS and "separate in the paper's direction" in v.reason
    assert v.better.mean == pytest.approx(0.11) and v.better.n == 3
    v = decide(worse, better)
    assert v.outcome == CONTRADICTED and "against the paper" in v.reason


def test_overlapping_intervals_with_means_against_the_paper():
    better, worse = [0.30, 0.50], [0.28, 0.46]  # worse has the lower mean; unpaired
    assert interval(better)[0] < interval(worse)[1]
    v = decide(better, worse)
    assert v.outcome == AGAINST and "do not agree" in v.reason


def test_paired_differences_that_straddle_zero_leave_the_direction():
    v = decide({0: 0.20, 1: 0.30}, {0: 0.35, 1: 0.28})  # differences 0.15 and -0.02
    low, high = interval([0.15, -0.02])
    assert low < 0 < high and v.outcome == DIRECTION and "paired interval includes 0" in v.reason


def test_fewer_than_two_seeds_or_a_given_reason_is_not_testable():
    v = decide([0.1], [0.5, 0.6])
    assert v.outcome == NOT_TESTABLE and "fewer than 2 seeds" in v.reason and "n=1" in v.reason
    v = decide([0.10, 0.12, 0.11], [0.50, 0.55, 0.52], "the best lr is at the edge of its grid")
    assert v.outcome == NOT_TESTABLE and v.reason == "the best lr is at the edge of its grid"
    assert v.better.n == 3  # the figures are still shown
    assert decide([], [0.5, 0.6]).outcome == NOT_TESTABLE


def test_every_outcome_is_reachable():
    reached = {decide([0.1, 0.11], [0.9, 0.91]).outcome, decide([0.9, 0.91], [0.1, 0.11]).outcome,
               decide([0.2, 0.4], [0.3, 0.5]).outcome, decide([0.3, 0.5], [0.2, 0.4]).outcome,
               decide([0.1], [0.2]).outcome}
    assert reached == set(OUTCOMES)


def test_every_finding_is_the_papers_own_direction():
    """Each finding's better cell has the lower published value for each of its problems."""
    assert FINDINGS
    for f in FINDINGS:
        for task in f.tasks:
            if f.table == "table2":
                row = published_row("table2", task)
                assert row["after"] < row["before"], (f.key, task)
                assert paper_best_mu_max(task) is not None
                continue
            axis = next(k for k in f.better if k != "optimizer")
            b = published_value(f.table, task, f.better["optimizer"], **{axis: float(f.better[axis])})
            w = published_value(f.table, task, f.worse["optimizer"], **{axis: float(f.worse[axis])})
            assert b is not None and w is not None and b < w, (f.key, task, b, w)


def test_both_cells_at_the_error_floor_on_every_seed_is_not_testable():
    v = decide({0: 0.0, 1: 0.0}, {0: 0.0, 1: 0.0})
    assert v.outcome == NOT_TESTABLE and "error 0 on every seed" in v.reason
    # one cell at 0, the other not: decided as usual
    assert decide({0: 0.0, 1: 0.0, 2: 0.0}, {0: 0.5, 1: 0.51, 2: 0.52}).outcome == HOLDS
