"""Figures for a report. Each function returns a matplotlib Figure (no pyplot state), so tests can
read its axes, lines and legend; ``save`` writes it as PNG.

- ``tables``: the paper's Tables 1, 2, 3 and 5 as figures, with the published values;
- ``search``: sensitivity to one searched parameter, and Optuna's importances and slice plots;
- ``curves``: learning curves with the momentum phases and the bias-only levels;
- ``style``: the conventions every figure shares (below), ``tick_labels``: labels that never overlap.

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

from pathlib import Path

import matplotlib

# No display: figures are drawn to PNG, in a driver, a test or a notebook alike; set before any
# other matplotlib import (every figure module is imported after this package).
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
