"""Figures for a report. Each function returns a matplotlib Figure (no pyplot state), so tests can
read its axes, lines and legend; ``save`` writes it as PNG.

Conventions, the same in every figure:

- Momentum (mu_max, mu_0) is plotted as 1 - mu on a log scale, so 0.9, 0.99 and 0.999 are evenly
  spaced as they matter; a top axis labels the same ticks with mu itself.
- Categorical parameters (optimizer, init, a ``type: categorical`` search) are points, never lines
  that would suggest an order between the categories.
- The paper's values appear as open black (or per-optimizer) markers labelled "paper".
- Diverged settings are drawn, not dropped: an "x" at the top of the axes with the count beside it.
- Legends show rounded values (3 significant digits; momentum to 2 significant digits of 1 - mu).
- Tick labels never overlap: after layout, overlapping labels are rotated, then thinned
  (``tidy``); ``tick_label_overlaps`` is the check.

Optuna's own plots (optuna.visualization.matplotlib) draw the importances and a slice plot of a
sampled search; the paper-style figures (tables, sensitivity with the published values and the
failures, learning curves with the momentum phases) are ours, since no Optuna plot draws them.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from study.report.data import MOMENTUM_FIELDS  # noqa: E402

OPTIMIZER_STYLE = {"nag": ("tab:blue", "NAG"), "cm": ("tab:orange", "CM")}
PAPER_COLOR = "black"
PHASE_COLOR = "0.35"
BIAS_COLOR = "tab:red"


# --- values and labels --------------------------------------------------------------------------


def fmt_value(v: Any, field: str | None = None) -> str:
    """A value as a legend or tick shows it: 3 significant digits; a momentum to 2 significant
    digits of 1 - mu (0.9995 stays 0.9995, 0.98765 becomes 0.988)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_, str)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if field in MOMENTUM_FIELDS and 0.0 < v < 1.0:
        digits = max(1, 1 - math.floor(math.log10(1.0 - v)))
        return f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def error_label(family: str, metric: str = "error") -> str:
    if metric != "error":
        return f"final {metric}"
    return "final training squared error" if family == "autoencoder" else "final zero-one error"


def _finite_positive(values: Any) -> bool:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(v > 0 for v in vals)


def _log_y_if_spread(ax: Any, values: Sequence[Any], ratio: float = 20) -> None:
    vals = [float(v) for v in values if v is not None and not pd.isna(v)]
    if _finite_positive(vals) and max(vals) / min(vals) > ratio:
        ax.set_yscale("log")


def _mark_failures(ax: Any, xs: list[float], counts: list[str], color: str = "tab:red") -> None:
    """Diverged/failed settings as 'x' markers at the top edge with "bad/runs" under each; several
    settings failing at one x are summed into one mark (their rows are in the table)."""
    if not xs:
        return
    per_x: dict[float, list[int]] = {}
    for x, c in zip(xs, counts):
        bad, runs = (int(v) for v in c.rsplit(" ", 1)[-1].split("/"))
        total = per_x.setdefault(float(x), [0, 0])
        total[0] += bad
        total[1] += runs
    ax.set_ymargin(0.15)  # headroom: the marks sit above the highest data point
    trans = ax.get_xaxis_transform()
    ax.scatter(list(per_x), [0.97] * len(per_x), marker="x", color=color, transform=trans, zorder=5,
               label="diverged / failed (runs)")
    for x, (bad, runs) in per_x.items():
        ax.annotate(f"{bad}/{runs}", (x, 0.97), xycoords=trans, textcoords="offset points", xytext=(0, -11),
                    ha="center", fontsize=7, color=color)


def _legend(ax: Any, outside_from: int = 6) -> None:
    """A legend inside the axes while it is small; beside them once it would cover the data."""
    n = len(ax.get_legend_handles_labels()[1])
    if n >= outside_from:
        width, height = ax.figure.get_size_inches()
        ax.figure.set_size_inches(width + 2.6, height)  # the legend's room, not the axes'
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif n:
        ax.legend(fontsize=7)


def _fixed_ticks(axis: Any, values: Sequence[float], labels: Sequence[str]) -> None:
    """Ticks at exactly the values run, no minor labels (log axes would add crowded ones)."""
    axis.set_ticks(list(values), list(labels))
    axis.set_minor_formatter(NullFormatter())


def momentum_axis(ax: Any, one_minus: Sequence[float], field: str, label_ticks: bool = True) -> None:
    """The x axis as 1 - ``field`` on a log scale; the top axis names the same ticks as mu."""
    xs = sorted({float(x) for x in one_minus if x is not None and not pd.isna(x) and x > 0})
    if len(xs) == 1:  # a single value: a decade either side (set before the log scale, which
        ax.set_xlim(xs[0] / 3, min(xs[0] * 3, 1.5))  # refuses the identical limits of one point)
    ax.set_xscale("log")
    ax.set_xlabel(f"1 - {field} (log scale)")
    if not (label_ticks and xs):
        return
    _fixed_ticks(ax.xaxis, xs, [fmt_value(x) for x in xs])
    top = ax.secondary_xaxis("top")
    _fixed_ticks(top.xaxis, xs, [fmt_value(1 - x, field) for x in xs])
    top.set_xlabel(field)


# --- tick labels that never overlap ---------------------------------------------------------------


def _canvas(fig: Figure) -> FigureCanvasAgg:
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas


def _all_axes(fig: Figure) -> list[Any]:
    out = []
    for ax in fig.axes:
        out.append(ax)
        out.extend(ax.child_axes)  # secondary (top) axes
    return out


def _visible_tick_labels(axis: Any) -> list[Any]:
    """The tick labels matplotlib draws on ``axis``: in view, visible and not empty."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                        (axis.get_minorticklocs(), axis.get_minor_ticks)):
        for loc, tick in zip(locs, ticks(len(locs))):
            if not (lo - tol <= loc <= hi + tol) or not tick.get_visible():
                continue
            for text in (tick.label1, tick.label2):
                if text.get_visible() and text.get_text().strip():
                    out.append(text)
    return out


def _overlapping(texts: list[Any], renderer: Any, pad: float = 0.5) -> list[tuple[Any, Any]]:
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    pairs = []
    for (a, ba), (b, bb) in combinations(boxes, 2):
        w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if w > pad and h > pad:
            pairs.append((a, b))
    return pairs


def tick_label_overlaps(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of tick labels of one axis whose drawn extents overlap (empty when none do)."""
    canvas = _canvas(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    out = []
    for ax in _all_axes(fig):
        for axis in (ax.xaxis, ax.yaxis):
            out.extend((a.get_text(), b.get_text()) for a, b in _overlapping(_visible_tick_labels(axis), renderer))
    return out


def tidy(fig: Figure, layout: bool = True) -> Figure:
    """Lays the figure out (``layout``: tight_layout), then clears overlapping tick labels axis by
    axis: minor labels go first, then x labels are rotated, then every k-th label is kept (k = 2,
    3, ...)."""
    canvas = _canvas(fig)

    def lay_out() -> None:
        if layout:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tight_layout on secondary axes
                fig.tight_layout()

    lay_out()

    def crowded(axis: Any) -> bool:
        canvas.draw()
        return bool(_overlapping(_visible_tick_labels(axis), canvas.get_renderer()))

    for _ in range(2):  # a rotation changes the layout, which can crowd an axis already checked
        for ax in _all_axes(fig):
            for axis in (ax.xaxis, ax.yaxis):
                if not crowded(axis):
                    continue
                axis.set_minor_formatter(NullFormatter())
                if not crowded(axis):
                    continue
                lo, hi = sorted(axis.get_view_interval())
                major = axis.get_majorticklocs()
                ticks = [(loc, t.label1.get_text() or t.label2.get_text())
                         for loc, t in zip(major, axis.get_major_ticks(len(major))) if lo <= loc <= hi]
                locs, labels = [loc for loc, _ in ticks], [s for _, s in ticks]
                rotate = {}
                if axis is ax.xaxis:
                    top = axis.get_ticks_position() == "top" or ax not in fig.axes
                    rotate = {"rotation": 35, "ha": "left" if top else "right", "rotation_mode": "anchor"}
                axis.set_ticks(locs, labels, **rotate)
                lay_out()
                step = 2
                while crowded(axis) and step <= len(locs):
                    axis.set_ticks(locs, [s if i % step == 0 else "" for i, s in enumerate(labels)], **rotate)
                    step += 1
    return fig


# --- the paper's tables -------------------------------------------------------------------------


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
    fail_x, fail_c, all_x = [], [], []
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
            fail_x.append(1 - float(r[key]))
            fail_c.append(f"{label} {r['result']} {r['n_diverged'] or r['n_failed']}/{r['n_members']}")
        paper = g.dropna(subset=["paper"]).drop_duplicates(key) if "paper" in g else g.iloc[0:0]
        # The paper varies only the optimizer (and the task): one set of its points for each.
        paper_key = (opt, g["task"].iloc[0] if "task" in others else None)
        if len(paper) and paper_key not in paper_done:
            paper_done.add(paper_key)
            ax.scatter(1 - paper[key].astype(float), paper["paper"].astype(float), marker="s", s=50,
                       facecolors="none", edgecolors=color or PAPER_COLOR, zorder=4,
                       label=f"{name}{', task=' + str(paper_key[1]) if paper_key[1] else ''} (paper)")
    _mark_failures(ax, fail_x, fail_c)
    momentum_axis(ax, all_x, key)
    ax.set_ylabel(ylabel)
    _log_y_if_spread(ax, list(df["error"]) + (list(df["paper"]) if "paper" in df else []))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return tidy(fig)


def table1_figure(df: pd.DataFrame, family: str = "autoencoder", other_keys: Sequence[str] = ()) -> Figure:
    return _momentum_table_figure(df, "mu_max", "Table 1: best-lr final error per mu_max (Eq. 5 cap)",
                                  error_label(family), other_keys)


def table5_figure(df: pd.DataFrame, task: str, other_keys: Sequence[str] = ()) -> Figure:
    return _momentum_table_figure(df, "mu_0", f"Table 5 ({task}): mean over seeds at the best lr (bars: min..max)",
                                  error_label("rnn"), other_keys)


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
    _log_y_if_spread(ax, values)
    ax.set_title("Table 2: NAG before and after the final low-momentum phase (best lr)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return tidy(fig)


def table3_figure(df: pd.DataFrame, other_keys: Sequence[str] = ()) -> Figure:
    """Error against the SI scale multiplier, log-log, paper values beside."""
    fig = Figure(figsize=(6.6, 4.4), dpi=110)
    ax = fig.add_subplot()
    others = [k for k in other_keys if k in df and k != "optimizer"]
    fail_x, fail_c = [], []
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
            fail_x.append(float(r["init_scale"]))
            fail_c.append(f"{_group_label(name, others, gkey[1:])} {r['result']} "
                          f"{r['n_diverged'] or r['n_failed']}/{r['n_members']}")
        paper = g.dropna(subset=["paper"]).drop_duplicates("init_scale").sort_values("init_scale")
        if len(paper) and opt not in paper_done:
            paper_done.add(opt)
            ax.plot(paper["init_scale"].astype(float), paper["paper"].astype(float), "s--", mfc="none",
                    color=PAPER_COLOR, label=f"{name} (paper, 750k updates)")
    _mark_failures(ax, fail_x, fail_c)
    ax.set_xscale("log", base=2)
    scales = sorted(set(df["init_scale"].dropna().astype(float)))
    if scales:
        _fixed_ticks(ax.xaxis, scales, [fmt_value(s) for s in scales])
    values = list(df["error"].dropna()) + list(df["paper"].dropna())
    if _finite_positive(values):
        ax.set_yscale("log")
    ax.set_xlabel("SI scale multiplier (log scale)")
    ax.set_ylabel(error_label("autoencoder"))
    ax.set_title("Table 3: error against the sparse-init scale", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return tidy(fig)


# --- sensitivity ----------------------------------------------------------------------------------


def sensitivity_figure(df: pd.DataFrame, family: str, metric: str = "error") -> Figure:
    """Best and median final error over the other parameters, against one searched parameter.

    Not Optuna's plot_slice: this one is per member (seeds of a population are separate points),
    marks diverged and failed members, and overlays the paper's values; the generic slice plot of
    a sampled search is Optuna's (``optuna_slice_figure``).
    """
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.add_subplot()
    label, log, field = df.attrs.get("label", "x"), df.attrs.get("log", False), df.attrs.get("field", "x")
    momentum = df.attrs.get("momentum", False)
    categorical = df.attrs.get("categorical", False)
    numeric = bool(len(df)) and all(isinstance(v, (int, float, np.integer, np.floating)) for v in df["x"])
    xs = df["x"].astype(float).to_numpy() if numeric else np.arange(len(df), dtype=float)
    ok = (df["n_completed"] > 0).to_numpy()
    # Categories have no order: points only. Numbers are joined, in order.
    joined = numeric and not categorical
    ax.plot(xs[ok], df["best"][ok], marker="o", ls="-" if joined else "none", label="best")
    ax.plot(xs[ok], df["median"][ok], marker="s", mfc="none", ls="--" if joined else "none", label="median")
    if "paper" in df and df["paper"].notna().any():
        has = df["paper"].notna().to_numpy()
        ax.scatter(xs[has], df["paper"][has].astype(float), marker="D", s=45, facecolors="none",
                   edgecolors=PAPER_COLOR, label="paper (best of NAG, CM)", zorder=4)
    bad = (df["n_diverged"] + df["n_failed"] > 0).to_numpy()
    _mark_failures(ax, list(xs[bad]), [f"{d + f}/{n}" for d, f, n in
                                       zip(df["n_diverged"][bad], df["n_failed"][bad], df["n"][bad])])
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in df["x"]])
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(label)
    elif momentum:
        momentum_axis(ax, xs, field, label_ticks=len(xs) <= 12)
    else:
        ax.set_xlabel(label + (" (log scale)" if log else ""))
        if log:
            ax.set_xscale("log")
        if len(xs) <= 12:  # label the values run, not matplotlib's ticks between them
            _fixed_ticks(ax.xaxis, xs, [fmt_value(x) for x in xs])
            if len(xs) == 1 and not log:
                ax.set_xlim(xs[0] - 0.5 * abs(xs[0] or 1), xs[0] + 0.5 * abs(xs[0] or 1))
            elif len(xs) == 1:
                ax.set_xlim(xs[0] / 3, xs[0] * 3)
    values = list(df["best"]) + list(df["median"]) + (list(df["paper"]) if "paper" in df else [])
    _log_y_if_spread(ax, values)
    ax.set_ylabel(error_label(family, metric))
    ax.set_title(f"Sensitivity to {field}" + (" (categorical)" if categorical else ""), fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return tidy(fig)


# --- Optuna's plots -------------------------------------------------------------------------------


def _optuna_figure(draw: Any, layout: bool = True) -> Figure:
    """Runs an optuna.visualization.matplotlib function without leaving pyplot state behind: it
    sets the ggplot style globally and registers its figure with pyplot."""
    import matplotlib.pyplot as plt
    import optuna

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        drawn = draw()
        first = np.ravel(drawn)[0] if isinstance(drawn, np.ndarray) else drawn
        fig = first.figure
        plt.close(fig)
        return tidy(fig, layout)


def importance_figure(study: Any, evaluator: Any) -> Figure:
    """optuna.visualization.matplotlib.plot_param_importances, with the evaluator that made the
    importances table (a fixed seed, so the figure and importances.csv agree)."""
    from optuna.visualization.matplotlib import plot_param_importances

    return _optuna_figure(lambda: plot_param_importances(study, evaluator=evaluator))


def optuna_slice_figure(study: Any) -> Figure:
    """optuna.visualization.matplotlib.plot_slice: the objective of every finite trial against each
    sampled parameter, under the sampler's names (``one_minus_mu_0`` is 1 - mu_0, log scale)."""
    from optuna.visualization.matplotlib import plot_slice

    # Optuna places a colorbar beside several subplots: a tight_layout would move it onto them.
    return _optuna_figure(lambda: plot_slice(study), layout=False)


# --- learning curves ------------------------------------------------------------------------------


def curves_figure(points: pd.DataFrame, members: pd.DataFrame, keys: list[str], family: str,
                  phases: Sequence[tuple[float, str]] = (), levels: Sequence[tuple[float, str, str]] = (),
                  title: str = "Learning curves", notes: Sequence[str] = ()) -> Figure:
    """Error against update for each setting's members (one colour per setting).

    ``phases``: (update, label) where the momentum schedule changes phase, drawn as dotted
    vertical lines (the RNN warm-up's end, the start of the final low-momentum phase).
    ``levels``: (error, label, "computed" | "paper") horizontal lines, the bias-only levels.
    ``notes``: what could not be drawn and why (a phase after the runs' end, a level that could
    not be computed), written under the legend.
    """
    fig = Figure(figsize=(8.6, 4.6), dpi=110)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    groups = list(members.groupby(keys, dropna=False, sort=True))
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        color = cmap(i / max(len(groups) - 1, 1))
        label = ", ".join(f"{k}={fmt_value(v, k)}" for k, v in zip(keys, key))
        for j, m in enumerate(g.itertuples(index=False)):
            p = points[(points["trial_id"] == m.trial_id) & (points["member"] == m.member)].sort_values("step")
            p = p[p["error"].notna()]
            ax.plot(p["step"], p["error"].astype(float), color=color, alpha=0.8, lw=1,
                    label=label if j == 0 else None, ls="--" if m.outcome == "diverged" else "-")
    steps = points["step"].dropna()
    last = float(steps.max()) if len(steps) else 0.0
    for update, text in phases:
        ax.axvline(update, color=PHASE_COLOR, ls=":", lw=1.4, label=text)
    for level, text, kind in levels:
        ax.axhline(level, color=BIAS_COLOR if kind == "computed" else PAPER_COLOR,
                   ls="-." if kind == "computed" else (0, (1, 3)), lw=1.2, label=text)
    if last:
        ax.set_xlim(0, max([last, *(u for u, _ in phases)]) * 1.02)
    _log_y_if_spread(ax, list(points["error"]) + [lv for lv, _, _ in levels])
    ax.set_xlabel("update")
    ax.set_ylabel(error_label(family).replace("final ", ""))
    ax.set_title(f"{title}; dashed: diverged", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if notes:
        import textwrap

        ax.text(1.01, 0.0, "\n".join(textwrap.fill(n, 48) for n in notes), transform=ax.transAxes, fontsize=7,
                va="bottom", ha="left", color=PHASE_COLOR)
    return tidy(fig)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
