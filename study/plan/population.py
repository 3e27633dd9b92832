"""The population a Ray trial trains: its member table, and the training config built from it once.

A study's unit of record is the *configuration* (one set of sampled values, with its ``repeats``
seeds); a Ray trial trains a *population* of configurations that share the shape of the
computation, as one batched computation (docs/study-specs.md, "Fused studies"). The searcher
(study/run/searcher.py) builds each population's member table; the trial, the recorder and the searcher
read it, and nothing rebuilds a configuration's config in another way.

Member ``m`` of the training population is seed ``r`` of configuration ``j`` with
``m = j * repeats + r``: a configuration's seeds are adjacent and never split between trials.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from study.spec.expand import task_config_dict
from study.spec.limits import MAX_MEMBERS
from study.spec.model import StudySpec
# MIXABLE_OPTIMIZERS: those one population may mix (one Nesterov and one momentum flag per member);
# any other optimizer trains only beside configurations of the same optimizer.
from trainables.config import MIXABLE_OPTIMIZERS, POPULATION_FIELDS, TaskConfig, parse_config

# The trial config's key for the member table (a list of Configuration dicts).
POPULATION_KEY = "population"
# Without ``max_members``, on the CPU: members per trial at most this many, and no more than fit
# MEMORY_BUDGET by the task's estimate. 16 is where a population stops paying on two CPU cores
# (docs/benchmarks.md). On a GPU the device's memory sets the size (study/plan/sizing.py).
DEFAULT_MAX_MEMBERS = 16
MEMORY_BUDGET = 2 << 30


@dataclass(frozen=True)
class Configuration:
    """One row of a member table: a configuration and what it is known by everywhere."""

    config_id: str  # the results-DB trial id and the MLflow run's trial tag: "<ray trial id>-<j>"
    number: int  # its Optuna trial number
    params: dict[str, Any]  # the sampled values, under the sampler's names (one_minus_mu_max, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Configuration":
        return cls(str(d["config_id"]), int(d["number"]), dict(d["params"]))


def member_table(config: dict[str, Any]) -> list[Configuration]:
    """The member table of a Ray trial's config."""
    return [Configuration.from_dict(d) for d in config.get(POPULATION_KEY) or []]


def config_id(trial_id: str, j: int) -> str:
    return f"{trial_id}-{j}"


def solo_config(spec: StudySpec, params: dict[str, Any]) -> TaskConfig:
    """A configuration's own training config (its repeats' seeds as a population of its own)."""
    return parse_config(task_config_dict(spec, params))


def shape_key(spec: StudySpec, params: dict[str, Any]) -> str:
    """What must be equal for configurations to train together: every config field that is not a
    population field (task, architecture, batch size, updates, sequence length, dtype, device...),
    and the optimizer unless it is one of SGD, CM and NAG."""
    raw = task_config_dict(spec, params)
    shape = {k: v for k, v in raw.items() if k not in POPULATION_FIELDS}
    optimizer = raw.get("optimizer", TaskConfig.model_fields["optimizer"].default)
    shape["optimizer"] = "sgd/cm/nag" if optimizer in MIXABLE_OPTIMIZERS else optimizer
    return json.dumps(shape, sort_keys=True, default=str)


def training_config(spec: StudySpec, configs: list[Configuration]) -> TaskConfig:
    """The population's training config: every population field as a list over the members
    (configuration-major, seeds adjacent); one configuration keeps its own config unchanged."""
    if len(configs) == 1:
        return solo_config(spec, configs[0].params)
    raws = [task_config_dict(spec, c.params) for c in configs]
    shapes = {shape_key(spec, c.params) for c in configs}
    if len(shapes) != 1:
        raise ValueError("configurations of different shapes cannot train as one population: " + "; ".join(sorted(shapes)))
    merged = {k: v for k, v in raws[0].items() if k not in POPULATION_FIELDS}
    repeats = spec.repeats
    for field in POPULATION_FIELDS:
        if not any(field in r for r in raws):
            continue  # the task's default for every member
        default = TaskConfig.model_fields[field].default
        values: list[Any] = []
        for r in raws:
            v = r.get(field, default)
            values += list(v) if isinstance(v, list) else [v] * repeats
        merged[field] = values
    if "seed" not in merged:
        merged["seed"] = [0] * (len(configs) * repeats)
    return parse_config(merged)


def member_bytes(cfg: TaskConfig) -> int:
    """One member's training memory, by its task's own estimate (Task.memory_estimate, trainables/tasks)."""
    from trainables.tasks import task_for

    return task_for(cfg.task).memory_estimate(cfg).member_bytes


def default_max_members(cfg: TaskConfig, device: str = "cpu", budget: int | None = None) -> int:
    """Members per trial without ``max_members``. On the CPU at most DEFAULT_MAX_MEMBERS and what
    fits MEMORY_BUDGET; on a GPU what fits ``budget`` (the trial's share of its device, study/plan/sizing.py),
    at most MAX_MEMBERS. The training data the members share counts once."""
    from trainables.tasks import task_for

    est = task_for(cfg.task).memory_estimate(cfg)
    if device == "gpu":
        return max(1, min(MAX_MEMBERS, (int(budget or MEMORY_BUDGET) - est.shared_bytes) // est.member_bytes))
    return max(1, min(DEFAULT_MAX_MEMBERS, (MEMORY_BUDGET - est.shared_bytes) // est.member_bytes))


def configs_per_trial(spec: StudySpec, cfg: TaskConfig, slots: int, device: str = "cpu",
                      budget: int | None = None, memory=None) -> int:
    """How many configurations one Ray trial trains: 1 with ``fuse: off``; else as many as
    ``max_members`` (or the device's default, above) allows, and no more than fit ``budget``
    bytes by the task's estimate (``memory``, else ``cfg``'s) when given (a configuration's
    repeats never split), but no fewer trials than ``slots`` (trials that can run at once) while
    there are configurations enough to fill them; and as even as whole rounds of ``slots`` allow:
    the trials that size needs, rounded up to a multiple of ``slots``, share the configurations
    (25 at up to 8 a trial on 2 slots: 7, 7, 7, 4, two rounds of the time of 7; not 8, 8, 8, 1,
    whose second round trains one population of 8 beside one of 1)."""
    if spec.fuse == "off":
        return 1
    cap = spec.max_members or default_max_members(cfg, device, budget)
    if budget is not None:
        from trainables.tasks import task_for

        est = memory or task_for(cfg.task).memory_estimate(cfg)
        cap = min(cap, max(1, (int(budget) - est.shared_bytes) // est.member_bytes))
    per_trial = max(1, cap // spec.repeats)
    spread = math.ceil(spec.trials / max(1, slots))
    per_trial = max(1, min(per_trial, spread))
    if not math.isfinite(slots) or slots < 1:
        return per_trial
    trials = math.ceil(math.ceil(spec.trials / per_trial) / slots) * int(slots)
    return max(1, math.ceil(spec.trials / trials))


class AshaRule:
    """Ray Tune's asynchronous successive halving, as ``ray.tune.schedulers.async_hyperband._Bracket``
    decides with one bracket and ``stop_last_trials``, over configurations of any population.

    Rungs fall at ``grace_period * reduction_factor**k`` reports (up to ``max_t``). A configuration
    is judged at the highest rung it has reached and not yet been recorded at: it stops when its
    reward (the scheduler objective, negated for ``mode: min``) is below the
    ``(1 - 1/reduction_factor)`` percentile (``numpy.nanpercentile``) of every reward recorded
    there before it, in any population, and its reward is then recorded. The first arrival at a
    rung always goes on. At ``max_t`` reports every configuration stops, as Ray's does. One rule
    object is the study's record (study/run/rung_board.py shares it between populations); it also
    remembers what it stopped, so a population resumed from a checkpoint taken before a stop stops
    that configuration again."""

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, mode: str):
        self.rf, self.max_t, self.op = reduction_factor, max_t, (1.0 if mode == "max" else -1.0)
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        # Highest first, as Ray's _Bracket keeps them.
        self.milestones = [grace_period * reduction_factor ** k for k in reversed(range(count))]
        self.recorded: list[dict[str, float]] = [{} for _ in self.milestones]
        self.stopped: set[str] = set()

    def decide(self, key: str, report: int, value: float | None) -> bool:
        """Whether configuration ``key``, at report number ``report`` with scheduler objective
        ``value``, stops (and its reward recorded at the rung it was judged at)."""
        if key in self.stopped:
            return True
        if report >= self.max_t:
            self.stopped.add(key)
            return True
        if value is None:
            return False  # nothing to judge by; Ray warns and records nothing
        reward = self.op * float(value)
        i = self._rung(key, report)
        if i is None:
            return False
        recorded = self.recorded[i]
        stop = bool(recorded) and reward < np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100)
        recorded[key] = reward
        if stop:
            self.stopped.add(key)
        return stop

    def _rung(self, key: str, report: int) -> int | None:
        """The rung ``key`` is judged at by ``report``: the highest reached where it is not recorded."""
        for i, (milestone, recorded) in enumerate(zip(self.milestones, self.recorded)):
            if report >= milestone and key not in recorded:
                return i
        return None

    def due(self, key: str, report: int) -> bool:
        """Whether ``decide`` has anything to judge for ``key`` at ``report`` (a rung reached and
        not recorded, ``max_t``, or a stop to repeat): a population asks only then."""
        return key in self.stopped or report >= self.max_t or self._rung(key, report) is not None

    def mark(self, key: str, report: int) -> None:
        """Notes that ``key`` was judged at ``report`` (a population's own mirror of the study's record)."""
        i = self._rung(key, report)
        if i is not None:
            self.recorded[i][key] = math.nan

    def state(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "stopped": sorted(self.stopped)}

    def load(self, state: dict[str, Any]) -> None:
        """Takes a saved ``state`` of the same rungs."""
        recorded = state.get("recorded") or []
        if len(recorded) == len(self.milestones):
            self.recorded = [{str(k): float(v) for k, v in r.items()} for r in recorded]
        self.stopped = set(state.get("stopped") or [])


class MemberRungs:
    """A population's view of the study's rungs: at each report, the configurations still running
    (``values``: index in the member table -> scheduler objective) that are due at a rung are put,
    one after the other in table order, to the study's ``AshaRule`` (``board``: the rule itself,
    or study/run/rung_board.py's shared one); those it stops leave the batched computation.

    ``last_report`` is the population's final report (default: ``max_t``): its end is its own, never
    a stop; a ``max_t`` below it stops every configuration there, as Ray's ASHA does."""

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, mode: str,
                 config_ids: list[str] | None = None, last_report: int | None = None, board: Any = None):
        self.mine = AshaRule(grace_period, reduction_factor, max_t, mode)  # what this population reached
        self.board = board if board is not None else AshaRule(grace_period, reduction_factor, max_t, mode)
        self.ids, self.last_report = config_ids, last_report

    def key(self, j: int) -> str:
        return self.ids[j] if self.ids is not None else str(j)

    def stop(self, report: int, values: dict[int, float]) -> list[int]:
        """The configurations (keys of ``values``: those still running, with their scheduler
        objective) that stop at report number ``report``."""
        # The population's last report is its own end, never a stop: without it, max_t is taken as that.
        if report >= (self.last_report if self.last_report is not None else self.mine.max_t):
            return []
        due = [j for j in sorted(values) if self.mine.due(self.key(j), report)]
        if not due:
            return []
        asked = [(self.key(j), report, values[j]) for j in due]
        stops = self.board.decide_all(asked) if hasattr(self.board, "decide_all") else [
            self.board.decide(*a) for a in asked]
        for (key, _, _), stop in zip(asked, stops):
            self.mine.mark(key, report)
            if stop:
                self.mine.stopped.add(key)
        return [j for j, s in zip(due, stops) if s]
