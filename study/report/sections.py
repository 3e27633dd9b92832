"""The paper's tables (1, 2, 3, 5) for the members of one problem, as sections a report renders.

A study that varied the task is reported one problem at a time (build.py calls ``paper_tables``
once per task): every table then has one block per problem, each with that problem's published
values, and the best lr is chosen within a problem, never across problems. Within a problem, every
other field that the study varied and that is not the table's own axes nor the lr is a key of the
table (tables.other_varied), and the note names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from study.plan import resolution
from study.report import protocol, tables
from study.report.data import family, rnn_warmup_updates
from study.report.figures.style import fmt_value
from study.report.figures.tables import table1_figure, table2_figure, table3_figure, table5_figure
from study.report.published import load_published
from study.report.verdict import LEARNS_NOT_ABOVE

BEST_COLUMNS = {"result_cell": "error: mean ± 95% CI over seeds", "best_lr": "best lr", "seeds": "seeds",
                "n_diverged": "diverged", "n_pruned": "pruned", "n_failed": "failed or unfinished", "n_members": "runs",
                "lr_tried": "lr tried", "paper": "paper"}


@dataclass
class Section:
    key: str  # file stem: table1, table2, table3, table5
    title: str
    columns: dict[str, str]  # what the Markdown shows, renamed
    note: str
    table: pd.DataFrame
    figure: Any = None


def varied(members: pd.DataFrame, col: str) -> bool:
    return col in members and members[col].dropna().nunique() > 1


def split_note(members: pd.DataFrame, own: list[str]) -> str:
    """Names the fields besides the table's axes and the lr that keep rows apart."""
    keys = tables.other_varied(members, own)
    if not keys:
        return ""
    return (f" Rows are also split by {', '.join(f'`{k}`' for k in keys)} (varied by the study); the best lr is "
            "chosen per row, never across them.")


def _keys(table: pd.DataFrame, members: pd.DataFrame, own: list[str]) -> dict[str, str]:
    return {k: k for k in tables.other_varied(members, own) if k in table}


def paper_best_mu_max(task: str) -> float | None:
    """The mu_max of the paper's best NAG entry in Table 1: Table 2's row was taken there."""
    rows = [r for r in load_published().get("table1", []) if r["task"] == task and r["optimizer"] == "nag"]
    return float(min(rows, key=lambda r: r["error"])["mu_max"]) if rows else None


def edge_note(table: pd.DataFrame) -> str:
    """The legends of the edge mark, where a best lr sits at the edge of the lrs tried, and of the
    mark of a row that learns at no lr tried."""
    n = sum(tables.flagged(v) for v in table.get("best_lr_at_edge", []))
    flat = sum(tables.flagged(v) for v in table.get(tables.LEARNS_AT_NO_LR, []))
    note = ""
    if n:
        note += (f" {tables.EDGE_MARK} **best lr at the edge of the lrs tried** ({n} of {len(table)} rows): the lowest "
                 "or highest lr run was best, so the best lr, and the error at it, are not established until the grid "
                 "is widened past it; findings resting on such a row are not testable.")
    if flat:
        note += (f" {tables.FLAT_MARK} **learns at no lr tried** ({flat} of {len(table)} rows): every lr tried ended "
                 f"at the bias-only level (the error above {LEARNS_NOT_ABOVE:g} times it), so which was lowest is the "
                 "plateau's noise, "
                 "not a best lr, and an edge there is not flagged; findings compare such a row as it is, within the "
                 "lrs tried.")
    return note


def warmup_note(members: pd.DataFrame) -> str:
    """Which momentum was in force: under the RNN schedule mu = 0.9 for 1000 updates, then mu_0
    (sec. 4.2); a constant or Eq. 5 schedule never reads mu_0."""
    updates = members["updates"].dropna()
    if updates.empty:
        return ""
    n = int(updates.max())
    ran = protocol.schedules(members)
    if ran and "rnn" not in ran:
        return (f" Momentum: {' and '.join(protocol.SCHEDULE_WORDS.get(k, k) for k in ran)} "
                f"(`momentum_schedule: {', '.join(ran)}`), for all {n:,} updates: **mu_0 is not used**, so rows are "
                "per mu_max, the momentum the runs had.")
    warm = rnn_warmup_updates()
    if n <= warm:
        return f" **mu_0 never took effect**: runs of {n} updates end inside the {warm}-update warm-up at mu = 0.9."
    return f" mu_0 applied for the last {n - warm:,} of {n:,} updates (after the {warm}-update warm-up at mu = 0.9)."


def _table1(m: pd.DataFrame, task: str) -> Section:
    own = ["optimizer", "mu_max"]
    t1, why = protocol.drop_unmatched_paper(tables.table1(m, task), "table1", m)
    return Section("table1", "Table 1: best-lr error per mu_max and momentum type",
                   {"optimizer": "optimizer", "mu_max": "mu_max", **_keys(t1, m, own), **BEST_COLUMNS},
                   "The paper's Table 1 at mu_max = 0 is one column for NAG and CM (plain SGD)."
                   + (" Here plain SGD ran once, as CM, and its row is shown under both (marked \"plain SGD\"): "
                      "one set of runs, not two." if t1.get(tables.SGD_SHARED, pd.Series(dtype=bool)).any() else "")
                   + split_note(m, own)
                   + protocol.mismatch_note(why) + edge_note(t1),
                   t1, table1_figure(t1, family(task), list(_keys(t1, m, own))))


def _early_before_note(t2: pd.DataFrame, nag: pd.DataFrame) -> str:
    """Runs of an older trainer, which reported on its report_every grid only: "before" is then
    the last report before the phase, and the note says how far before."""
    starts = sorted(set((nag["updates"] - nag["final_phase_updates"]).dropna().astype(int)))
    steps = sorted(set(t2["before_step"].dropna().astype(int))) if "before_step" in t2 else []
    early = [s for s in steps if s not in starts]
    if not early:
        return ""
    return (f" **Before is not at the phase's start** in these runs (reported at update {', '.join(map(str, early))}; "
            f"the phase starts at {', '.join(map(str, starts))}): they were made by a trainer that reported on its "
            "report_every grid only.")


def _table2(m: pd.DataFrame, task: str) -> Section:
    own = ["optimizer", "mu_max"]
    nag = m[m["optimizer"] == "nag"]
    t2, why = protocol.drop_unmatched_paper(tables.table2(m, task), "table2", nag, ("paper_before", "paper_after"))
    fig = None
    if (t2["result"] == "ok").any():
        fig = table2_figure(t2, list(_keys(t2, nag, own)), paper_best_mu_max(task))
    return Section("table2", "Table 2: NAG before and after the final low-momentum phase",
                   {"mu_max": "mu_max", **_keys(t2, nag, own), "best_lr": "best lr",
                    "final_phase_updates": "final-phase updates", "before_step": "before: at update",
                    "before_cell": "before: mean ± 95% CI", "after_cell": "after: mean ± 95% CI", "seeds": "seeds",
                    "n_diverged": "diverged", "n_pruned": "pruned", "result": "result", "paper_before": "paper before",
                    "paper_after": "paper after"},
                   "Before: the error at the update where the final phase (mu <= 0.9) begins (the trainer "
                   "reports there); after: the final error. The paper's row is at its best mu_max and lr."
                   + _early_before_note(t2, nag) + split_note(nag, own) + protocol.mismatch_note(why) + edge_note(t2),
                   t2, fig)


def _table3_note(m: pd.DataFrame, t3: pd.DataFrame) -> str:
    setting = load_published().get("table3_setting") or {}
    paper_mu = setting.get("mu_max")
    mus = sorted(set(m["mu_max"].dropna().astype(float)))
    note = (f"The paper: Curves, NAG, {setting.get('updates', 750000):,} updates, mu_max {paper_mu} (inferred: its "
            "scale-1 entry 0.074 is Table 1's NAG mu_max = 0.999 result; the paper prints neither mu_max nor lr "
            "for Table 3). The best lr is chosen per SI scale from the lrs tried, as Table 1 chooses it per "
            "mu_max")
    best = t3[t3["result"] == "ok"]
    if len(best):
        note += ": " + ", ".join(f"scale {fmt_value(r['init_scale'])} -> lr {fmt_value(r['best_lr'])}"
                                 for _, r in best.iterrows()) + "."
    else:
        note += "."
    if m["lr"].dropna().nunique() <= 1:
        note += " **Only one lr was run**, so every scale has that lr, not its best."
    if paper_mu is not None and mus != [float(paper_mu)]:
        note += (f" **mu_max differs from the paper's**: {', '.join(fmt_value(x, 'mu_max') for x in mus)} "
                 f"here vs {paper_mu}.")
    return note


def _table3(m: pd.DataFrame, task: str) -> Section:
    own = ["optimizer", "init_scale"]
    t3, why = protocol.drop_unmatched_paper(tables.table3(m, task), "table3", m)
    return Section("table3", "Table 3: error against the SI scale multiplier",
                   {"optimizer": "optimizer", "init_scale": "SI scale", **_keys(t3, m, own), **BEST_COLUMNS},
                   _table3_note(m, t3) + split_note(m, own) + protocol.mismatch_note(why) + edge_note(t3),
                   t3, table3_figure(t3, list(_keys(t3, m, own))))


def _table5(m: pd.DataFrame, task: str) -> Section:
    momentum = protocol.table5_momentum(m)
    own = ["optimizer", momentum]
    t5, why = protocol.drop_unmatched_paper(tables.table5(m, task, momentum), "table5", m)
    bias = next((r["error"] for r in load_published().get("table5_biases", []) if r["task"] == task), None)
    return Section("table5", f"Table 5: zero-one error per {momentum} and momentum type",
                   {"optimizer": "optimizer", momentum: momentum, **_keys(t5, m, own), **BEST_COLUMNS,
                    "min": "min", "max": "max"},
                   "Mean over seeds (population members and/or trials with different seeds) at the best lr, its "
                   f"95% interval, min and max over those seeds. The paper's bias-only error: {bias}."
                   + warmup_note(m) + split_note(m, own) + protocol.mismatch_note(why) + edge_note(t5)
                   + resolution.report_note(m),
                   t5, table5_figure(t5, task, list(_keys(t5, m, own)), momentum))


def paper_tables(m: pd.DataFrame, task: str) -> list[Section]:
    """The tables that apply to one problem's members, chosen by its family and what it varied:
    autoencoders Table 1 (unless the study varied the SI scale alone: Table 3 would repeat it),
    Table 2 (NAG runs with a final low-momentum phase), Table 3 (several SI scales); RNN problems
    Table 5."""
    if not len(m):
        return []
    if family(task) != "autoencoder":
        return [_table5(m, task)]
    out = []
    if varied(m, "optimizer") or varied(m, "mu_max") or not varied(m, "init_scale"):
        out.append(_table1(m, task))
    if ((m["optimizer"] == "nag") & (m["final_phase_updates"] > 0)).any():
        out.append(_table2(m, task))
    if varied(m, "init_scale"):
        out.append(_table3(m, task))
    return out


__all__ = ["BEST_COLUMNS", "Section", "paper_best_mu_max", "paper_tables", "split_note", "varied", "warmup_note"]
