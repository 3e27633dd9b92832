"""Figures for a report. Each function returns a matplotlib Figure (no pyplot state), so tests can
read its axes labels; ``save`` writes it as PNG.

Diverged settings are drawn, not dropped: an "x" at the top of the axes with the count beside it.
The paper's values appear as open black markers labelled "paper".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

OPTIMIZER_STYLE = {"nag": ("tab:blue", "NAG"), "cm": ("tab:orange", "CM")}


def error_label(family: str, metric: str = "error") -> str:
    if metric != "error":
        return f"final {metric}"
    return "final training squared error" if family == "autoencoder" else "final zero-one error"


def _finite_positive(values: Any) -> bool:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(v > 0 for v in vals)


def _mark_failures(ax: Any, xs: list[float], counts: list[str], color: str = "tab:red") -> None:
    """Diverged/failed settings as 'x' markers at the top edge, labelled with their counts."""
    if not xs:
        return
    trans = ax.get_xaxis_transform()
    ax.scatter(xs, [0.97] * len(xs), marker="x", color=color, transform=trans, zorder=5, label="diverged / failed")
    for x, c in zip(xs, counts):
        ax.annotate(c, (x, 0.97), xycoords=trans, textcoords="offset points", xytext=(4, -10), fontsize=7, color=color)


def _categorical_by_optimizer(df: pd.DataFrame, key: str, title: str, xlabel: str, ylabel: str) -> Figure:
    """One line per optimizer over categorical x (mu_max or mu_0 values), error bars = min..max."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    cats = sorted({float(v) for v in df[key].dropna()})
    pos = {c: i for i, c in enumerate(cats)}
    fail_x, fail_c = [], []
    for opt, g in df.groupby("optimizer", sort=True):
        color, name = OPTIMIZER_STYLE.get(opt, (None, str(opt)))
        ok = g[g["result"] == "ok"].sort_values(key)
        if len(ok):
            x = [pos[float(v)] for v in ok[key]]
            y = ok["error"].astype(float).to_numpy()
            lo = y - ok["min"].astype(float).to_numpy()
            hi = ok["max"].astype(float).to_numpy() - y
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=color, label=f"{name} (this study)")
        for _, r in g[g["result"] != "ok"].iterrows():
            fail_x.append(pos[float(r[key])])
            fail_c.append(f"{name} {r['result']} {r['n_diverged'] or r['n_failed']}/{r['n_members']}")
        paper = g.dropna(subset=["paper"]) if "paper" in g else g.iloc[0:0]
        if len(paper):
            ax.scatter([pos[float(v)] for v in paper[key]], paper["paper"].astype(float), marker="s",
                       facecolors="none", edgecolors=color or "black", label=f"{name} (paper)", zorder=4)
    _mark_failures(ax, fail_x, fail_c)
    ax.set_xticks(range(len(cats)), [f"{c:g}" for c in cats])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    values = list(df["error"].dropna()) + (list(df["paper"].dropna()) if "paper" in df else [])
    if _finite_positive(values) and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def table1_figure(df: pd.DataFrame, family: str = "autoencoder") -> Figure:
    return _categorical_by_optimizer(
        df, "mu_max", "Table 1: best-lr final error per mu_max", "mu_max (Eq. 5 cap)", error_label(family)
    )


def table5_figure(df: pd.DataFrame, task: str) -> Figure:
    return _categorical_by_optimizer(
        df, "mu_0", f"Table 5 ({task}): mean over seeds at the best lr (bars: min..max)", "mu_0",
        error_label("rnn"),
    )


def table2_figure(df: pd.DataFrame, other_keys: list[str] | None = None) -> Figure:
    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    ax = fig.add_subplot()
    ok = df[df["result"] == "ok"]
    x = np.arange(len(ok))
    ax.bar(x - 0.2, ok["before"].astype(float), width=0.4, label="before final phase")
    ax.bar(x + 0.2, ok["after"].astype(float), width=0.4, label="after final phase")
    keys = ["mu_max", *(other_keys or [])]
    ax.set_xticks(x, [", ".join(f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                      for _, r in ok.iterrows()], fontsize=8)
    ax.set_xlabel(", ".join(keys) + " (NAG, best lr)")
    ax.set_ylabel(error_label("autoencoder"))
    ax.set_title("Table 2: low-momentum final phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def table3_figure(df: pd.DataFrame) -> Figure:
    """Error against the SI scale multiplier, log-log, paper values beside."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    fail_x, fail_c = [], []
    for opt, g in df.groupby("optimizer", sort=True):
        color, name = OPTIMIZER_STYLE.get(opt, (None, str(opt)))
        ok = g[g["result"] == "ok"].sort_values("init_scale")
        if len(ok):
            y = ok["error"].astype(float).to_numpy()
            ax.errorbar(ok["init_scale"].astype(float), y,
                        yerr=[y - ok["min"].astype(float).to_numpy(), ok["max"].astype(float).to_numpy() - y],
                        marker="o", capsize=3, color=color, label=f"{name} (this study)")
        for _, r in g[g["result"] != "ok"].iterrows():
            fail_x.append(float(r["init_scale"]))
            fail_c.append(f"{r['result']} {r['n_diverged'] or r['n_failed']}/{r['n_members']}")
        paper = g.dropna(subset=["paper"])
        if len(paper):
            ax.plot(paper["init_scale"].astype(float), paper["paper"].astype(float), "s--", mfc="none",
                    color="black", label=f"{name} (paper, 750k updates)")
    _mark_failures(ax, fail_x, fail_c)
    ax.set_xscale("log", base=2)
    values = list(df["error"].dropna()) + list(df["paper"].dropna())
    if _finite_positive(values):
        ax.set_yscale("log")
    ax.set_xlabel("SI scale multiplier")
    ax.set_ylabel(error_label("autoencoder"))
    ax.set_title("Table 3: error against the sparse-init scale")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sensitivity_figure(df: pd.DataFrame, family: str, metric: str = "error") -> Figure:
    """Best and median final error over the other parameters, against one searched parameter."""
    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    ax = fig.add_subplot()
    label, log, field = df.attrs.get("label", "x"), df.attrs.get("log", False), df.attrs.get("field", "x")
    numeric = len(df) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in df["x"])
    xs = df["x"].astype(float).to_numpy() if numeric else np.arange(len(df))
    ok = df["n_completed"] > 0
    ax.plot(xs[ok], df["best"][ok], "o-", label="best")
    ax.plot(xs[ok], df["median"][ok], "s--", label="median")
    bad = df["n_diverged"] + df["n_failed"] > 0
    _mark_failures(ax, list(xs[bad]), [f"{d + f}/{n}" for d, f, n in
                                       zip(df["n_diverged"][bad], df["n_failed"][bad], df["n"][bad])])
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in df["x"]])
    elif log:
        ax.set_xscale("log")
        if len(xs) <= 12:  # label the values run, not matplotlib's crowded minor ticks
            from matplotlib.ticker import NullFormatter

            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
    values = list(df["best"].dropna()) + list(df["median"].dropna())
    if _finite_positive(values) and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(error_label(family, metric))
    ax.set_title(f"Sensitivity to {field}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def importance_figure(df: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(5.5, 3.5), dpi=110)
    ax = fig.add_subplot()
    ax.barh(df["parameter"][::-1], df["importance"][::-1])
    ax.set_xlabel("importance (Optuna, fANOVA)")
    ax.set_ylabel("parameter")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    return fig


def curves_figure(points: pd.DataFrame, members: pd.DataFrame, keys: list[str], family: str) -> Figure:
    """Error against update for each setting's members (one colour per setting), on a log y axis."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    groups = list(members.groupby(keys, dropna=False, sort=True))
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        color = cmap(i / max(len(groups) - 1, 1))
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
        for j, m in enumerate(g.itertuples(index=False)):
            p = points[(points["trial_id"] == m.trial_id) & (points["member"] == m.member)].sort_values("step")
            p = p[p["error"].notna()]
            ax.plot(p["step"], p["error"].astype(float), color=color, alpha=0.8, lw=1,
                    label=label if j == 0 else None, ls="--" if m.outcome == "diverged" else "-")
    errors = list(points["error"].dropna())
    if _finite_positive(errors) and max(errors) / min(errors) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel(error_label(family).replace("final ", ""))
    ax.set_title("Learning curves (dashed: diverged)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
