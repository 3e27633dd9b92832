"""The best learning rate of each cell of a paper table, as the paper chooses it, with what makes
it established or not.

A cell's result is the mean final training error over its seeds at the lr with the lowest such
mean (Tables 1 and 5: "the fixed learning rate that gave the best performance"); an lr where any
seed diverged, failed or was pruned is no candidate. A best lr at the lowest or highest lr tried
is flagged (``best_lr_at_edge``, † in the Markdown: the optimum may lie beyond the grid) unless a
tie with an inner lr or the error's floor (0) brackets it; a cell that learns at no lr tried is
marked instead (``learns_at_no_lr``, ‡: study/report/learning_range.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from study.report.learning_range import bias_only_of, learns_at_no_lr
from study.report.stats import fmt, mean_interval, or_none

# Pruned (stopped early by the scheduler, e.g. ASHA) is counted apart from failed (crashed) and
# unfinished (running, pending): a pruned member did not fail, it was judged unpromising.
UNFINISHED_OUTCOMES = ("failed", "running", "pending")
# The mark of a best value at the edge of the values tried (tables and legend).
EDGE_MARK = "†"
# The mark of a cell that learns at no lr tried (study/report/learning_range.py), and its column.
FLAT_MARK = "‡"
LEARNS_AT_NO_LR = "learns_at_no_lr"


def lr_candidates(group: pd.DataFrame, select: str = "lr") -> pd.DataFrame:
    """Per learning rate: seeds, outcome counts and the mean, sample sd (n - 1), 95% interval,
    min and max of the final error over seeds.

    ``clean`` is True where every member completed: only those rates can be "best".
    """
    rows = []
    for value, g in group.groupby(select, dropna=False, sort=True):
        done = g[g["outcome"] == "completed"]["final_error"].astype(float)
        n = len(g)
        n_div = int((g["outcome"] == "diverged").sum())
        n_pruned = int((g["outcome"] == "pruned").sum())
        n_fail = int(g["outcome"].isin(UNFINISHED_OUTCOMES).sum())
        clean = n_div == 0 and n_fail == 0 and n_pruned == 0 and len(done) == n and n > 0
        mean, sd, low, high = mean_interval(done) if clean else (math.nan,) * 4
        rows.append(
            {
                select: or_none(value),
                "n": n,
                "n_diverged": n_div,
                "n_pruned": n_pruned,
                "n_failed": n_fail,
                "clean": clean,
                "mean": mean,
                "std": sd,
                "ci_low": low,
                "ci_high": high,
                "min": float(done.min()) if clean else math.nan,
                "max": float(done.max()) if clean else math.nan,
            }
        )
    return pd.DataFrame(rows)


def best_over(members: pd.DataFrame, keys: Sequence[str], select: str = "lr") -> pd.DataFrame:
    """For each combination of ``keys``: the ``select`` value (the lr) with the lowest mean final
    error over seeds, that mean, its 95% interval and spread, and the failure counts over every lr
    tried. ``keys`` must hold every field that keeps settings apart (``other_varied``): the best lr
    is chosen within each combination, never across them."""
    rows = []
    if members.empty:
        return pd.DataFrame(columns=[*keys, f"best_{select}", f"best_{select}_at_edge", LEARNS_AT_NO_LR, "error", "error_ci_low",
                                     "error_ci_high", "std", "min", "max", "seeds", "n_diverged", "n_pruned",
                                     "n_failed", "n_members", f"{select}_tried", "result"])
    for key, g in members.groupby(list(keys), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        cands = lr_candidates(g, select)
        clean = cands[cands["clean"]]
        row: dict[str, Any] = {k: or_none(v) for k, v in zip(keys, key)}
        n_div = int(cands["n_diverged"].sum())
        n_pruned = int(cands["n_pruned"].sum())
        n_fail = int(cands["n_failed"].sum())
        if len(clean):
            best, edge = _best_candidate(clean, select, cands[select].tolist())
            # A cell on the bias-only plateau at every lr has no best lr to establish (learning_range.py).
            flat = learns_at_no_lr(clean["mean"].astype(float).tolist(), bias_only_of(g))
            row.update(
                {
                    f"best_{select}": best[select],
                    f"best_{select}_at_edge": edge and not flat,
                    LEARNS_AT_NO_LR: flat,
                    "error": best["mean"],
                    "error_ci_low": best["ci_low"],
                    "error_ci_high": best["ci_high"],
                    "std": best["std"],
                    "min": best["min"],
                    "max": best["max"],
                    "seeds": int(best["n"]),
                    "result": "ok",
                }
            )
        else:
            row.update(
                {f"best_{select}": None, f"best_{select}_at_edge": False, LEARNS_AT_NO_LR: False, "error": math.nan, "error_ci_low": math.nan, "error_ci_high": math.nan,
                 "std": math.nan, "min": math.nan, "max": math.nan, "seeds": 0,
                 "result": "diverged" if n_div else _unfinished(g)}
            )
        row.update(
            {
                "n_diverged": n_div,
                "n_pruned": n_pruned,
                "n_failed": n_fail,
                "n_members": int(len(g)),
                f"{select}_tried": ", ".join(fmt(v) for v in cands[select].tolist()),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _best_candidate(clean: pd.DataFrame, select: str, tried: Sequence[Any]) -> tuple[pd.Series, bool]:
    """The clean candidate with the lowest mean error, and whether that best is at the edge of the
    values tried in a way that leaves it unestablished. Two cases are not: a tie with a value
    inside the grid (several lrs reach the same lowest mean, one of them inside: the optimum is
    bracketed, and that inner value is reported), and a best mean of 0, the floor of every task's
    error (nothing beyond the grid can do better)."""
    lowest = float(clean["mean"].min())
    tied = clean[np.isclose(clean["mean"].astype(float), lowest, rtol=1e-12, atol=0.0)]
    inner = [i for i in tied.index if not at_edge(tied.loc[i, select], tried)]
    best = tied.loc[inner[0]] if inner else tied.iloc[0]
    return best, bool(not inner and lowest > 0 and at_edge(best[select], tried))


def at_edge(best: Any, tried: Sequence[Any]) -> bool:
    """Whether ``best`` is the lowest or highest of two or more numeric values tried: the optimum
    may lie beyond the grid, so the best value is not established until the grid is widened. One
    value tried is no grid (nothing was searched), not an edge."""
    values = sorted({float(v) for v in tried if isinstance(v, (int, float, np.number)) and not pd.isna(v)})
    if len(values) < 2 or best is None or not isinstance(best, (int, float, np.number)):
        return False
    return float(best) in (values[0], values[-1])


def flagged(v: Any) -> bool:
    """A True flag, also as numpy's bool; None and NaN are not."""
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def _unfinished(g: pd.DataFrame) -> str:
    """'incomplete' while members are still running or pending, 'failed' where one crashed, else
    'pruned' (the scheduler stopped them: not a failure, not a final error either)."""
    if g["outcome"].isin(("running", "pending")).any():
        return "incomplete"
    if g["outcome"].eq("failed").any():
        return "failed"
    return "pruned" if g["outcome"].eq("pruned").any() else "no result"
