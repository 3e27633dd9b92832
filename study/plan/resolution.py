"""Whether a study's errors are fine enough for the paper's values it is compared with.

An RNN problem's error is a count over the evaluated sequences divided by their number
(trainables: ``Task.error_resolution``), so a seed's error moves in steps of 1 / that number: with
1,000 sequences no seed can report Table 5's mem20 value 0.00005, and a cell below a step reads as
0. ``study plan`` and ``study run`` warn where a study's step is not finer than the smallest value
the paper publishes for its task (``spec_warnings``); the report says so beside the table
(``report_note``). Squared errors (the autoencoders) are continuous: nothing to check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from study.published import load_published
from study.spec.expand import param_name, task_config_dict
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.tasks import task_for

if TYPE_CHECKING:
    from study.spec.model import StudySpec

# The paper's tables of final errors (the bias-only rows are levels, not results to resolve).
RESULT_TABLES = ("table1", "table3", "table5")


def smallest_published(task: str) -> tuple[str, float] | None:
    """(table, value): the smallest nonzero error the paper publishes for ``task``; None if none."""
    found = [(float(r["error"]), table) for table in RESULT_TABLES for r in load_published().get(table, [])
             if r.get("task") == task and isinstance(r.get("error"), (int, float)) and r["error"] > 0]
    if not found:
        return None
    value, table = min(found)
    return table, value


def coarse(cfg: TaskConfig) -> str | None:
    """Why ``cfg``'s error cannot show its task's smallest published value, or None when it can
    (its step is finer than that value, or the error is continuous)."""
    step = task_for(cfg.task).error_resolution(cfg)
    found = smallest_published(cfg.task)
    if step is None or found is None or step < found[1]:
        return None
    table, value = found
    return (f"task {cfg.task}: a seed's error moves in steps of {step:.3g} (1 / {round(1 / step):,} evaluated "
            f"sequences), which is not finer than the smallest value the paper's {table.replace('table', 'Table ')} "
            f"publishes for it, {value:g}: no seed can report such a value. eval_cases above {1 / value:,.0f} "
            f"(a multiple of batch_size) resolves it")


def spec_warnings(spec: StudySpec) -> list[str]:
    """``coarse`` for every task, eval_cases and batch_size the spec can run (each searched one at
    each of its edge values, the others at their first), once each."""
    first = {param_name(f, p): p.values_to_check()[0] for f, p in spec.search.items()}
    points = [first] + [{**first, param_name(f, p): v} for f, p in spec.search.items()
                        if f in ("task", "eval_cases", "batch_size") for v in p.values_to_check()]
    out: list[str] = []
    for point in points:
        try:
            cfg = parse_config(task_config_dict(spec, point))
        except (ConfigError, ValueError, TypeError):
            continue  # refused by the config check, with its own message
        why = coarse(cfg)
        if why is not None and why not in out:
            out.append(why)
    return out


def report_note(members: pd.DataFrame) -> str:
    """The report's sentence on members whose error is too coarse for the paper's values ('' if
    none): each distinct (task, eval_cases, batch_size) the members ran."""
    if members.empty or "task" not in members:
        return ""
    cols = [c for c in ("task", "eval_cases", "batch_size") if c in members]
    found: list[str] = []
    for _, row in members[cols].drop_duplicates().iterrows():
        values: dict[str, Any] = {c: (None if pd.isna(row[c]) else row[c]) for c in cols}
        if not isinstance(values.get("task"), str):
            continue
        try:
            cfg = TaskConfig(**{k: (int(v) if k != "task" and v is not None else v) for k, v in values.items()})
        except (ValueError, TypeError):
            continue
        why = coarse(cfg)
        if why is not None and why not in found:
            found.append(why)
    if not found:
        return ""
    return " **Error resolution too coarse for the paper's values**: " + "; ".join(found) + "."


__all__ = ["RESULT_TABLES", "coarse", "report_note", "smallest_published", "spec_warnings"]
