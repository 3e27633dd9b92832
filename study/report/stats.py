"""The 95% interval over seeds that every table cell carries (beyond the paper, which prints means).

For n seeds with mean m and sample standard deviation s (n - 1 in the denominator), the interval is
m ± t * s / sqrt(n), with t the 0.975 quantile of Student's t with n - 1 degrees of freedom
(scipy.stats.t). One seed has no interval: NaN here, "n/a" in the tables.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

LEVEL = 0.95


def missing(v: Any) -> bool:
    """None or NaN: a gap in a stored value (pandas reads a column's gaps as NaN)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def or_none(v: Any) -> Any:
    """``v``, with a gap (None or NaN) as None."""
    return None if missing(v) else v


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with n - 1 degrees of freedom (n >= 2)."""
    from scipy import stats  # here: verdict.py, at the end of `study run`, needs only missing()

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def mean_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, sample sd, low, high) of ``values``; sd, low and high are NaN for fewer than 2 values
    (and mean too for none)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = t_quantile(x.size, level) * sd / math.sqrt(x.size)
    return mean, sd, mean - half, mean + half


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell's number: ``digits`` significant digits; '' for None and NaN."""
    if missing(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


__all__ = ["LEVEL", "fmt", "mean_interval", "missing", "or_none", "t_quantile"]
