"""Which state a trial ended in, and what each consumer is told about it: one rule for the results
DB, MLflow, Optuna and the progress display (docs/study-specs.md, "States and objectives").

A configuration travels from its trial to every consumer as one typed record: a
``ConfigurationReport`` at each report (the trial builds it; Tune's result carries it, as plain
data, under ``CONFIGS_KEY``), and a ``ConfigurationEnd`` once it has ended, which ``Endings`` decides
once for the recorder, the searcher's Optuna reports and the progress display. Its last report
says whether training reached its last update (``final``) and how many members diverged. From that:

- ``completed``: trained to the end, no member diverged;
- ``diverged``: at least one member's loss became NaN or inf (the trial may have stopped early);
- ``pruned``: a scheduler (ASHA) stopped it before its last update;
- ``failed``: the trial raised (after its retries).

A study's end state follows one rule too (``study_state``): in short, ``failed`` when not one of
its configurations succeeded, ``completed`` with the count of failed ones when some did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from study.plan.population import Configuration

# The states a configuration ends in, listed once (the results DB, MLflow, Optuna and the progress
# display take them from here); "running" until then.
TERMINAL = ("completed", "diverged", "failed", "pruned")
STATES = ("running", *TERMINAL)
# The key of a Tune result (study/run/trial.py) holding its configurations' reports.
CONFIGS_KEY = "configs"

# What a scheduler sees for a diverged trial. Optuna and the results DB keep +-inf ("as bad as it
# gets"); ASHA takes percentiles of its rung values, and a rung of infinities has a NaN or -inf
# cutoff that stops nothing, so schedulers get a finite value worse than any real error instead.
SCHEDULER_WORST = 1e30


def ended_state(last: "ConfigurationReport | None", errored: bool = False) -> str:
    """The terminal state of a configuration from its last report (None: it never reported)."""
    if errored:
        return "failed"
    if last is not None and last.members_diverged:
        return "diverged"
    if last is None or not last.final:
        return "pruned"
    return "completed"


@dataclass(frozen=True)
class MemberFigures:
    """One member (a seed) of a configuration at one report; ``member`` numbers its seeds from 0."""

    member: int
    seed: int
    error: float
    loss: float
    mu: float
    lr: float
    status: str  # trainables' member status: running, completed, diverged or pruned
    diverged_at: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemberFigures":
        return cls(int(d["member"]), int(d["seed"]), d["error"], d["loss"], d["mu"], d["lr"], str(d["status"]),
                   d.get("diverged_at"), dict(d.get("extra") or {}))


@dataclass(frozen=True)
class ConfigurationReport:
    """One configuration's figures at one report of its population: the means over its seeds, the
    searcher's and the schedulers' objectives (``objectives``), and every seed's figures. Once it has
    ended (no seed runs) its figures stay frozen at the report where that happened."""

    config_id: str
    optuna_number: int | None
    step: int
    final: bool  # the report after the last update
    ended: bool  # none of its seeds runs any more
    metric_value: float | None
    objective: float
    scheduler_objective: float
    members_diverged: int
    members: tuple[MemberFigures, ...]
    error: float | None = None
    loss: float | None = None
    mu: float | None = None
    lr: float | None = None
    population: str | None = None  # the Ray trial that trains it

    def reached(self, target: float | None, mode: str) -> bool:
        """Whether this report's metric (the mean over its seeds) reaches ``target``; a report where
        a seed has diverged never does (that seed's frozen last good error is no result), the rule
        of ``best_metric_value``."""
        return not self.members_diverged and reaches(self.metric_value, target, mode)

    @property
    def state(self) -> str:
        """``running``, or the state it ended in by this report (``failed`` comes from Tune)."""
        return ended_state(self) if self.ended else "running"

    def stopped(self) -> "ConfigurationReport":
        """This report as its configuration's last, stopped by a rung, figures as they are: its
        running seeds become pruned; a seed that had ended (diverged) keeps its end, which is final."""
        members = tuple(replace(m, status="pruned") if m.status == "running" else m for m in self.members)
        return replace(self, ended=True, final=False, members=members)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (Tune results and checkpoints hold no objects of ours)."""
        out = asdict(self)
        out["members"] = [asdict(m) for m in self.members]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConfigurationReport":
        """The inverse of ``to_dict``; also reads what earlier versions stored (no ``population``)."""
        number = d.get("optuna_number")
        return cls(
            config_id=str(d["config_id"]), optuna_number=None if number is None else int(number),
            step=int(d["step"]), final=bool(d["final"]), ended=bool(d.get("ended")),
            metric_value=d.get("metric_value"), objective=d["objective"], scheduler_objective=d["scheduler_objective"],
            members_diverged=int(d.get("members_diverged") or 0),
            members=tuple(MemberFigures.from_dict(m) for m in d.get("members") or ()),
            error=d.get("error"), loss=d.get("loss"), mu=d.get("mu"), lr=d.get("lr"), population=d.get("population"),
        )


def reports_in(result: Mapping[str, Any] | None) -> dict[str, ConfigurationReport]:
    """The configurations' reports a Tune result carries (study/run/trial.py), by configuration id."""
    return {c["config_id"]: ConfigurationReport.from_dict(c) for c in (result or {}).get(CONFIGS_KEY) or ()}


@dataclass(frozen=True)
class ConfigurationEnd:
    """How a configuration ended: its state, its last report (None: it never reported) and, for a
    failed one, the error."""

    config_id: str
    optuna_number: int | None
    population: str
    state: str  # one of TERMINAL
    last: ConfigurationReport | None
    error: str | None = None

    @property
    def objective(self) -> float | None:
        return None if self.last is None else self.last.objective


class Endings:
    """Which configurations of this run have ended, and how: the one answer the recorder, the
    searcher's Optuna reports and the progress display act on (study/run/feed.py hands it round).

    A configuration ends at the report where none of its seeds runs any more, or when its Ray
    trial ends (completes, is stopped by a scheduler, or fails); whichever comes first, once."""

    def __init__(self) -> None:
        self._ended: dict[str, ConfigurationEnd] = {}

    def get(self, config_id: str) -> ConfigurationEnd | None:
        return self._ended.get(config_id)

    def running(self, reports: Iterable[ConfigurationReport]) -> list[ConfigurationReport]:
        """The reports of configurations that had not ended before (an ended one's repeats frozen)."""
        return [r for r in reports if r.config_id not in self._ended]

    def at_report(self, population: str, reports: Iterable[ConfigurationReport]) -> list[ConfigurationEnd]:
        """The configurations that end at this report (call with ``running``'s reports)."""
        return [self._end(population, r.config_id, r.optuna_number, r.state, r) for r in reports
                if r.ended and r.config_id not in self._ended]

    def at_trial_end(self, population: str, table: "Iterable[Configuration]", last: Mapping[str, ConfigurationReport],
                     error: str | None = None, errored: bool = False) -> list[ConfigurationEnd]:
        """The configurations of a Ray trial that end with it: by their last report, or ``failed``."""
        return [self._end(population, c.config_id, c.number, ended_state(last.get(c.config_id), errored),
                          last.get(c.config_id), error if errored else None)
                for c in table if c.config_id not in self._ended]

    def _end(self, population: str, config_id: str, number: int | None, state: str,
             last: ConfigurationReport | None, error: str | None = None) -> ConfigurationEnd:
        end = ConfigurationEnd(config_id, number, population, state, last, error)
        self._ended[config_id] = end
        return end


# How the reason of a study in which no configuration succeeded begins (the command line reads it:
# `study resume` reruns no failed configuration, so it is no way on for such a study).
ALL_FAILED = "every configuration failed"


def study_state(ended: Mapping[str, int], planned: int, name: str, failure: tuple[str, str] | None = None,
                store_problem: str | None = None, first_error: str | None = None) -> tuple[str, str | None]:
    """The state a study's run (or resume) ends in, and its reason: the one rule for both.

    ``ended`` counts its configurations by terminal state, ``planned`` is how many it has;
    ``failure`` is what stopped the driver (("interrupted" | "failed", reason)), ``store_problem``
    a store that stayed unreachable, ``first_error`` one failed configuration's error.

    - a store left unreachable: ``failed`` (its writes wait in the journal; resume lands them);
    - the driver failed or was interrupted: that;
    - fewer configurations ended than planned: ``interrupted`` (resume goes on);
    - every configuration ended and none of them other than ``failed``: ``failed``, as a study
      without a single result has not completed;
    - otherwise ``completed``: a diverged, pruned or failed configuration is a result of the
      search; failed ones are counted in the reason.
    """
    state, reason = failure or (None, None)
    if store_problem:
        return "failed", "; ".join(r for r in (reason, store_problem) if r) + f"; `study resume {name}` lands them once it is back"
    if state is not None:
        return state, reason
    done = sum(ended.get(s, 0) for s in TERMINAL)
    if done < planned:
        return "interrupted", f"stopped with {done} of {planned} trials finished; `study resume {name}` continues"
    failed = ended.get("failed", 0)
    error = f"; the first error: {first_error}" if first_error else ""
    if failed == done:
        return "failed", (
            f"{ALL_FAILED} ({failed} of {planned}){error}; `study resume` reruns no failed configuration: "
            f"fix the cause and run the spec again (`study delete {name}` first, or under another name)"
        )
    if failed:
        return "completed", f"{failed} of {planned} configurations failed (`study results {name}` shows which){error}"
    return "completed", None


def objectives(value: float | None, diverged: int, mode: str) -> tuple[float, float]:
    """(searcher objective, scheduler objective) for one report's metric ``value``.

    A diverged member, or a metric that is missing or not finite, makes the configuration the
    worst possible: +inf (mode min) / -inf (max) for Optuna, +-SCHEDULER_WORST for schedulers.
    """
    sign = 1.0 if mode == "min" else -1.0
    if diverged or value is None or not math.isfinite(value):
        return sign * math.inf, sign * SCHEDULER_WORST
    return value, value


def better(a: float, b: float | None, mode: str) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing yet) under the study's mode."""
    return b is None or (a < b if mode == "min" else a > b)


def reaches(value: float | None, target: float | None, mode: str) -> bool:
    """Whether a configuration's metric ``value`` has reached ``target``: at or below it (mode
    max: at or above). No target, or no finite value, reaches nothing."""
    if target is None or value is None or not math.isfinite(value):
        return False
    return value <= target if mode == "min" else value >= target


def updates_to_target(curve: Iterable[tuple[int, float | None]], target: float | None, mode: str) -> int | None:
    """Time to target: the first report step of ``curve`` ((step, value) pairs; a value of None is
    a report that cannot count, e.g. one where a seed had diverged) whose value reaches
    ``target``; None where none does (never 0 or inf: "not reached" is not a number of updates).
    The one rule for the results DB, MLflow and the reports (docs/reporting.md, "Time to target")."""
    return min((int(step) for step, value in curve if reaches(value, target, mode)), default=None)


MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
