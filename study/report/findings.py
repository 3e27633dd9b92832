"""The paper's findings as data, and the one rule that decides, from a study's per-seed values,
whether each finding holds there.

A finding compares two cells of one of the paper's tables: the paper says ``better`` reaches a
lower error than ``worse`` (Table 2: the same cell after its final low-momentum phase against
before it). ``decide`` turns the per-seed values of the two cells into a verdict:

- **holds**: the 95% intervals of the two means separate in the paper's direction, or, over the
  seeds both cells ran (the same seeds, so their noise is shared), the 95% paired t interval of
  the differences excludes 0 on the paper's side;
- **contradicted**: the same, against the paper;
- **direction**: neither separates, and the means agree with the paper;
- **direction against**: neither separates, and the means do not agree with the paper (a tie
  included): weaker than contradicted, never read as support;
- **not testable**, with the reason: a cell missing or without a clean result, fewer than 2 seeds
  in a cell, both cells at error 0 on every seed (the floor: the problem does not separate them), a deciding cell whose best lr sits at the edge of its grid (the best is not
  established until the grid is widened), or a protocol under which the finding cannot show (a
  schedule that never reads mu_0, runs that end inside the warm-up).

Intervals are Student t intervals (study.report.stats): mean ± t(0.975, n - 1) s / sqrt(n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from study.report.stats import mean_interval

HOLDS, DIRECTION, AGAINST, CONTRADICTED, NOT_TESTABLE = (
    "holds", "direction", "direction against", "contradicted", "not testable")
OUTCOMES = (HOLDS, DIRECTION, AGAINST, CONTRADICTED, NOT_TESTABLE)


@dataclass(frozen=True)
class Finding:
    """``better`` has a lower error than ``worse`` in the paper's ``table`` for each of ``tasks``.

    A cell is the table's axes (``optimizer``, ``mu_max``, ``mu_0`` or ``init_scale``); ``value``
    says which of its numbers is compared: the final error, or Table 2's error before the final
    phase. ``mu_max: "paper best"`` (Table 2) is the mu_max of the paper's best NAG entry in
    Table 1 for the task.
    """

    key: str
    table: str
    tasks: tuple[str, ...]
    better: Mapping[str, Any]
    worse: Mapping[str, Any]
    words: str
    better_value: str = "final"
    worse_value: str = "final"


AUTOENCODERS = ("curves", "mnist", "faces")
RNN_PROBLEMS = ("addition", "multiplication", "mem5", "mem20")

FINDINGS: tuple[Finding, ...] = (
    Finding("momentum beats SGD", "table1", AUTOENCODERS, {"optimizer": "nag", "mu_max": 0.99},
            {"optimizer": "nag", "mu_max": 0.0},
            "Table 1: larger values of mu_max tend to achieve better performance (NAG mu_max 0.99 vs plain SGD)"),
    Finding("mu_max 0.995 beats 0.99", "table1", ("curves", "faces"), {"optimizer": "nag", "mu_max": 0.995},
            {"optimizer": "nag", "mu_max": 0.99},
            "Table 1: larger values of mu_max tend to achieve better performance (NAG; not on MNIST, where the "
            "paper has 0.75 at 0.995 against 0.73 at 0.99)"),
    Finding("NAG beats CM at mu_max 0.995", "table1", AUTOENCODERS, {"optimizer": "nag", "mu_max": 0.995},
            {"optimizer": "cm", "mu_max": 0.995},
            "Table 1: NAG usually outperforms CM, especially when mu_max is 0.995 and 0.999"),
    Finding("NAG beats CM at mu_max 0.999", "table1", AUTOENCODERS, {"optimizer": "nag", "mu_max": 0.999},
            {"optimizer": "cm", "mu_max": 0.999},
            "Table 1: NAG usually outperforms CM, especially when mu_max is 0.995 and 0.999"),
    Finding("final phase lowers the error", "table2", AUTOENCODERS, {"optimizer": "nag", "mu_max": "paper best"},
            {"optimizer": "nag", "mu_max": "paper best"},
            "Table 2: reducing mu to 0.9 for the final 1000 updates allows finer convergence (NAG, at the "
            "paper's best mu_max)", better_value="final", worse_value="before"),
    Finding("SI scale 1 beats 0.25", "table3", ("curves",), {"optimizer": "nag", "init_scale": 1.0},
            {"optimizer": "nag", "init_scale": 0.25}, "Table 3: with the factor 1/2 or less, no sensible results"),
    Finding("SI scale 1 beats 2", "table3", ("curves",), {"optimizer": "nag", "init_scale": 1.0},
            {"optimizer": "nag", "init_scale": 2.0},
            "Table 3: 0.074 at scale 1 against 0.083 at 2 (\"SI works reasonably well if rescaled by 2\")"),
    Finding("SI scale 1 beats 4", "table3", ("curves",), {"optimizer": "nag", "init_scale": 1.0},
            {"optimizer": "nag", "init_scale": 4.0},
            "Table 3: scaled up, a noticeable (but not severe) slow down"),
    Finding("NAG beats CM at mu_0 0.995", "table5", RNN_PROBLEMS, {"optimizer": "nag", "mu_0": 0.995},
            {"optimizer": "cm", "mu_0": 0.995},
            "Table 5 / sec. 4.2: larger mu_0 achieve better results with NAG but not with CM"),
    Finding("NAG mu_0 0.995 beats 0", "table5", RNN_PROBLEMS, {"optimizer": "nag", "mu_0": 0.995},
            {"optimizer": "nag", "mu_0": 0.0},
            "Sec. 4.2: RNNs are trained through momentum of the NAG type and a large mu_0"),
    Finding("NAG mu_0 0.995 beats 0.9", "table5", RNN_PROBLEMS, {"optimizer": "nag", "mu_0": 0.995},
            {"optimizer": "nag", "mu_0": 0.9},
            "Sec. 4.2: larger values of mu_0 achieve better results with NAG"),
)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        mean, _, low, high = mean_interval(values)
        return cls(len(values), mean, low, high)

    def text(self) -> str:
        if self.n == 0:
            return "n=0"
        interval = "n/a" if math.isnan(self.low) else f"[{self.low:.4g}, {self.high:.4g}]"
        return f"{self.mean:.4g} {interval} n={self.n}"


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str
    better: Summary | None = None
    worse: Summary | None = None
    paired: Summary | None = None  # of worse - better over the seeds both ran (> 0: the paper's way)
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> str:
        parts = []
        if self.better is not None:
            parts.append(f"better: {self.better.text()}")
        if self.worse is not None:
            parts.append(f"worse: {self.worse.text()}")
        if self.paired is not None:
            parts.append(f"paired worse - better: {self.paired.text()}")
        return "; ".join(parts)


def _values(cell: Mapping[Any, float] | list[float]) -> tuple[list[float], dict[Any, float] | None]:
    """The values, and by seed where every value has its own seed (else None: no pairing)."""
    if isinstance(cell, Mapping):
        seeds = [k for k in cell if k is not None]
        by_seed = {k: float(v) for k, v in cell.items()} if len(seeds) == len(cell) else None
        return [float(v) for v in cell.values()], by_seed
    return [float(v) for v in cell], None


def decide(better: Mapping[Any, float] | list[float], worse: Mapping[Any, float] | list[float],
           not_testable: str | None = None) -> Verdict:
    """The verdict on "``better`` has the lower error" from each cell's per-seed values (a
    mapping seed -> value pairs the cells over their common seeds; a list is unpaired).
    ``not_testable``: a reason decided by the caller (grid edge, protocol); the figures are still
    computed and shown."""
    b_values, b_seeds = _values(better)
    w_values, w_seeds = _values(worse)
    b, w = Summary.of(b_values), Summary.of(w_values)
    paired = None
    if b_seeds is not None and w_seeds is not None:
        common = sorted(set(b_seeds) & set(w_seeds), key=str)
        if len(common) >= 2:
            paired = Summary.of([w_seeds[s] - b_seeds[s] for s in common])
    if not_testable:
        return Verdict(NOT_TESTABLE, not_testable, b, w, paired)
    if b.n < 2 or w.n < 2:
        return Verdict(NOT_TESTABLE, f"fewer than 2 seeds (better n={b.n}, worse n={w.n}): no interval", b, w, paired)
    if not any(b_values) and not any(w_values):  # 0 is every task's floor: both cells solved it
        return Verdict(NOT_TESTABLE, "both cells reach error 0 on every seed: at this scale the problem does not "
                                     "separate them", b, w, paired)
    if b.high < w.low:
        return Verdict(HOLDS, "the 95% intervals separate in the paper's direction", b, w, paired)
    if w.high < b.low:
        return Verdict(CONTRADICTED, "the 95% intervals separate against the paper", b, w, paired)
    if paired is not None and not math.isnan(paired.low):
        if paired.low > 0:
            return Verdict(HOLDS, f"intervals overlap, but the paired 95% interval over {paired.n} common seeds "
                                  "excludes 0 in the paper's direction", b, w, paired)
        if paired.high < 0:
            return Verdict(CONTRADICTED, f"intervals overlap, but the paired 95% interval over {paired.n} common "
                                         "seeds excludes 0 against the paper", b, w, paired)
    tail = ", and the paired interval includes 0" if paired is not None and not math.isnan(paired.low) else ""
    if b.mean < w.mean:
        return Verdict(DIRECTION, f"means agree with the paper; the 95% intervals overlap{tail}", b, w, paired)
    return Verdict(AGAINST, f"means do not agree with the paper; the 95% intervals overlap{tail}", b, w, paired)


__all__ = ["AGAINST", "CONTRADICTED", "DIRECTION", "FINDINGS", "Finding", "HOLDS", "NOT_TESTABLE", "OUTCOMES",
           "Summary", "Verdict", "decide"]
