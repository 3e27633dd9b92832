"""Tick labels that never overlap: ``tidy`` lays a figure out and clears crowded labels,
``tick_label_overlaps`` is the check."""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


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
