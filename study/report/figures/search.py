"""Figures of a search: the sensitivity of the final error to one searched parameter (ours, with
the paper's values and the failures), and Optuna's own importances and slice plots."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from study.report.figures.style import (PAPER_COLOR, error_label, fixed_ticks, fmt_value, log_y_if_spread,
                                        mark_failures, mark_pruned, momentum_axis, place_legend)
from study.report.figures.tick_labels import tidy


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
    mark_failures(ax, list(xs[bad]), [f"{d + f}/{n}" for d, f, n in
                                      zip(df["n_diverged"][bad], df["n_failed"][bad], df["n"][bad])])
    pruned = df["n_pruned"].to_numpy() > 0 if "n_pruned" in df else np.zeros(len(df), bool)
    mark_pruned(ax, list(xs[pruned]), [f"{p}/{n}" for p, n in zip(df["n_pruned"][pruned], df["n"][pruned])])
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
            fixed_ticks(ax.xaxis, xs, [fmt_value(x) for x in xs])
            if len(xs) == 1 and not log:
                ax.set_xlim(xs[0] - 0.5 * abs(xs[0] or 1), xs[0] + 0.5 * abs(xs[0] or 1))
            elif len(xs) == 1:
                ax.set_xlim(xs[0] / 3, xs[0] * 3)
    values = list(df["best"]) + list(df["median"]) + (list(df["paper"]) if "paper" in df else [])
    log_y_if_spread(ax, values)
    ax.set_ylabel(error_label(family, metric))
    ax.set_title(f"Sensitivity to {field}" + (" (categorical)" if categorical else ""), fontsize=10)
    ax.grid(alpha=0.3)
    place_legend(ax)
    return tidy(fig)


def _optuna_figure(draw: Any, layout: bool = True) -> Figure:
    """Runs an optuna.visualization.matplotlib function without leaving pyplot state behind: it
    sets the ggplot style globally and registers its figure with pyplot."""
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        drawn = draw()
        first = np.ravel(drawn)[0] if isinstance(drawn, np.ndarray) else drawn
        fig = first.figure
        plt.close(fig)
        return tidy(fig, layout)


def importance_figure(study: Any, evaluator: Any) -> Figure:
    """optuna.visualization.matplotlib.plot_param_importances, with the evaluator that made the
    importances table (a fixed seed, so the figure and importances.csv agree)."""
    from study.run.optuna_study_analysis import plot_importances

    return _optuna_figure(lambda: plot_importances(study, evaluator))


def optuna_slice_figure(study: Any) -> Figure:
    """optuna.visualization.matplotlib.plot_slice: the objective of every finite trial against each
    sampled parameter, under the sampler's names (``one_minus_mu_0`` is 1 - mu_0, log scale)."""
    from study.run.optuna_study_analysis import plot_slice

    # Optuna places a colorbar beside several subplots: a tight_layout would move it onto them.
    return _optuna_figure(lambda: plot_slice(study), layout=False)
