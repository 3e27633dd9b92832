"""Study specs: one YAML file says what to train, what to search and how (docs/study-specs.md).

A spec is validated twice before anything starts: its own shape (pydantic, extra="forbid"), then
every training config it can produce through trainables' ``parse_config``, so a bad value is
reported with its field, the value and what is allowed before Ray, MLflow or a database is touched.

This module is the model and ``load_spec``; the file and YAML reader is study/spec/reader.py, the
credential scan credentials.py, the search parameters params.py, the expansion into training
configs expand.py, the limits limits.py.
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from study.errors import SpecError
from study.spec.credentials import find_credentials
from study.spec.expand import check_configs, sgd_duplicates
from study.spec.limits import MAX_MEMBERS, MAX_REPEATS, MAX_TRIALS, MAX_UPDATES
from study.spec.messages import describe_errors
# A study's name follows one rule, shared with every command that takes a NAME.
from study.spec.names import NAME_RULE, check_name  # noqa: F401 - NAME_RULE stays importable from here
from study.spec.params import CategoricalParam, FloatParam, GridParam, Param, _Strict
from study.spec.reader import check_plain, read_source
from trainables.config import TaskConfig

# Samplers Optuna ships; "cmaes" also needs the `cmaes` package (a dependency of this project).
SamplerName = Literal["tpe", "cmaes", "gp", "random", "grid", "qmc"]
METRICS = ("error", "loss", "averaged_error")


class SamplerSpec(_Strict):
    type: SamplerName = "tpe"
    seed: int | None = Field(0, ge=0, le=2**32 - 1)  # numpy's RandomState range
    # Passed to the Optuna sampler's constructor as keyword arguments (e.g. n_startup_trials).
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(_Strict):
    """FIFO runs every trial to the end; ASHA stops poor trials at its rungs.

    Rungs are counted in reports (Tune's training_iteration): one report per ``report_every``
    updates of the training config (an autoencoder run also reports at its final phase's start,
    one report more from there on). ``brackets`` above 1 needs ``fuse: off``: fused populations
    share one bracket across the study (study/run/rung_board.py).
    """

    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, le=MAX_UPDATES)
    reduction_factor: float = Field(3.0, gt=1, le=1000)
    max_t: int | None = Field(None, ge=1, le=MAX_UPDATES)
    brackets: int = Field(1, ge=1, le=100)


class ResourcesSpec(_Strict):
    """Per trial: a trial trains its whole population on one device, so ``gpus: 0.25`` puts four
    trials (each a fused population) on one GPU. ``gpus: auto`` (the default): one GPU per trial
    where the Ray cluster has GPUs, the CPU elsewhere (resolved by the driver, study/plan/sizing.py)."""

    cpus: float = Field(1.0, gt=0)
    gpus: float | Literal["auto"] = "auto"

    @field_validator("gpus", mode="before")
    @classmethod
    def _one_device(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(
                f"gpus={v!r} is not allowed: use 'auto' or a number of GPUs per trial, greater than or equal to 0 "
                "and at most 1"
            )
        v = float(v)
        if v > 1:
            raise ValueError(
                f"gpus={v!r} is not allowed: more than one GPU per trial is not supported yet: "
                "a trial trains its population on one device; use gpus <= 1"
            )
        return v


class StudySpec(_Strict):
    """The whole study; see docs/study-specs.md for every field."""

    name: str
    description: str = ""
    task: str
    # Fixed training config: any TaskConfig field but ``task`` (given above).
    config: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Param] = Field(default_factory=dict)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    # None: 10, or with sampler "grid" the size of the grid.
    num_samples: int | None = Field(None, ge=1, le=MAX_TRIALS)
    # N > 1 makes every trial a fused population over seeds seed0, seed0+1, ..., seed0+N-1.
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)
    # "auto": configurations that share the shape of the computation train together as one
    # population per Ray trial (docs/study-specs.md, "Fused studies"); "off": one per trial.
    fuse: Literal["auto", "off"] = "auto"
    # The most members (configurations x repeats) one Ray trial trains; None: from a memory
    # estimate of the model (study/plan/population.py).
    max_members: int | None = Field(None, ge=1, le=MAX_MEMBERS)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    metric: Literal["error", "loss", "averaged_error"] = "error"
    mode: Literal["min", "max"] = "min"
    # A failed trial is retried this many times, from its last checkpoint.
    retries: int = Field(0, ge=0, le=100)
    # Save a checkpoint every N reports (and at the last one).
    checkpoint_every: int = Field(1, ge=1, le=MAX_UPDATES)
    # Time to target: the value of `metric` a configuration is timed to (a number, or one per task
    # of a study over several tasks); None: the report uses the paper's value where it may stand.
    target: float | dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, raw: Any) -> Any:
        check_plain(raw)
        found = find_credentials(raw)
        if found:
            raise ValueError(
                f"{found} is not allowed: it looks like a credential; give passwords, tokens and keys "
                "through the environment or a secret (MOMENTUM_STUDY_RESULTS_DB, MLFLOW_TRACKING_PASSWORD, ...), "
                "never in a spec"
            )
        return raw

    @model_validator(mode="before")
    @classmethod
    def _task_from_search(cls, raw: Any) -> Any:
        # `task` names the study's task; a study over several tasks searches `search.task` instead,
        # and `task` may then be left out: the first searched task is the study's (the one recorded
        # as its task). Given both, both are kept as written, so every older spec reads the same.
        if isinstance(raw, dict) and "task" not in raw:
            searched = raw.get("search")
            choices = searched.get("task") if isinstance(searched, dict) else None
            values = choices.get("values") if isinstance(choices, dict) else None
            if isinstance(values, list) and values and isinstance(values[0], str):
                return {**raw, "task": values[0]}
        return raw

    @field_validator("num_samples", "repeats", "max_concurrent_trials", mode="before")
    @classmethod
    def _at_most(cls, v: Any, info: Any) -> Any:
        # Before pydantic's int parsing, which reports 1e30 only as "exceeded maximum size".
        limit = MAX_REPEATS if info.field_name == "repeats" else MAX_TRIALS
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
            raise ValueError(f"{info.field_name}={v!r} is not allowed: at most {limit:,}")
        return v

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_words(cls, v: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare words off/on/no/yes as false/true: `fuse: off` is False.
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("config")
    @classmethod
    def _data_dir_from_here(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Ray Tune runs each trial in a directory of its own, where a relative data_dir names
        # nothing: it is taken from where the spec is loaded (stored so, a resume finds the same files).
        data_dir = v.get("data_dir")
        if data_dir is None and v.get("dataset") == "original":
            from trainables.data.autoencoder_files import DEFAULT_DATA_DIR

            data_dir = DEFAULT_DATA_DIR
        if isinstance(data_dir, str) and data_dir and not os.path.isabs(data_dir):
            return {**v, "data_dir": os.path.abspath(data_dir)}
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("target", mode="before")
    @classmethod
    def _target_values(cls, v: Any) -> Any:
        # Before pydantic's parsing, whose messages name neither the value nor the rule.
        if v is None:
            return v
        for where, x in (v.items() if isinstance(v, dict) else [("", v)]):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                entry = f" (task {where!r}: {x!r})" if where else ""
                raise ValueError(
                    f"target={v!r} is not allowed{entry}: need a finite number >= 0 (a value of the study's metric, "
                    "an error or a loss), or a mapping of task to such a number for a study over several tasks"
                )
        return v

    @model_validator(mode="after")
    def _target_tasks(self) -> "StudySpec":
        if isinstance(self.target, dict):
            tasks = self.tasks()
            unknown = [t for t in self.target if t not in tasks]
            if unknown or not self.target:
                raise ValueError(
                    f"target={self.target!r} is not allowed"
                    + (f" (task {unknown[0]!r} is not run by this study)" if unknown else "")
                    + f": a target per task names one or more of the tasks this study runs: {', '.join(tasks)}"
                )
        return self

    def tasks(self) -> list[str]:
        """The tasks the study runs: the searched ``task`` values, else its one task."""
        searched = self.search.get("task")
        values = getattr(searched, "values", None)
        return [str(v) for v in values] if values else [self.task]

    def target_for(self, task: str | None) -> float | None:
        """The spec's target for a configuration of ``task`` (None: the spec gives none)."""
        if isinstance(self.target, dict):
            return None if task is None or task not in self.target else float(self.target[task])
        return None if self.target is None else float(self.target)

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        fields = set(TaskConfig.model_fields)
        device = str(self.config.get("device") or "")
        if device.startswith("cuda") and self.resources.gpus == 0:
            raise ValueError(
                f"config.device={device!r} is not allowed with resources.gpus=0: Ray gives a trial a GPU only "
                "when it asks for one; set resources.gpus (e.g. 1, or 0.25 to share a GPU between 4 trials)"
            )
        if not self.search:
            raise ValueError(
                "search={} is not allowed: a study searches at least one field "
                "(a categorical with one value runs one fixed config)"
            )
        if "task" in self.config:
            raise ValueError("config.task is not allowed: give the task as the top-level 'task' field")
        for key in self.search:
            if key not in fields:
                raise ValueError(
                    f"search.{key} is not allowed: not a training config field; "
                    f"allowed: {', '.join(sorted(fields))}"
                )
            if key in self.config:
                raise ValueError(f"search.{key} is not allowed: {key} is also fixed in config; keep one")
        for key, p in self.search.items():
            if isinstance(p, FloatParam) and p.transform == "one_minus" and p.high > 1:
                raise ValueError(f"search.{key}.high={p.high!r} is not allowed with transform one_minus: need <= 1")
        grids = [k for k, p in self.search.items() if isinstance(p, GridParam)]
        if self.sampler.type == "grid":
            others = [k for k, p in self.search.items() if not isinstance(p, (GridParam, CategoricalParam))]
            if others or not self.search:
                raise ValueError(
                    f"sampler.type='grid' is not allowed with search parameters {others or '(none)'}: "
                    "a grid needs every parameter to be of type grid or categorical"
                )
            # A product of lengths, never of the points themselves: Optuna's GridSampler (built at
            # validation) and the searcher enumerate every point, 10**9 of them for 3 x 1,000 values.
            size = self.grid_size()
            if size > MAX_TRIALS:
                axes = " x ".join(f"{k}: {len(p.values):,}" for k, p in self.search.items())  # type: ignore[union-attr]
                raise ValueError(
                    f"search is a grid of {size:,} configurations ({axes} values), which is not allowed: "
                    f"at most {MAX_TRIALS:,}; use fewer values, or a sampler (tpe, random, qmc) over "
                    "float/int ranges with num_samples"
                )
            if self.num_samples is not None and self.num_samples != size:
                raise ValueError(
                    f"num_samples={self.num_samples!r} is not allowed: the grid has {size} points; "
                    "leave num_samples out or set it to the grid size"
                )
        elif grids:
            raise ValueError(
                f"search.{grids[0]}.type='grid' is not allowed with sampler {self.sampler.type!r}: "
                "grid parameters need sampler: grid (use type categorical to let the sampler choose)"
            )
        if self.repeats > 1 and ("seed" in self.search or isinstance(self.config.get("seed"), list)):
            raise ValueError(
                f"repeats={self.repeats!r} is not allowed with a searched or list-valued seed: "
                "repeats sets each trial's seeds to seed, seed+1, ..., seed+repeats-1"
            )
        if self.fuse == "off" and self.max_members is not None:
            raise ValueError(
                f"max_members={self.max_members!r} is not allowed with fuse: 'off': every Ray trial trains one "
                "configuration; leave max_members out or use fuse: auto"
            )
        if self.scheduler.type == "asha" and self.scheduler.brackets != 1 and self.fuse != "off":
            raise ValueError(
                f"scheduler.brackets={self.scheduler.brackets!r} is not allowed with fuse: {self.fuse!r}: fused "
                "populations stop their configurations by one ASHA bracket shared across populations; use "
                "brackets: 1, or fuse: 'off' for Ray Tune's ASHAScheduler with several brackets"
            )
        if self.max_members is not None and self.max_members < self.repeats:
            raise ValueError(
                f"max_members={self.max_members!r} is not allowed with repeats={self.repeats!r}: a configuration's "
                f"{self.repeats} seeds train together in one population and are never split, so a trial has at "
                f"least {self.repeats} members; use max_members >= {self.repeats} (or leave it out)"
            )
        seed = self.config.get("seed", 0)
        if self.repeats > 1 and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"config.seed={seed!r} is not allowed with repeats: need an integer first seed")
        from trainables.config import POPULATION_FIELDS

        lists = [k for k in POPULATION_FIELDS if isinstance(self.config.get(k), list)]
        if lists:
            raise ValueError(
                f"config.{lists[0]}={self.config[lists[0]]!r} is not allowed: a study's fixed config "
                "takes single values; use repeats for seeds and search for the rest"
            )
        return self

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.search.values())  # type: ignore[union-attr]

    @property
    def trials(self) -> int:
        """Configurations run: a grid's points less plain SGD's NAG twins (expand.sgd_duplicates)."""
        if self.sampler.type == "grid":
            return self.grid_size() - len(sgd_duplicates(self))
        return self.num_samples if self.num_samples is not None else 10

    @cached_property
    def checked_config(self) -> TaskConfig:
        """The fixed config resolved for the first point, after every config the spec can produce
        has been checked (check_configs; raises SpecError). Computed once per spec: load_spec has
        done it, so the runner reads it instead of checking again. Not a field: it is neither
        dumped nor compared."""
        return check_configs(self)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> StudySpec:
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy.__dict__.pop("checked_config", None)  # checked for the fields before the update
        return copy


def load_spec(source: str | Path | dict[str, Any]) -> StudySpec:
    """Reads and validates a spec from a YAML path, YAML text or a mapping; raises SpecError."""
    raw, where = read_source(source)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{where}: " + describe(exc)) from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply, which is not allowed") from None
    spec.checked_config  # noqa: B018 - checks every config now, and keeps the result for the runner
    try:
        from study.run.optuna_study import optuna_sampler  # Optuna's owner; imports this module

        optuna_sampler(spec)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return spec


def describe(exc: ValidationError) -> str:
    """Turns pydantic's errors about a spec into 'field=value is not allowed: rule' lines."""
    return describe_errors(exc, StudySpec)


def spec_to_yaml(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
