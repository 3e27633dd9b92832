"""Learning curves: each member's error against the update, with the momentum schedule's phases
and the bias-only levels."""

from __future__ import annotations

from typing import Sequence

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from study.report.figures.style import BIAS_COLOR, PAPER_COLOR, PHASE_COLOR, error_label, fmt_value, log_y_if_spread
from study.report.figures.tick_labels import tidy


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
    log_y_if_spread(ax, list(points["error"]) + [lv for lv, _, _ in levels])
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
