"""The paper's findings (study.report.findings) judged on one problem's table of a study.

For each finding of the table that applies to the problem, and for each combination of the other
fields the study varied (a finding is judged within a row group, never across it), the two cells
are looked up in the table, their per-seed values read from the members at each cell's best lr,
and ``findings.decide`` gives the verdict. Reasons a finding cannot be judged (protocol, missing
cells, grid edges) are found here and passed to the rule.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from study.report import protocol, tables
from study.report.data import CONFIG_FIELDS
from study.report.figures.style import fmt_value
from study.report.findings import FINDINGS, NOT_TESTABLE, Finding, Verdict, decide
from study.report.sections import paper_best_mu_max

AXES = {"table1": ["optimizer", "mu_max"], "table2": ["optimizer", "mu_max"], "table3": ["optimizer", "init_scale"],
        "table5": ["optimizer", "mu_0"]}


def _same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=1e-12))
    return a == b


def _matching(df: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    keep = np.ones(len(df), dtype=bool)
    for k, v in values.items():
        keep &= np.array([_same(x, v) for x in df[k]], dtype=bool) if len(df) else keep
    return df[keep]


def cell_text(cell: Mapping[str, Any], value: str = "final") -> str:
    words = " ".join(f"{k}={fmt_value(v, k)}" if k != "optimizer" else str(v).upper() for k, v in cell.items())
    return words + (" (before the final phase)" if value == "before" else "")


def _seed_values(members: pd.DataFrame, row: pd.Series, keys: list[str], value: str) -> dict[Any, float] | list[float]:
    """The cell's per-seed values at its best lr: the final error, or Table 2's before value."""
    sel = _matching(members, {**{k: row[k] for k in keys}, "lr": row["best_lr"]})
    sel = sel[sel["outcome"] == "completed"]
    column = "error_before_final_phase" if value == "before" else "final_error"
    sel = sel[sel[column].notna()]
    seeds = [None if pd.isna(s) else int(s) for s in sel["seed"]]
    values = [float(v) for v in sel[column]]
    # Paired by seed only where each seed is one member (a seed run twice cannot be paired).
    return dict(zip(seeds, values)) if None not in seeds and len(set(seeds)) == len(seeds) else values


def _resolve(cell: Mapping[str, Any], task: str) -> dict[str, Any]:
    return {k: (paper_best_mu_max(task) if v == "paper best" else v) for k, v in cell.items()}


def judge(f: Finding, table_key: str, table: pd.DataFrame, members: pd.DataFrame, task: str,
          group: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Verdict]:
    better, worse = _resolve(f.better, task), _resolve(f.worse, task)
    group_members = _matching(members, group)
    mismatch = protocol.paper_mismatch(table_key, pd.Series(dtype=object), group_members)
    if mismatch is not None:
        return better, worse, decide([], [], f"the protocol cannot show it: {mismatch}")
    rows = _matching(table, group)
    keys = [k for k in AXES[table_key] if k in table] + list(group)
    found, why, scope = {}, [], []
    for name, cell, value in (("better", better, f.better_value), ("worse", worse, f.worse_value)):
        if any(k not in table for k in cell):
            why.append(f"{cell_text(cell)} not in the table")
            continue
        hit = _matching(rows, cell)
        if hit.empty:
            why.append(f"{cell_text(cell)} was not run")
            continue
        row = hit.iloc[0]
        if row["result"] != "ok":
            why.append(f"{cell_text(cell)} has no clean result ({row['result']})")
            continue
        found[name] = _seed_values(group_members, row, keys, value)
        tried = f" ({row['lr_tried']})" if isinstance(row.get("lr_tried"), str) else ""
        if tables.flagged(row.get(tables.LEARNS_AT_NO_LR)):
            scope.append(f"{cell_text(cell)} learns at no lr tried{tried}")
        if tables.flagged(row.get("best_lr_at_edge")):
            why.append(f"the best lr of {cell_text(cell)}, {fmt_value(row['best_lr'])}, is at the edge of the lrs "
                       f"tried{tried}: not established until the grid is widened")
    if table_key == "table2":  # both values come from one row: its edge is said once
        why, scope = list(dict.fromkeys(why)), list(dict.fromkeys(scope))
    verdict = decide(found.get("better", []), found.get("worse", []), "; ".join(why) or None)
    if scope and verdict.outcome != NOT_TESTABLE:  # what the verdict rests on, said with it
        verdict = replace(verdict, reason=f"{verdict.reason}; {'; '.join(scope)}")
    return better, worse, verdict


def evaluate(table_key: str, table: pd.DataFrame, members: pd.DataFrame, task: str) -> list[dict[str, Any]]:
    """One row per (finding, row group) of the table: the cells, the verdict and its figures."""
    out = []
    if table_key not in AXES or table.empty:
        return out
    if table_key == "table1":  # plain SGD run once is both columns' cell (tables.with_shared_sgd)
        members = tables.with_shared_sgd(members)
    others = [k for k in tables.other_varied(members, AXES[table_key]) if k in table and k in (*CONFIG_FIELDS,)]
    groups = [dict(zip(others, g)) for g in table[others].drop_duplicates().itertuples(index=False)] if others \
        else [{}]
    # A schedule or budget that rules the table out as a whole is said once per finding, not once
    # per row group; otherwise a finding none of whose cells the study ran is not listed.
    ruled_out = protocol.paper_mismatch(table_key, pd.Series(dtype=object), members) is not None
    if ruled_out:
        groups = [{}]
    for f in FINDINGS:
        if f.table != table_key or task not in f.tasks or not (ruled_out or _ran_either(f, table, task)):
            continue
        for group in groups:
            better, worse, v = judge(f, table_key, table, members, task, group)
            out.append(verdict_row(f, task, group, better, worse, v))
    return out


def _ran_either(f: Finding, table: pd.DataFrame, task: str) -> bool:
    """Whether the study ran either cell the finding compares: a finding about settings the study
    never tried (NAG against CM in a study of NAG alone) is not one its tables can judge."""
    for cell in (_resolve(f.better, task), _resolve(f.worse, task)):
        if all(k in table for k in cell) and not _matching(table, cell).empty:
            return True
    return False


def verdict_row(f: Finding, task: str, group: Mapping[str, Any], better: Mapping[str, Any],
                worse: Mapping[str, Any], v: Verdict) -> dict[str, Any]:
    row: dict[str, Any] = {
        "table": f.table, "task": task, "finding": f.key,
        "rows": ", ".join(f"{k}={fmt_value(x, k)}" for k, x in group.items()),
        "better": cell_text(better, f.better_value), "worse": cell_text(worse, f.worse_value),
        "verdict": v.outcome, "why": v.reason, "figures": v.figures(), "paper": f.words,
    }
    for name, s in (("better", v.better), ("worse", v.worse), ("paired_diff", v.paired)):
        row.update({f"{name}_n": s.n if s else 0, f"{name}_mean": s.mean if s else math.nan,
                    f"{name}_ci_low": s.low if s else math.nan, f"{name}_ci_high": s.high if s else math.nan})
    return row


COLUMNS = {"table": "table", "task": "task", "finding": "finding", "rows": "rows", "verdict": "verdict",
           "figures": "figures (mean [95% CI] n)", "why": "why"}

__all__ = ["COLUMNS", "evaluate", "judge", "paper_best_mu_max", "verdict_row"]
