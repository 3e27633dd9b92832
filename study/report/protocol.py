"""Whether a study ran the paper's protocol closely enough for a published value to be printed
beside its cell, and which momentum was in force (mu_0 or mu_max) under the schedule it ran.

The paper's tables come from one schedule each: Tables 1-3 from Eq. 5 (mu ramps up to mu_max,
then a final low-momentum phase), Table 5 from the RNN schedule (mu = 0.9 for 1000 updates, then
mu_0). A study with another schedule (``momentum_schedule: constant``, as the main example
search_spaces/quick.yaml runs) measures another quantity: its mu_0 is never used, and the paper's
number for that mu_0 says nothing about it. A run that ends inside the warm-up never applied mu_0
either. Such cells get no paper value, and the report says why. Differences of scale (updates,
T, data set, seeds) are not protocol: the value is printed and the scale notes at the top of the
report list every difference.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.report.data import rnn_warmup_updates

# The schedule each of the paper's tables was obtained with.
PAPER_SCHEDULE = {"table1": "eq5", "table2": "eq5", "table3": "eq5", "table5": "rnn"}
SCHEDULE_WORDS = {
    "eq5": "Eq. 5 (mu ramps up to mu_max)",
    "rnn": "the RNN schedule (mu = 0.9 for the first 1000 updates, then mu_0)",
    "constant": "a constant mu = mu_max from the first update",
}


def schedules(members: pd.DataFrame) -> list[str]:
    return sorted(set(members["momentum_schedule"].dropna())) if "momentum_schedule" in members else []


def table5_momentum(members: pd.DataFrame) -> str:
    """The field that holds the momentum in force for Table 5's rows: mu_0 under the RNN schedule
    (also where a study mixed schedules: its rows are split by the schedule), mu_max otherwise
    (constant and Eq. 5 schedules never read mu_0)."""
    found = schedules(members)
    return "mu_0" if not found or "rnn" in found else "mu_max"


def _value(row: Any, members: pd.DataFrame, field: str, how: str) -> Any:
    if field in row.index and row[field] is not None and not pd.isna(row[field]):
        return row[field]
    values = members[field].dropna() if field in members else pd.Series(dtype=object)
    if values.empty:
        return None
    return values.max() if how == "max" else values.iloc[0]


def paper_mismatch(table: str, row: Any, members: pd.DataFrame) -> str | None:
    """Why the paper's value for ``table`` cannot stand beside this row (None: it can)."""
    schedule = _value(row, members, "momentum_schedule", "first")
    paper = PAPER_SCHEDULE[table]
    if schedule is not None and schedule != paper:
        return (f"the study ran {SCHEDULE_WORDS.get(schedule, schedule)}; the paper's {table.replace('table', 'Table ')} "
                f"used {SCHEDULE_WORDS[paper]}")
    if table == "table5":
        updates = _value(row, members, "updates", "max")
        warm = rnn_warmup_updates()
        if updates is not None and int(updates) <= warm:
            return f"runs of {int(updates):,} updates end inside the {warm:,}-update warm-up: mu_0 never applied"
    return None


def drop_unmatched_paper(df: pd.DataFrame, table: str, members: pd.DataFrame,
                         columns: tuple[str, ...] = ("paper",)) -> tuple[pd.DataFrame, list[str]]:
    """The table with its paper values blanked where the protocol differs, and the reasons."""
    df = df.copy()
    reasons: list[str] = []
    for i, row in df.iterrows():
        why = paper_mismatch(table, row, members)
        if why is None:
            continue
        for c in columns:
            if c in df:
                df.at[i, c] = None
        if why not in reasons:
            reasons.append(why)
    return df, reasons


def mismatch_note(reasons: list[str]) -> str:
    if not reasons:
        return ""
    return " **No paper value is printed** where the protocol differs: " + "; ".join(reasons) + "."


__all__ = ["PAPER_SCHEDULE", "drop_unmatched_paper", "mismatch_note", "paper_mismatch", "schedules",
           "table5_momentum"]
