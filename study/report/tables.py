"""The paper's tables computed from a study's members (data.member_table).

Aggregation follows the paper: a setting's result is the mean final training error over its seeds
at the learning rate that gave the lowest such mean (Table 1 and Table 5's "for each mu_0 we used
the fixed learning rate that gave the best performance"). Failures are never dropped: a learning
rate where any seed diverged (or failed, or was pruned) is not a candidate for "best", and every
table counts the diverged, pruned and failed members of each setting apart; a setting where no
learning rate finished cleanly shows "diverged" (or "pruned", "failed") instead of a number. The
best lr per cell, and the marks of one at the edge of the lrs tried (†) or of a cell that learns at
no lr tried (‡), come from study/report/best_lr.py.

Beyond the paper, every mean over seeds comes with its 95% interval over those seeds (Student t,
n - 1 degrees of freedom; study.report.stats): columns ``<value>_ci_low`` / ``<value>_ci_high``
in the CSVs, "mean ± half-width" in the Markdown, "n/a" for a single seed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from study.report.published import published_row, published_value
from study.report.importances import finite_optuna_study, importance_evaluator, importances  # noqa: F401
# The best lr per cell, its edge and plateau marks: study/report/best_lr.py (re-exported here).
from study.report.best_lr import (EDGE_MARK, FLAT_MARK, LEARNS_AT_NO_LR, UNFINISHED_OUTCOMES,  # noqa: F401
                                  at_edge, best_over, flagged, lr_candidates)
from study.report.stats import fmt, mean_interval
from study.report.sgd_shared import SGD_SHARED, with_shared_sgd

def not_ok_count(row: Any) -> int:
    """The members behind a cell's 'diverged' / 'pruned' / 'failed' / 'incomplete' word."""
    return int({"diverged": row["n_diverged"], "pruned": row.get("n_pruned", 0)}.get(row["result"], row["n_failed"]))


def interval_cell(mean: Any, high: Any) -> str:
    """'0.0123 ± 0.0041': the mean over seeds (4 significant digits) ± the half-width of its 95%
    interval (2 digits); '0.0123 ± n/a' for a single seed; '' for no value."""
    if mean is None or pd.isna(mean):
        return ""
    half = "n/a" if high is None or pd.isna(high) else fmt(float(high) - float(mean), 2)
    return f"{fmt(float(mean))} ± {half}"


def _cell(row: pd.Series) -> str:
    """'0.0123 ± 0.0041' (mean ± 95% interval over seeds) or 'diverged (3/3)'."""
    if row["result"] != "ok":
        return f"{row['result']} ({not_ok_count(row)}/{row['n_members']})"
    return interval_cell(row["error"], row["error_ci_high"])


def _with_paper(df: pd.DataFrame, table: str, task: str, key: str) -> pd.DataFrame:
    """The paper's value per row; a study that searched over tasks has each row's own task."""
    df = df.copy()
    df["paper"] = [
        published_value(table, r["task"] if "task" in df else task, r["optimizer"], **{key: float(r[key])})
        if r[key] is not None else None
        for _, r in df.iterrows()
    ]
    return df


def other_varied(members: pd.DataFrame, own: Sequence[str], select: str = "lr") -> list[str]:
    """Every config field besides ``own`` (the table's axes) and ``select`` (the lr it takes the
    best of) that differs between the members: the task, a hyperparameter, or any other field a
    study searched or set per trial (seq_length, batch_size, updates, init, ...). A table keeps
    them as keys, so settings are never pooled across, say, problems or SI scales (the paper's
    tables hold all else at its defaults). Not settings: the seed (what a setting's members differ
    in) and the device (data.NOT_SETTINGS). A value left to the default (None) differs from any
    explicit one."""
    from study.report.data import CONFIG_FIELDS, HYPERPARAMETERS, NOT_SETTINGS

    fields = dict.fromkeys(("task", *HYPERPARAMETERS, *CONFIG_FIELDS))
    return [c for c in fields
            if c not in own and c != select and c not in NOT_SETTINGS and c in members
            and members[c].nunique(dropna=False) > 1]


# --- Table 1 ------------------------------------------------------------------------------------


def table1(members: pd.DataFrame, task: str) -> pd.DataFrame:
    """Best-lr final training error per (optimizer, mu_max), as the paper's Table 1; where plain
    SGD ran once for CM and NAG (``with_shared_sgd``) its row appears under both, ``sgd_shared``."""
    members = with_shared_sgd(members)
    keys = ["optimizer", "mu_max", *other_varied(members, ["optimizer", "mu_max"])]
    df = best_over(members, keys)
    # best_over's rows follow groupby's order over the same keys.
    df[SGD_SHARED] = members.groupby(keys, dropna=False, sort=True)[SGD_SHARED].any().to_numpy() if len(df) else []
    return _with_paper(df, "table1", task, "mu_max")


# --- Table 2 ------------------------------------------------------------------------------------


def table2(members: pd.DataFrame, task: str) -> pd.DataFrame:
    """NAG before/after the final low-momentum phase, at each mu_max's best lr (Table 2).

    "Before" is the error at the last report at or before the update where the final phase begins
    (updates - final_momentum_updates); "after" the final error; both are means over seeds with
    their 95% intervals. Members without a final phase or with no report before it are left out of
    "before" and counted in ``n_without_before``. The paper's pair is the row's own task's.
    """
    nag = members[(members["optimizer"] == "nag") & (members["final_phase_updates"] > 0)]
    others = other_varied(nag, ["optimizer", "mu_max"])
    best = best_over(nag, ["mu_max", *others])
    rows = []
    for _, b in best.iterrows():
        row: dict[str, Any] = {"optimizer": "nag", "mu_max": b["mu_max"], **{k: b[k] for k in others},
                               "best_lr": b["best_lr"], "best_lr_at_edge": b["best_lr_at_edge"],
                               LEARNS_AT_NO_LR: b[LEARNS_AT_NO_LR]}
        sel = nag[(nag["mu_max"] == b["mu_max"]) & (nag["lr"] == b["best_lr"])]
        for k in others:
            sel = sel[sel[k].isna()] if b[k] is None else sel[sel[k] == b[k]]
        before = sel["error_before_final_phase"].dropna().astype(float)
        mean, _, low, high = mean_interval(before)
        paper = published_row("table2", b["task"] if "task" in others else task) or {}
        row.update(
            {
                "final_phase_updates": int(sel["final_phase_updates"].iloc[0]) if len(sel) else None,
                "before_step": int(sel["before_final_phase_step"].dropna().iloc[0]) if before.size else None,
                "before": mean,
                "before_ci_low": low,
                "before_ci_high": high,
                "after": b["error"],
                "after_ci_low": b["error_ci_low"],
                "after_ci_high": b["error_ci_high"],
                "seeds": b["seeds"],
                "n_without_before": int(len(sel) - before.size),
                "n_diverged": b["n_diverged"],
                "n_pruned": b["n_pruned"],
                "n_failed": b["n_failed"],
                "result": b["result"],
                "paper_before": paper.get("before"),
                "paper_after": paper.get("after"),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=["optimizer", "mu_max", *others, "best_lr", "best_lr_at_edge", LEARNS_AT_NO_LR,
                                       "final_phase_updates", "before_step", "before", "before_ci_low",
                                       "before_ci_high", "after", "after_ci_low", "after_ci_high", "seeds",
                                       "n_without_before", "n_diverged", "n_pruned", "n_failed", "result",
                                       "paper_before", "paper_after"])


# --- Table 3 ------------------------------------------------------------------------------------


def table3(members: pd.DataFrame, task: str) -> pd.DataFrame:
    """Final training error against the SI scale multiplier (Table 3), best lr per scale."""
    df = best_over(members, ["optimizer", "init_scale", *other_varied(members, ["optimizer", "init_scale"])])
    return _with_paper(df, "table3", task, "init_scale")


# --- Table 5 ------------------------------------------------------------------------------------


def table5(members: pd.DataFrame, task: str, momentum: str = "mu_0") -> pd.DataFrame:
    """Zero-one error per (optimizer, mu_0), mean over seeds at the best lr, with its spread.

    Seeds may be population members of one trial (``repeats``), separate trials with different
    ``seed``, or both: members are grouped by their hyperparameters, never by trial. ``momentum``
    "mu_max": a study whose schedule never read mu_0 (constant, Eq. 5) is tabled by the momentum
    it ran, and the paper (which has mu_0 only) has no value for it.
    """
    df = best_over(members, ["optimizer", momentum, *other_varied(members, ["optimizer", momentum])])
    return _with_paper(df, "table5", task, "mu_0") if momentum == "mu_0" else df.assign(paper=None)


# --- sensitivity --------------------------------------------------------------------------------


def axis_of(field: str, param: dict[str, Any] | None, values: Sequence[float]) -> tuple[str, bool]:
    """(x label, log x?) for a searched field: log where the spec samples it on a log scale or the
    values span more than a decade. A momentum (mu_max, mu_0) or a ``one_minus`` field is shown as
    1 - value, always on a log scale."""
    param = param or {}
    one_minus = _one_minus(field, param)
    label = f"1 - {field}" if one_minus else field
    xs = [1 - v if one_minus else v for v in values if v is not None]
    positive = [x for x in xs if isinstance(x, (int, float)) and x > 0]
    log = bool(param.get("log")) or (one_minus and len(positive) == len(xs)) or (
        len(positive) == len(xs) and len(positive) > 1 and max(positive) / min(positive) > 10
    )
    return label, log


def _one_minus(field: str, param: dict[str, Any]) -> bool:
    from study.report.data import MOMENTUM_FIELDS

    return param.get("transform") == "one_minus" or field in MOMENTUM_FIELDS


# The paper's table that holds each field's published values (best lr per optimizer).
PAPER_TABLE_OF = {"mu_max": "table1", "mu_0": "table5", "init_scale": "table3"}


def _paper_best(field: str, task: str | None, value: Any) -> float | None:
    """The paper's best error over NAG and CM at ``field = value`` (None where it has none)."""
    if task is None or field not in PAPER_TABLE_OF or not isinstance(value, (int, float, np.number)):
        return None
    found = [published_value(PAPER_TABLE_OF[field], task, opt, **{field: float(value)}) for opt in ("nag", "cm")]
    found = [v for v in found if v is not None]
    return min(found) if found else None


def sensitivity(members: pd.DataFrame, field: str, param: dict[str, Any] | None = None, bins: int = 8,
                task: str | None = None) -> pd.DataFrame:
    """Best and median final error over every other parameter, per value of ``field``.

    Continuous searches (more than 12 distinct values) are grouped into ``bins`` bins, on a log
    scale where the axis is logarithmic; each row then reports its bin's centre. With ``task``
    (a study whose metric is the paper's error), ``paper`` is the paper's best error over NAG and
    CM at that value where the paper has one (Tables 1, 3 and 5).
    """
    param = param or {}
    one_minus = _one_minus(field, param)
    df = members[members[field].notna()].copy() if field in members else members.iloc[0:0].copy()
    df["x"] = [1 - float(v) if one_minus else v for v in df[field]] if len(df) else []
    label, log = axis_of(field, param, list(df[field]) if len(df) else [])
    numeric = len(df) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in df["x"])
    binned = bool(numeric and df["x"].nunique() > 12)
    if binned:
        xs = df["x"].astype(float)
        edges = (np.geomspace(xs.min(), xs.max(), bins + 1) if log and xs.min() > 0
                 else np.linspace(xs.min(), xs.max(), bins + 1))
        idx = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, bins - 1)
        centres = np.sqrt(edges[:-1] * edges[1:]) if log and xs.min() > 0 else (edges[:-1] + edges[1:]) / 2
        df["x"] = centres[idx]
    rows = []
    for x, g in df.groupby("x", sort=True):
        done = g[g["outcome"] == "completed"]["final_error"].astype(float)
        value = 1 - float(x) if one_minus else x
        rows.append(
            {
                "x": x,
                "best": float(done.min()) if len(done) else math.nan,
                "median": float(done.median()) if len(done) else math.nan,
                "n": int(len(g)),
                "n_completed": int(len(done)),
                "n_diverged": int((g["outcome"] == "diverged").sum()),
                "n_pruned": int((g["outcome"] == "pruned").sum()),
                "n_failed": int(g["outcome"].isin(UNFINISHED_OUTCOMES).sum()),
                "paper": None if binned else _paper_best(field, task, value),
            }
        )
    out = pd.DataFrame(rows, columns=["x", "best", "median", "n", "n_completed", "n_diverged", "n_pruned", "n_failed",
                                      "paper"])
    # Categories have no order (optimizer names, or a search that says type: categorical).
    categorical = param.get("type") == "categorical" or not numeric
    out.attrs.update({"field": field, "label": label, "log": log, "momentum": one_minus,
                      "categorical": bool(categorical and len(out))})
    return out


# --- Markdown -----------------------------------------------------------------------------------


def markdown(df: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table of ``df`` (columns renamed by ``columns``), numbers to 4 digits."""
    if columns:
        df = df[list(columns)].rename(columns=columns)
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [header, rule]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The table with readable cells: ``result_cell`` ('0.07 ± 0.01', the mean ± its 95% interval
    over seeds, or 'diverged (2/2)'); Table 2's ``before_cell`` and ``after_cell`` alike."""
    out = df.copy()
    if SGD_SHARED in out and "optimizer" in out:
        out["optimizer"] = [f"{o} (plain SGD: the CM runs)" if flagged(shared) and o == "nag" else
                            f"{o} (plain SGD, also NAG's)" if flagged(shared) else o
                            for o, shared in zip(out["optimizer"], out[SGD_SHARED])]
    if "best_lr_at_edge" in out and "best_lr" in out:
        out["best_lr"] = [f"{fmt(v)} {EDGE_MARK}" if flagged(edge) else v
                          for v, edge in zip(out["best_lr"], out["best_lr_at_edge"])]
    if LEARNS_AT_NO_LR in out and "best_lr" in out:
        out["best_lr"] = [f"{fmt(v)} {FLAT_MARK}" if flagged(flat) else v
                          for v, flat in zip(out["best_lr"], out[LEARNS_AT_NO_LR])]
    if {"result", "error"} <= set(out.columns):
        out["result_cell"] = [_cell(r) for _, r in out.iterrows()] if len(out) else []
    for value in ("before", "after"):
        if {value, f"{value}_ci_high"} <= set(out.columns):
            out[f"{value}_cell"] = [interval_cell(r[value], r[f"{value}_ci_high"]) for _, r in out.iterrows()]
    return out
