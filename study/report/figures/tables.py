"""The paper's tables as figures: Tables 1 and 5 (best-lr error against 1 - mu), Table 2 (NAG
before and after the final low-momentum phase) and Table 3 (error against the sparse-init scale),
each with the published values beside this study's."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from study.report.figures.style import (OPTIMIZER_STYLE, PAPER_COLOR, error_label, finite_positive, fixed_ticks,
                                        fmt_value, log_y_if_spread, mark_failures, mark_pruned, momentum_axis,
                                        place_legend)
from study.report.figures.tick_labels import tidy
from study.report.tables import not_ok_count


def _group_label(name: str, keys: Sequence[str], values: Sequence[Any]) -> str:
    extra = ", ".join(f"{k}={fmt_value(v, k)}" for k, v in zip(keys, values))
    return f"{name}, {extra}" if extra else name


def _momentum_table_figure(df: pd.DataFrame, key: str, title: str, ylabel: str,
                           other_keys: Sequence[str] = ()) -> Figure:
    """Best-lr error against 1 - mu per optimizer (and per other varied setting), bars: min..max
    over seeds; the paper's value at each mu as an open square."""
    fig = Figure(figsize=(6.6, 4.6), dpi=110)
    ax = fig.add_subplot()
    others = [k for k in other_keys if k in df]
    fail_x, fail_c, all_x, pruned_x, pruned_c = [], [], [], [], []
    groups = list(df.groupby(["optimizer", *others], sort=True, dropna=False))
    palette = matplotlib.colormaps["tab10"]
    paper_done: set[tuple[str, Any]] = set()
    for i, (gkey, g) in enumerate(groups):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        opt = gkey[0]
        color, name = OPTIMIZER_STYLE.get(opt, (None, str(opt)))
        if others:
            color = palette(i % 10)
        label = _group_label(name, others, gkey[1:])
        ok = g[g["result"] == "ok"].assign(x=lambda d: 1 - d[key].astype(float)).sort_values("x")
        all_x += list(1 - g[key].astype(float))
        if len(ok):
            y = ok["error"].astype(float).to_numpy()
            lo = y - ok["min"].astype(float).to_numpy()
            hi = ok["max"].astype(float).to_numpy() - y
            ax.errorbar(ok["x"], y, yerr=[lo, hi], marker="o", capsize=3, color=color, label=f"{label} (this study)")
        for _, r in g[g["result"] != "ok"].iterrows():
            xs, cs = (pruned_x, pruned_c) if r["result"] == "pruned" else (fail_x, fail_c)
            xs.append(1 - float(r[key]))
            cs.append(f"{label} {r['result']} {not_ok_count(r)}/{r['n_members']}")
        paper = g.dropna(subset=["paper"]).drop_duplicates(key) if "paper" in g else g.iloc[0:0]
        # The paper varies only the optimizer (and the task): one set of its points for each.
        paper_key = (opt, g["task"].iloc[0] if "task" in others else None)
        if len(paper) and paper_key not in paper_done:
            paper_done.add(paper_key)
            ax.scatter(1 - paper[key].astype(float), paper["paper"].astype(float), marker="s", s=50,
                       facecolors="none", edgecolors=color or PAPER_COLOR, zorder=4,
                       label=f"{name}{', task=' + str(paper_key[1]) if paper_key[1] else ''} (paper)")
    mark_failures(ax, fail_x, fail_c)
    mark_pruned(ax, pruned_x, pruned_c)
    momentum_axis(ax, all_x, key)
    ax.set_ylabel(ylabel)
    log_y_if_spread(ax, list(df["error"]) + (list(df["paper"]) if "paper" in df else []))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    place_legend(ax)
    return tidy(fig)


def table1_figure(df: pd.DataFrame, family: str = "autoencoder", other_keys: Sequence[str] = ()) -> Figure:
    return _momentum_table_figure(df, "mu_max", "Table 1: best-lr final error per mu_max (Eq. 5 cap)",
                                  error_label(family), other_keys)


def table5_figure(df: pd.DataFrame, task: str, other_keys: Sequence[str] = (), momentum: str = "mu_0") -> Figure:
    """Against 1 - mu_0; against 1 - mu_max where the study's schedule never read mu_0 (constant)."""
    return _momentum_table_figure(df, momentum, f"Table 5 ({task}): mean over seeds at the best lr (bars: min..max)"
                                  + ("" if momentum == "mu_0" else f", per {momentum}"), error_label("rnn"), other_keys)


def table2_figure(df: pd.DataFrame, other_keys: list[str] | None = None,
                  paper_mu_max: float | None = None) -> Figure:
    """NAG before (open triangle) and after (dot) the final low-momentum phase against 1 - mu_max,
    one colour per other varied setting; the paper's pair at its best mu_max in black."""
    fig = Figure(figsize=(6.6, 4.6), dpi=110)
    ax = fig.add_subplot()
    others = [k for k in (other_keys or []) if k in df]
    ok = df[df["result"] == "ok"]
    palette = matplotlib.colormaps["tab10"]
    groups = list(ok.groupby(others, sort=True, dropna=False)) if others else [((), ok)]
    for i, (gkey, g) in enumerate(groups):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        color = palette(i % 10)
        suffix = _group_label("", others, gkey).lstrip(", ")
        x = 1 - g["mu_max"].astype(float)
        ax.scatter(x, g["before"].astype(float), marker="^", facecolors="none", edgecolors=color, s=45,
                   label="before final phase" + (f" ({suffix})" if suffix else ""), zorder=3)
        ax.scatter(x, g["after"].astype(float), marker="o", color=color, s=35,
                   label="after final phase" + (f" ({suffix})" if suffix else ""), zorder=3)
        # The drop at each mu_max: one segment per setting, not a line across settings.
        ax.vlines(x, g["after"].astype(float), g["before"].astype(float), color=color, lw=1, alpha=0.6)
    paper = df.dropna(subset=["paper_before", "paper_after"]).head(1)
    xs = list(1 - df["mu_max"].astype(float))
    if len(paper) and paper_mu_max is not None:
        px = 1 - paper_mu_max
        xs.append(px)
        ax.scatter([px], paper["paper_before"].astype(float), marker="^", facecolors="none", edgecolors=PAPER_COLOR,
                   s=60, label=f"paper before (mu_max={fmt_value(paper_mu_max, 'mu_max')}, 750k updates)", zorder=4)
        ax.scatter([px], paper["paper_after"].astype(float), marker="s", facecolors="none", edgecolors=PAPER_COLOR,
                   s=60, label="paper after", zorder=4)
    momentum_axis(ax, xs, "mu_max")
    ax.set_ylabel(error_label("autoencoder"))
    values = list(df["before"]) + list(df["after"]) + list(df.get("paper_before", [])) + list(df.get("paper_after", []))
    log_y_if_spread(ax, values)
    ax.set_title("Table 2: NAG before and after the final low-momentum phase (best lr)", fontsize=10)
    ax.grid(alpha=0.3)
    place_legend(ax)
    return tidy(fig)


def table3_figure(df: pd.DataFrame, other_keys: Sequence[str] = ()) -> Figure:
    """Error against the SI scale multiplier, log-log, paper values beside."""
    fig = Figure(figsize=(6.6, 4.4), dpi=110)
    ax = fig.add_subplot()
    others = [k for k in other_keys if k in df and k != "optimizer"]
    fail_x, fail_c, pruned_x, pruned_c = [], [], [], []
    palette = matplotlib.colormaps["tab10"]
    paper_done: set[str] = set()
    for i, (gkey, g) in enumerate(df.groupby(["optimizer", *others], sort=True, dropna=False)):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        opt = gkey[0]
        color, name = OPTIMIZER_STYLE.get(opt, (None, str(opt)))
        if others:
            color = palette(i % 10)
        ok = g[g["result"] == "ok"].sort_values("init_scale")
        if len(ok):
            y = ok["error"].astype(float).to_numpy()
            ax.errorbar(ok["init_scale"].astype(float), y,
                        yerr=[y - ok["min"].astype(float).to_numpy(), ok["max"].astype(float).to_numpy() - y],
                        marker="o", capsize=3, color=color,
                        label=f"{_group_label(name, others, gkey[1:])} (this study)")
        for _, r in g[g["result"] != "ok"].iterrows():
            xs, cs = (pruned_x, pruned_c) if r["result"] == "pruned" else (fail_x, fail_c)
            xs.append(float(r["init_scale"]))
            cs.append(f"{_group_label(name, others, gkey[1:])} {r['result']} {not_ok_count(r)}/{r['n_members']}")
        paper = g.dropna(subset=["paper"]).drop_duplicates("init_scale").sort_values("init_scale")
        if len(paper) and opt not in paper_done:
            paper_done.add(opt)
            ax.plot(paper["init_scale"].astype(float), paper["paper"].astype(float), "s--", mfc="none",
                    color=PAPER_COLOR, label=f"{name} (paper, 750k updates)")
    mark_failures(ax, fail_x, fail_c)
    mark_pruned(ax, pruned_x, pruned_c)
    ax.set_xscale("log", base=2)
    scales = sorted(set(df["init_scale"].dropna().astype(float)))
    if scales:
        fixed_ticks(ax.xaxis, scales, [fmt_value(s) for s in scales])
    values = list(df["error"].dropna()) + list(df["paper"].dropna())
    if finite_positive(values):
        ax.set_yscale("log")
    ax.set_xlabel("SI scale multiplier (log scale)")
    ax.set_ylabel(error_label("autoencoder"))
    ax.set_title("Table 3: error against the sparse-init scale", fontsize=10)
    ax.grid(alpha=0.3)
    place_legend(ax)
    return tidy(fig)
