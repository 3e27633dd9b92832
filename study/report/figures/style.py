"""What every figure of a report shares: colours, how values and labels read, the momentum axis
(1 - mu on a log scale), the failure marks and the legend's place."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from study.report.data import MOMENTUM_FIELDS

OPTIMIZER_STYLE = {"nag": ("tab:blue", "NAG"), "cm": ("tab:orange", "CM")}
PAPER_COLOR = "black"
PHASE_COLOR = "0.35"
BIAS_COLOR = "tab:red"


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


def finite_positive(values: Any) -> bool:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(v > 0 for v in vals)


def log_y_if_spread(ax: Any, values: Sequence[Any], ratio: float = 20) -> None:
    vals = [float(v) for v in values if v is not None and not pd.isna(v)]
    if finite_positive(vals) and max(vals) / min(vals) > ratio:
        ax.set_yscale("log")


PRUNED_COLOR = "tab:gray"


def mark_failures(ax: Any, xs: list[float], counts: list[str], color: str = "tab:red",
                  label: str = "diverged / failed (runs)", y: float = 0.97) -> None:
    """Diverged/failed settings as 'x' markers at the top edge with "bad/runs" under each; several
    settings failing at one x are summed into one mark (their rows are in the table). Pruned
    settings get their own grey marks (``mark_pruned``): stopped by the scheduler is no failure."""
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
    ax.scatter(list(per_x), [y] * len(per_x), marker="x", color=color, transform=trans, zorder=5, label=label)
    for x, (bad, runs) in per_x.items():
        ax.annotate(f"{bad}/{runs}", (x, y), xycoords=trans, textcoords="offset points", xytext=(0, -11),
                    ha="center", fontsize=7, color=color)


def mark_pruned(ax: Any, xs: list[float], counts: list[str]) -> None:
    """Settings the scheduler pruned (ASHA), in grey below the failure marks."""
    mark_failures(ax, xs, counts, color=PRUNED_COLOR, label="pruned by the scheduler (runs)", y=0.88)


def place_legend(ax: Any, outside_from: int = 6) -> None:
    """A legend inside the axes while it is small; beside them once it would cover the data."""
    n = len(ax.get_legend_handles_labels()[1])
    if n >= outside_from:
        width, height = ax.figure.get_size_inches()
        ax.figure.set_size_inches(width + 2.6, height)  # the legend's room, not the axes'
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif n:
        ax.legend(fontsize=7)


def fixed_ticks(axis: Any, values: Sequence[float], labels: Sequence[str]) -> None:
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
    fixed_ticks(ax.xaxis, xs, [fmt_value(x) for x in xs])
    top = ax.secondary_xaxis("top")
    fixed_ticks(top.xaxis, xs, [fmt_value(1 - x, field) for x in xs])
    top.set_xlabel(field)
