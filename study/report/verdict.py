"""The verdict of a finished study: its best configuration, and whether the net learned at all.

The paper's point (Sutskever et al. 2013, secs. 3-4) is that momentum and initialization decide
whether a deep or recurrent net learns: with a poor setting the error stays at the level of a
model that learns its output biases and nothing else. So a configuration is judged against that
level, the task's bias-only error computed with the task's own data code
(``study.report.bias_only``), not against a number written here:

- **learns**: its error is below ``LEARNS_BELOW`` times the bias-only error;
- **does not** (learn): its error is above ``LEARNS_NOT_ABOVE`` times the bias-only error
  (a net at its random initialization is often a little worse than bias-only);
- **learns a little**: in between.

The line names the best configuration, then, for each searched field, the worst configuration
that differs from the best in that field alone (a grid's one-factor contrasts), e.g.
``verdict: mu_max 0.99, spectral_radius 1.1 learns (error 0.06 vs bias-only 0.921); with mu_max 0:
does not (0.917); with spectral_radius 0.5: does not (0.924); 1 of 6 configurations learn``;
where no such configuration exists (a sampled search), the worst configuration instead.

A configuration is one trial: its sampled values (the spec's ``search`` fields, as the trial's
training config applied them) and its N seeds (``repeats``), trained as one population. Its error
is the study metric at the trial's last report, the mean over seeds; the seeds' own errors are the
spread. A configuration with a diverged seed has no error: it "diverges", ranks last, and says how
many of its seeds diverged. A configuration stopped early by the rungs (pruned) or failed has no
final error: it is not ranked, but counted ("2 of 8 configurations learn, 5 pruned").
`study run` and `study resume` print ``best_line()`` and ``line()`` when a study completes::

    from study.report.verdict import study_verdict
    v = study_verdict("quick", directory="studies")
    print(v.best_line()); print(v.line())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from study.report.stats import missing

LEARNS_BELOW = 0.5
LEARNS_NOT_ABOVE = 0.9
# Metrics that share the bias-only level's unit (the paper's reported error).
ERROR_METRICS = ("error", "averaged_error")


@dataclass(frozen=True)
class Setting:
    """One trial's configuration and how it ended."""

    trial_id: str
    values: dict[str, Any]
    error: float | None  # None: a seed diverged
    seed_errors: tuple[tuple[int | None, float | None], ...]
    bias_only: float | None
    members_diverged: int = 0  # the results DB's count (the seeds' rows say which)

    @property
    def diverged(self) -> bool:
        return self.error is None

    @property
    def seeds_diverged(self) -> int:
        return max(sum(e is None for _, e in self.seed_errors), self.members_diverged)

    def name(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.values.items()) or f"trial {self.trial_id}"

    def outcome(self) -> str:
        """'learns', 'learns a little', 'does not', 'diverges', or '' without a bias-only level."""
        if self.diverged:
            return "diverges"
        if self.bias_only is None or not self.bias_only > 0:
            return ""
        if self.error < LEARNS_BELOW * self.bias_only:
            return "learns"
        if self.error > LEARNS_NOT_ABOVE * self.bias_only:
            return "does not"
        return "learns a little"


@dataclass(frozen=True)
class Verdict:
    """Every configuration of a study that trained to its end or diverged, best first (diverged
    ones last), and how many others the study has: stopped early by the rungs (``pruned``, whose
    error is not a final one) or ``failed``; each is counted in the line, none is left out."""

    study: str
    metric: str
    settings: tuple[Setting, ...]
    pruned: int = 0
    failed: int = 0

    @property
    def best(self) -> Setting:
        return self.settings[0]

    @property
    def worst(self) -> Setting:
        return self.settings[-1]

    def best_line(self) -> str:
        """The best configuration: its values, error and the error of each seed."""
        b = self.best
        if b.diverged:
            return "best configuration: none (every configuration diverged)"
        seeds = ", ".join(f"{_fmt(e)}" if e is not None else "diverged" for _, e in b.seed_errors)
        spread = f" (seeds: {seeds})" if len(b.seed_errors) > 1 else ""
        level = f"; bias-only {_fmt(b.bias_only)}" if b.bias_only is not None else ""
        return f"best configuration: {b.name()}: {self.metric} {_fmt(b.error)}{spread}{level}"

    def contrasts(self) -> list[tuple[str, Setting]]:
        """For each searched field, the worst configuration that differs from the best in that
        field alone (a grid has one per field; a sampled search rarely has any)."""
        found = []
        for key in self.best.values:
            others = [s for s in self.settings[1:] if s.values[key] != self.best.values[key]
                      and all(s.values[k] == v for k, v in self.best.values.items() if k != key)]
            if others:
                found.append((key, others[-1]))
        return found

    def line(self) -> str:
        """One line: the best configuration against the bias-only level, and what changing one
        searched field of it does (else the worst configuration)."""
        best, worst = self.best, self.worst
        if best.diverged:
            return f"verdict: every configuration diverged ({len(self.settings)} of {self.total}{self._others()})"
        if best.bias_only is None:
            if len(self.settings) == 1:
                return f"verdict: {best.name()} ends at {self.metric} {_fmt(best.error)} (no bias-only level to compare)"
            return (f"verdict: {best.name()} is best ({self.metric} {_fmt(best.error)}), {worst.name()} worst "
                    f"({_describe(worst, self.metric)}); no bias-only level to compare")
        parts = [f"verdict: {best.name()} {best.outcome()} ({self.metric} {_fmt(best.error)} vs bias-only {_fmt(best.bias_only)})"]
        contrasts = self.contrasts()
        for key, other in contrasts:
            parts.append(f"with {key} {_fmt(other.values[key])}: {other.outcome()} ({_describe(other, shown_level=best.bias_only)})")
        if not contrasts and len(self.settings) > 1:
            parts.append(f"{worst.name()} {worst.outcome()} ({_describe(worst, shown_level=best.bias_only)})")
        learned = sum(s.outcome() == "learns" for s in self.settings)
        parts.append(f"{learned} of {self.total} configurations learn{self._others()}")
        return "; ".join(parts)

    @property
    def total(self) -> int:
        return len(self.settings) + self.pruned + self.failed

    def _others(self) -> str:
        """", 5 pruned, 1 failed": the configurations that have no final error, where there are any."""
        return "".join(f", {n} {what}" for n, what in ((self.pruned, "pruned"), (self.failed, "failed")) if n)


def _describe(s: Setting, metric: str | None = None, shown_level: float | None = None) -> str:
    """Its error (and its bias-only level where that differs from the one already shown)."""
    if s.diverged:
        n = len(s.seed_errors)
        return "every seed diverged" if s.seeds_diverged >= n else f"{s.seeds_diverged} of {n} seeds diverged"
    figure = _fmt(s.error) if metric is None else f"{metric} {_fmt(s.error)}"
    if s.bias_only is None or s.bias_only == shown_level:
        return figure
    return f"{figure} vs bias-only {_fmt(s.bias_only)}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.3g}"
    return str(v)


def study_verdict(name: str, directory: str | None = None, results_db: str | None = None) -> Verdict | None:
    """The verdict of study ``name`` from its results database; None if no trial finished."""
    from study import api
    from study.record import queries
    from study.report.bias_only import bias_only_error

    study = queries.study_row(api.results_target(name, directory, results_db), name)
    if study is None:
        return None
    spec = yaml.safe_load(study["spec_yaml"]) or {}
    metric, mode = str(study["metric"]), str(study["mode"])
    searched = list((spec.get("search") or {}).keys())
    trials = api.trials(name, directory, results_db)
    others = {state: int((trials["state"] == state).sum()) for state in ("pruned", "failed")}
    trials = trials[trials["state"].isin(["completed", "diverged"])]
    if trials.empty:
        return None
    points = api.metrics(name, directory, results_db)

    settings = []
    for _, t in trials.iterrows():
        config = t["config"] or {}
        last = points[(points["trial_id"] == t["trial_id"]) & (points["step"] == t["last_step"])]
        seed_errors = tuple(
            (None if missing(p["seed"]) else int(p["seed"]),
             None if p["status"] == "diverged" or missing(p["error"]) else float(p["error"]))
            for _, p in last.sort_values("member").iterrows()
        )
        diverged = t["state"] == "diverged" or (t["members_diverged"] or 0) > 0 or missing(t["metric_value"])
        level = None
        if metric in ERROR_METRICS and mode == "min":
            level = bias_only_error(_member_config(config))[0]
        settings.append(Setting(
            trial_id=str(t["trial_id"]),
            values={k: config.get(k) for k in searched},
            error=None if diverged else float(t["metric_value"]),
            seed_errors=seed_errors,
            bias_only=level,
            members_diverged=0 if missing(t["members_diverged"]) else int(t["members_diverged"]),
        ))
    sign = 1.0 if mode == "min" else -1.0
    settings.sort(key=lambda s: (s.diverged, s.seeds_diverged, sign * s.error if s.error is not None else 0.0))
    return Verdict(study=name, metric=metric, settings=tuple(settings), **others)


def _member_config(config: dict[str, Any]) -> dict[str, Any]:
    # A population's config holds lists (one value per seed); the bias-only level depends only on
    # the task and its data, which every member shares.
    return {k: (v[0] if isinstance(v, list) and v else v) for k, v in config.items()}


__all__ = ["Setting", "Verdict", "study_verdict", "LEARNS_BELOW", "LEARNS_NOT_ABOVE"]
