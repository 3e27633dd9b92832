"""Time to target, as optimization benchmarks report it: the first update at which a cell's error
reaches a target, beside its final error (docs/reporting.md, "Time to target").

The target is the spec's (``target:``, one number or one per task), or, where the spec gives none
and the study's metric is the paper's error, the paper's value for the cell, only where it may stand
beside the cell (study/report/protocol.py: the table's ``paper`` column, blanked where the protocol
differs). Both kinds are timed here, at report time, from the stored metric points (one per member
and report step), by the rule the recorder applies to the spec's target at run time
(``outcome.updates_to_target``): a report counts when every seed of the cell reported there and
none had diverged, with the mean over those seeds as its value. Its resolution is the runs'
``report_every``: the update found is a report step, not the update at which the error first
crossed the target between two reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import pandas as pd

from study.record.outcome import updates_to_target
from study.report.data import CONFIG_FIELDS, StudyData

# The Markdown column beside the final error, and the CSV columns behind it.
CELL = "to_target_cell"
COLUMN = "updates to target"
CSV_COLUMNS = ("target", "target_from", "updates_to_target", "best_at_any_report")


def spec_target(spec: dict[str, Any], task: str | None) -> float | None:
    """The spec's target for ``task`` (a number, or the task's entry of a mapping); None: none."""
    target = (spec or {}).get("target")
    if isinstance(target, dict):
        target = target.get(task) if task is not None else None
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        return None
    return float(target)


def _values(points: pd.DataFrame, metric: str) -> list[float | None]:
    raw = points[metric] if metric in ("error", "loss") else [(e or {}).get(metric) for e in points["extra"]]
    return [None if v is None or pd.isna(v) else float(v) for v in raw]


def curve(points: pd.DataFrame, runs: int, metric: str) -> list[tuple[int, float | None]]:
    """The mean of ``metric`` over ``runs`` members at each report step of their ``points``; None
    at a step where one of them did not report, had diverged or has no value."""
    if points.empty or not runs:
        return []
    frame = pd.DataFrame({"step": points["step"].to_numpy(), "value": _values(points, metric),
                          "diverged": (points["status"] == "diverged").to_numpy()})
    out: list[tuple[int, float | None]] = []
    for step, at in frame.groupby("step", sort=True):
        values = [v for v in at["value"] if v is not None and not pd.isna(v)]
        whole = len(at) == runs and len(values) == runs and not at["diverged"].any()
        out.append((int(step), sum(values) / runs if whole else None))
    return out


def _points_of(points: pd.DataFrame, runs: Sequence[tuple[str, int]]) -> pd.DataFrame:
    if points.empty or not runs:
        return points.iloc[0:0]
    index = pd.MultiIndex.from_frame(points[["trial_id", "member"]].astype({"member": int}))
    return points[index.isin(list(runs))]


def best_seen(values: Iterable[tuple[int, float | None]], mode: str) -> float | None:
    """The best value of a curve at any report (what a configuration that never reached its
    target got closest to)."""
    finite = [v for _, v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if mode == "min" else max(finite)


def per_member(members: pd.DataFrame, points: pd.DataFrame, metric: str, mode: str,
               spec: dict[str, Any]) -> pd.DataFrame:
    """members.csv's time to target per seed: ``target`` (the spec's for the member's task) and
    ``updates_to_target`` (the first report at which the member's own metric reached it). The
    paper's values are a table's, per cell, so they time cells only (``annotate``)."""
    members = members.copy()
    targets = [spec_target(spec, t) for t in members["task"]]
    first: list[int | None] = [None] * len(members)
    if any(t is not None for t in targets) and not points.empty:
        runs = {(str(t), int(k)): g for (t, k), g in points.groupby(["trial_id", "member"])}
        for i, (tid, k, target) in enumerate(zip(members["trial_id"], members["member"], targets)):
            own = runs.get((str(tid), int(k)))
            if target is not None and own is not None:
                first[i] = updates_to_target(curve(own, 1, metric), target, mode)
    members["target"] = targets
    members["updates_to_target"] = pd.array(first, dtype="Int64")
    return members


def _cell_runs(row: pd.Series, members: pd.DataFrame) -> list[tuple[str, int]]:
    """The members behind a table row: its setting (every config field the row holds) at its best lr."""
    keys = [c for c in row.index if c in CONFIG_FIELDS and c != "lr" and c in members]
    if _flag(row.get("sgd_shared")):
        # Plain SGD ran once, as CM, and Table 1 shows those runs under NAG too
        # (tables.with_shared_sgd): the row's members are the CM runs whatever its optimizer says.
        keys = [k for k in keys if k != "optimizer"]
    sel = members[members["lr"] == row["best_lr"]]
    for k in keys:
        v = row[k]
        sel = sel[sel[k].isna()] if v is None or (isinstance(v, float) and math.isnan(v)) else sel[sel[k] == v]
    # Once each: a member listed twice (Table 1's shared SGD rows) is still one run.
    return list(dict.fromkeys((str(t), int(k)) for t, k in zip(sel["trial_id"], sel["member"])))


def _flag(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def annotate(table: pd.DataFrame, members: pd.DataFrame, data: StudyData, task: str) -> pd.DataFrame:
    """The table with each cell's time to target (``CSV_COLUMNS`` and the Markdown's ``CELL``),
    for the setting at its best lr: the mean over its seeds, as its final error is."""
    rows = []
    for _, row in table.iterrows():
        row_task = row["task"] if "task" in row.index and isinstance(row["task"], str) else task
        target, source = spec_target(data.spec, row_task), "spec"
        paper = row.get("paper")
        if target is None and data.metric == "error" and paper is not None and not pd.isna(paper):
            target, source = float(paper), "paper"
        first = best = None
        if target is not None and row.get("result") == "ok":
            runs = _cell_runs(row, members)
            values = curve(_points_of(data.points, runs), len(runs), data.metric)
            first, best = updates_to_target(values, target, data.mode), best_seen(values, data.mode)
        rows.append({"target": target, "target_from": source if target is not None else None,
                     "updates_to_target": first, "best_at_any_report": None if first is not None else best,
                     CELL: _cell_text(target, row.get("result"), first, best)})
    extra = pd.DataFrame(rows, index=table.index, columns=[*CSV_COLUMNS, CELL])
    extra["updates_to_target"] = extra["updates_to_target"].astype("Int64")
    return pd.concat([table, extra], axis=1)


def _cell_text(target: float | None, result: Any, first: int | None, best: float | None) -> str:
    if target is None:
        return "no target"
    if result != "ok":
        return ""
    if first is not None:
        return f"{first:,}"
    return "not reached" + (f" (best {best:.4g})" if best is not None else "")


def timed(section: Any, members: pd.DataFrame, data: StudyData, task: str) -> Any:
    """A paper table's section (sections.Section) with the column beside its final error and the
    note on it; a table without a final-error cell (Table 2) as it is."""
    if "result_cell" not in section.columns:
        return section
    if section.key == "table1":  # plain SGD run once is both columns' cell (tables.with_shared_sgd)
        from study.report.tables import with_shared_sgd

        members = with_shared_sgd(members)
    table = annotate(section.table, members, data, task)
    return dataclasses.replace(section, table=table, columns=with_column(section.columns),
                               note=section.note + note(table, members, data.mode))


def with_column(columns: dict[str, str]) -> dict[str, str]:
    """A section's Markdown columns with ``updates to target`` right after the final error."""
    out: dict[str, str] = {}
    for key, label in columns.items():
        out[key] = label
        if key == "result_cell":
            out[CELL] = COLUMN
    return out


def note(table: pd.DataFrame, members: pd.DataFrame, mode: str = "min") -> str:
    """What the column means here: the target's source and the resolution (report_every)."""
    every = sorted({int(v) for v in members.get("report_every", pd.Series(dtype=float)).dropna()})
    sources = set(table["target_from"].dropna())
    if not sources:
        return (" **Updates to target**: no target (the spec gives none, and the paper has no value that may stand "
                "beside these cells); `target:` in the spec sets one.")
    given = sorted(set(table.loc[table["target_from"] == "spec", "target"]))
    where = {"spec": f"the spec's `target` ({', '.join(f'{t:g}' for t in given)})",
             "paper": "the paper's value for the cell (the `paper` column)"}
    side = "at or below" if mode == "min" else "at or above"
    return (f" **Updates to target**: the first report at which the cell's mean over its seeds at the best lr reached "
            f"{' or '.join(where[s] for s in sorted(sources, reverse=True))} ({side} it); "
            f"resolution: a report every {', '.join(f'{e:,}' for e in every) or '?'} updates, so the crossing lies "
            "up to that many updates earlier. \"not reached\" gives the best mean at any report.")


__all__ = ["CELL", "COLUMN", "CSV_COLUMNS", "annotate", "best_seen", "curve", "note", "per_member", "spec_target",
           "timed", "with_column"]
