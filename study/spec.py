"""Study specs: one YAML file says what to train, what to search and how (docs/study-specs.md).

A spec is validated twice before anything starts: its own shape (pydantic, extra="forbid"), then
every training config it can produce through trainables' ``parse_config``, so a bad value is
reported with its field, the value and what is allowed before Ray, MLflow or a database is touched.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import ConfigError, TaskConfig
from trainables.train import check_config

# Samplers Optuna ships; "cmaes" also needs the `cmaes` package at run time.
SamplerName = Literal["tpe", "cmaes", "gp", "random", "grid", "qmc"]
METRICS = ("error", "loss", "averaged_error")
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Credentials come from the environment or a secret store, never from a spec (docs/cluster.md):
# a spec is stored in the results DB and logged to MLflow as parameters and an artifact.
CREDENTIAL_KEY = re.compile(r"pass(word|wd)?$|secret|token|api[_-]?key|credential|private[_-]?key|auth", re.I)
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def find_credentials(value: Any, where: str = "") -> str | None:
    """The first field of a raw spec that looks like a credential (by its name or a URL with a
    password), as a dotted path; None if there is none."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if CREDENTIAL_KEY.search(str(k)):
                return path
            found = find_credentials(v, path)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_credentials(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(value, str) and CREDENTIAL_URL.search(value):
        return where or "spec"
    return None


class SpecError(ValueError):
    """A spec that cannot run; the message names the field, the value and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    """A float in [low, high], sampled uniformly or on a log scale.

    ``transform: one_minus`` samples x and sets the field to 1 - x: with ``log: true`` this is the
    natural coordinate for momentum near 1 (AlgoPerf's ``one_minus_beta1``).
    """

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None
    transform: Literal["one_minus"] | None = None

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"low={self.low!r}, high={self.high!r} is not allowed: need finite low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"low={self.low!r} is not allowed with log: true: need low > 0")
        if self.log and self.step is not None:
            raise ValueError("step is not allowed with log: true (Optuna samples log floats continuously)")
        return self

    def values_to_check(self) -> list[float]:
        return [self.low, self.high]


class IntParam(_Strict):
    """An integer in [low, high] (both included)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        if self.low > self.high:
            raise ValueError(f"low={self.low!r}, high={self.high!r} is not allowed: need low <= high")
        if self.log and self.low < 1:
            raise ValueError(f"low={self.low!r} is not allowed with log: true: need low >= 1")
        return self

    def values_to_check(self) -> list[int]:
        return [self.low, self.high]


class CategoricalParam(_Strict):
    """One of a list of values, chosen by the sampler."""

    type: Literal["categorical"]
    values: list[Any] = Field(min_length=1)

    def values_to_check(self) -> list[Any]:
        return list(self.values)


class GridParam(_Strict):
    """Every value in turn: the study runs the full product of all grid parameters (sampler: grid)."""

    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)

    def values_to_check(self) -> list[Any]:
        return list(self.values)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam, GridParam], Field(discriminator="type")]


class SamplerSpec(_Strict):
    type: SamplerName = "tpe"
    seed: int | None = 0
    # Passed to the Optuna sampler's constructor as keyword arguments (e.g. n_startup_trials).
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(_Strict):
    """FIFO runs every trial to the end; ASHA stops poor trials at its rungs.

    Rungs are counted in reports (Tune's training_iteration): one report per ``report_every``
    updates of the training config.
    """

    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1)
    brackets: int = Field(1, ge=1)


class ResourcesSpec(_Strict):
    """Per trial: a trial trains its whole population on one device, so ``gpus: 0.25`` puts four
    trials (each a fused population) on one GPU."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)

    @field_validator("gpus")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        # Ray schedules fractions of one GPU, or whole GPUs; 1.5 GPUs is not a placement it makes.
        if v > 1 and v != int(v):
            raise ValueError(f"gpus={v!r} is not allowed: use a fraction of one GPU (0 < gpus <= 1) or a whole number")
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
    num_samples: int | None = Field(None, ge=1)
    # N > 1 makes every trial a fused population over seeds seed0, seed0+1, ..., seed0+N-1.
    repeats: int = Field(1, ge=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = Field(None, ge=1)
    metric: Literal["error", "loss", "averaged_error"] = "error"
    mode: Literal["min", "max"] = "min"
    # A failed trial is retried this many times, from its last checkpoint.
    retries: int = Field(0, ge=0)
    # Save a checkpoint every N reports (and at the last one).
    checkpoint_every: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, raw: Any) -> Any:
        found = find_credentials(raw)
        if found:
            raise ValueError(
                f"{found} is not allowed: it looks like a credential; give passwords, tokens and keys "
                "through the environment or a secret (MOMENTUM_STUDY_RESULTS_DB, MLFLOW_TRACKING_PASSWORD, ...), "
                "never in a spec"
            )
        return raw

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RULE.match(v):
            raise ValueError(
                f"name={v!r} is not allowed: use 1-100 letters, digits, '_', '-' or '.', starting "
                "with a letter or digit (it names a directory, an MLflow experiment and an Optuna study)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        fields = set(TaskConfig.model_fields)
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
            size = self.grid_size()
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
        if self.num_samples is not None:
            return self.num_samples
        return self.grid_size() if self.sampler.type == "grid" else 10


def param_name(field: str, param: Any) -> str:
    """The name the sampler (and Optuna's storage) knows a searched field by."""
    if isinstance(param, FloatParam) and param.transform == "one_minus":
        return f"one_minus_{field}"
    return field


def task_config_dict(spec: StudySpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The raw training config of one trial: fixed config, sampled values, seeds for repeats."""
    raw: dict[str, Any] = {"task": spec.task, **spec.config}
    for field, param in spec.search.items():
        name = param_name(field, param)
        if name not in sampled:
            continue
        value = sampled[name]
        if isinstance(param, FloatParam) and param.transform == "one_minus":
            value = 1.0 - value
        raw[field] = value
    if spec.repeats > 1:
        seed0 = int(raw.get("seed", 0))
        raw["seed"] = [seed0 + k for k in range(spec.repeats)]
    return raw


def check_configs(spec: StudySpec) -> TaskConfig:
    """Validates the fixed config and every searched boundary value with trainables' rules.

    Each searched field is tried at each of its edge values (low/high, every choice) with the
    others at their first; returns the fixed config resolved for the first point.
    """
    first = {param_name(f, p): p.values_to_check()[0] for f, p in spec.search.items()}
    try:
        resolved = check_config(task_config_dict(spec, first))
        for field, param in spec.search.items():
            for value in param.values_to_check():
                point = dict(first)
                point[param_name(field, param)] = value
                check_config(task_config_dict(spec, point))
    except ConfigError as exc:
        raise SpecError(f"spec {spec.name!r}: {exc}") from None
    return resolved


def load_spec(source: str | Path | dict[str, Any]) -> StudySpec:
    """Reads and validates a spec from a YAML path, YAML text or a mapping; raises SpecError."""
    where = "spec"
    if isinstance(source, dict):
        raw = source
    else:
        text = str(source)
        path = Path(text)
        if "\n" not in text and (path.suffix in (".yaml", ".yml") or path.exists()):
            if not path.is_file():
                raise SpecError(f"spec file {text!r} does not exist")
            where = str(path)
            text = path.read_text()
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{where}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: a spec is a YAML mapping of fields, got {type(raw).__name__}")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{where}: " + describe(exc)) from None
    check_configs(spec)
    return spec


def describe(exc: ValidationError) -> str:
    """Turns pydantic's errors into 'field=value is not allowed: rule' lines."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).endswith("Param") and p not in _TAGS]
        key = ".".join(loc) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see docs/study-specs.md"
            msg = f"unknown field {key!r} (value {value!r}); allowed fields: {allowed}"
        elif err["type"] == "missing":
            msg = f"{key} is required"
        elif err["type"] in ("literal_error", "union_tag_invalid"):
            msg = f"{key}={_tag_value(err)!r} is not allowed: {err['msg']}"
        elif err["type"] == "value_error" and "is not allowed" in msg:
            msg = f"{key}: {msg}" if loc else msg
        else:
            msg = f"{key}={value!r} is not allowed: {msg}"
        lines.append(msg)
    return "; ".join(lines)


_TAGS = {"float", "int", "categorical", "grid"}


def _tag_value(err: dict[str, Any]) -> Any:
    ctx = err.get("ctx") or {}
    return ctx.get("tag", err.get("input"))


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = StudySpec
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of a grid spec, in the order Optuna's GridSampler may visit them."""
    names = list(spec.search)
    values = [spec.search[n].values for n in names]  # type: ignore[union-attr]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def spec_to_yaml(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
