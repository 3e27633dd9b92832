"""Study specs: one YAML file says what to train, what to search and how (docs/study-specs.md).

A spec is validated twice before anything starts: its own shape (pydantic, extra="forbid"), then
every training config it can produce through trainables' ``parse_config``, so a bad value is
reported with its field, the value and what is allowed before Ray, MLflow or a database is touched.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# A study's name follows one rule, shared with every command that takes a NAME.
from study.spec.names import NAME_RULE, check_name  # noqa: F401 - NAME_RULE stays importable from here
from trainables.config import ConfigError, TaskConfig
from trainables.train import check_config

# Samplers Optuna ships; "cmaes" also needs the `cmaes` package (a dependency of this project).
SamplerName = Literal["tpe", "cmaes", "gp", "random", "grid", "qmc"]
METRICS = ("error", "loss", "averaged_error")
# Limits on what a spec may ask for (docs/study-specs.md, "Limits"). A spec is a page of YAML; the
# paper's longest runs are 750,000 updates; results-DB integers are 64-bit.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 20
MAX_TRIALS = 100_000
# Values of one categorical or grid parameter: Optuna stores a categorical's whole list of choices
# with every trial's value of it (trial_params.distribution_json), so 100,000 choices would put
# gigabytes in the results DB; a grid's size (the product over its parameters) is MAX_TRIALS.
MAX_CHOICES = 1_000
MAX_REPEATS = 1024
MAX_MEMBERS = 4096
MAX_UPDATES = 10_000_000
# Sizes no study of these models needs (the paper: minibatches of 100 and 200, T <= 200, at most
# 103,500 training cases); whether a size that passes fits the machine is study/plan/sizing.py's check.
MAX_SIZES = {"batch_size": 1_000_000, "eval_cases": 10_000_000, "train_cases": 10_000_000, "seq_length": 100_000}
MAX_INT = 2**63 - 1
# Credentials come from the environment or a secret store, never from a spec (docs/cluster.md):
# a spec is stored in the results DB and logged to MLflow as parameters and an artifact.
# A key is read as words (snake, kebab, dotted or camel case) so that `author`, `max_tokens` or
# `tokenizer` pass while `db_password`, `apiKey`, `x-auth-token` or `authorization` are refused.
CREDENTIAL_WORD = re.compile(
    r"\w*(password|passwd|passphrase|secret|apikey|privatekey|credential)s?|\w*token|pass|pwd|auth|authorization|oauth\w*|bearer"
)
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def credential_key(key: str) -> bool:
    """Whether a mapping key names a credential: one of its words, or two adjacent words joined
    (`api_key`, `private-key`), is a credential's name."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w]
    joined = words + [a + b for a, b in zip(words, words[1:])]
    return any(CREDENTIAL_WORD.fullmatch(w) for w in joined)


def find_credentials(value: Any, where: str = "") -> str | None:
    """The first field of a raw spec that looks like a credential (by its name or a URL with a
    password), as a dotted path; None if there is none."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if credential_key(str(k)):
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


class _Refused(Exception):
    """Raised inside the YAML loader; load_spec turns it into a SpecError with the file's name."""


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader without what a spec never needs and a hostile file would use: aliases
    (a billion-laughs bomb expands a few hundred bytes into gigabytes), duplicate keys (YAML keeps
    the last one silently), nesting deeper than MAX_DEPTH, and tags for sets, binary and ordered
    pairs (SafeLoader already refuses !!python/... tags)."""

    yaml_constructors = {
        tag: fn
        for tag, fn in yaml.SafeLoader.yaml_constructors.items()
        if tag not in ("tag:yaml.org,2002:binary", "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs")
    }

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"line {event.start_mark.line + 1}: the YAML alias *{event.anchor} is not allowed: "
                "a spec may not use anchors and aliases (&name / *name); write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels, which is not allowed")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeLoader reports it
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _Refused(
                        f"line {line}: duplicate key {key!r} (first at line {first}) is not allowed: "
                        "YAML would keep only the last value; give each key once"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str = "spec") -> Any:
    """The plain value of a YAML document, through SpecLoader; raises SpecError naming the line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: larger than {MAX_SPEC_BYTES} bytes (1 MiB), which is not allowed for a spec")
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except _Refused as exc:
        raise SpecError(f"{where}, {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        problem = exc.problem or ""
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        tag = re.search(r"tag '([^']+)'", problem)
        if tag:
            shown = tag[1].replace("tag:yaml.org,2002:", "!!")
            raise SpecError(
                f"{where}, {line}the YAML tag {shown} is not allowed: a spec holds plain mappings, lists, "
                "strings, numbers, true/false and null"
            ) from None
        raise SpecError(f"{where}, {line}not valid YAML: {problem}") from None
    except yaml.MarkedYAMLError as exc:
        line = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: " if exc.problem_mark else ""
        raise SpecError(f"{where}, {line}not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply, which is not allowed") from None


def read_spec_file(path: Path) -> str:
    """A spec file's text: at most MAX_SPEC_BYTES of UTF-8, else a SpecError saying what it is."""
    where = str(path)
    try:
        if not path.is_file():
            raise SpecError(f"spec file {where!r} " + ("is not a regular file" if path.exists() else "does not exist"))
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"spec file {where!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {where!r} is larger than {MAX_SPEC_BYTES} bytes (1 MiB), which is not allowed for a spec")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"spec file {where!r} is a binary file (a NUL byte at offset {nul}), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"spec file {where!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def check_plain(value: Any, where: str = "", depth: int = 0) -> None:
    """Refuses what no spec field takes and what would fail only when stored: nesting deeper than
    MAX_DEPTH, integers beyond 64 bits, NUL characters in strings (PostgreSQL refuses them)."""
    if depth > MAX_DEPTH:
        raise SpecError(f"{where or 'spec'}: nested deeper than {MAX_DEPTH} levels, which is not allowed")
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if isinstance(k, str):
                check_plain(k, path, depth + 1)
            check_plain(v, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise SpecError(f"{where or 'spec'}={value!r} is not allowed: integers must fit in 64 bits (|x| < 2**63)")
    elif isinstance(value, str) and "\0" in value:
        raise SpecError(f"{where or 'spec'}={value!r} is not allowed: a NUL character in a string")


class _Strict(BaseModel):
    # inf and nan are no count of CPUs, range edge or reduction factor.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
        if self.step is not None and not self.step > 0:
            raise ValueError(f"step={self.step!r} is not allowed: need step > 0")
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(
                f"step={self.step!r} is not allowed: larger than high - low = {self.high - self.low!r}, "
                "so only low would ever be tried; need step <= high - low"
            )
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
        if self.step < 1:
            raise ValueError(f"step={self.step!r} is not allowed: need an integer step >= 1")
        if self.log and self.step != 1:
            raise ValueError(f"step={self.step!r} is not allowed with log: true: need step 1 (Optuna's rule)")
        if self.low < self.high and self.step > self.high - self.low:
            raise ValueError(
                f"step={self.step!r} is not allowed: larger than high - low = {self.high - self.low}, "
                "so only low would ever be tried; need step <= high - low"
            )
        return self

    def values_to_check(self) -> list[int]:
        return [self.low, self.high]


def _check_choices(values: list[Any]) -> None:
    """Choices are single plain values: Optuna stores nothing else, and a list given to a
    population field would turn the trial into a population instead of one choice."""
    seen: set[tuple[type, Any]] = set()  # (type, value): 1 and 1.0 and True are three choices
    for i, v in enumerate(values):
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise ValueError(
                f"values[{i}]={v!r} is not allowed: each value is one number, string, true/false or null "
                "(for several seeds per trial use repeats)"
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"values[{i}]={v!r} is not allowed: need a finite number")
        if (type(v), v) in seen:
            raise ValueError(f"values[{i}]={v!r} is not allowed: it is listed twice")
        seen.add((type(v), v))


def _at_most_choices(values: Any) -> Any:
    """Refuses a list longer than MAX_CHOICES before pydantic or the duplicate check walk it, and
    without quoting it (the message would be as long as the list)."""
    if isinstance(values, (list, tuple)) and len(values) > MAX_CHOICES:
        raise ValueError(
            f"values=<a list of {len(values):,} values> is not allowed: at most {MAX_CHOICES:,} values per "
            "parameter (Optuna stores a parameter's list of choices with every trial); for a range, "
            "use type float or int"
        )
    return values


class CategoricalParam(_Strict):
    """One of a list of values, chosen by the sampler."""

    type: Literal["categorical"]
    values: list[Any] = Field(min_length=1)

    _short = field_validator("values", mode="before")(staticmethod(_at_most_choices))

    @model_validator(mode="after")
    def _choices(self) -> "CategoricalParam":
        _check_choices(self.values)
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.values)


class GridParam(_Strict):
    """Every value in turn: the study runs the full product of all grid parameters (sampler: grid)."""

    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)

    _short = field_validator("values", mode="before")(staticmethod(_at_most_choices))

    @model_validator(mode="after")
    def _choices(self) -> "GridParam":
        _check_choices(self.values)
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.values)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam, GridParam], Field(discriminator="type")]


class SamplerSpec(_Strict):
    type: SamplerName = "tpe"
    seed: int | None = Field(0, ge=0, le=2**32 - 1)  # numpy's RandomState range
    # Passed to the Optuna sampler's constructor as keyword arguments (e.g. n_startup_trials).
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(_Strict):
    """FIFO runs every trial to the end; ASHA stops poor trials at its rungs.

    Rungs are counted in reports (Tune's training_iteration): one report per ``report_every``
    updates of the training config.
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
        checked = [resolved]
        for field, param in spec.search.items():
            for value in param.values_to_check():
                point = dict(first)
                point[param_name(field, param)] = value
                checked.append(check_config(task_config_dict(spec, point)))
    except ConfigError as exc:
        raise SpecError(f"spec {spec.name!r}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError(f"spec {spec.name!r}: invalid training config: {exc}") from None
    for cfg in checked:
        for key, most in MAX_SIZES.items():
            value = getattr(cfg, key)
            if value is not None and value > most:
                raise SpecError(f"spec {spec.name!r}: {key}={value!r} is not allowed: need 1 <= {key} <= {most:,}")
        if cfg.updates > MAX_UPDATES:
            raise SpecError(
                f"spec {spec.name!r}: updates={cfg.updates!r} is not allowed: at most {MAX_UPDATES:,} "
                "(the paper's longest runs are 750,000)"
            )
        if spec.metric == "averaged_error" and cfg.polyak_decay is None:
            # Without Polyak averaging no trial reports averaged_error and every objective is +inf.
            raise SpecError(
                f"spec {spec.name!r}: metric='averaged_error' is not allowed without config.polyak_decay: "
                "averaged_error is the error of the Polyak-averaged iterates, kept only when polyak_decay "
                "is set (e.g. config: {polyak_decay: 0.999})"
            )
        reports = math.ceil(cfg.updates / cfg.report_every)
        max_t = spec.scheduler.max_t or reports
        if spec.scheduler.type == "asha" and spec.scheduler.grace_period > max_t:
            raise SpecError(
                f"spec {spec.name!r}: scheduler.grace_period={spec.scheduler.grace_period!r} is not allowed: "
                f"more than max_t={max_t} reports (updates / report_every), so ASHA would have no rung"
            )
    return resolved


def load_spec(source: str | Path | dict[str, Any]) -> StudySpec:
    """Reads and validates a spec from a YAML path, YAML text or a mapping; raises SpecError."""
    where = "spec"
    if isinstance(source, dict):
        raw = source
    else:
        text = str(source)
        # A one-line string without ':' cannot be a spec's YAML: it names a file.
        if isinstance(source, Path) or ("\n" not in text and (":" not in text or Path(text).exists())):
            path = Path(text)
            where = str(path)
            text = read_spec_file(path)
        raw = parse_yaml(text, where)
        if raw is None:
            raise SpecError(f"{where}: the spec is empty; a spec is a YAML mapping of fields (name, task, search, ...)")
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: a spec is a YAML mapping of fields, got {type(raw).__name__}")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{where}: " + describe(exc)) from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply, which is not allowed") from None
    check_configs(spec)
    try:
        from study.run.optuna_study import optuna_sampler  # Optuna's owner; imports this module

        optuna_sampler(spec)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
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
            # "name='x' is not allowed" at name, "step=0 ..." at search.lr: one dotted field name.
            head = re.match(r"[A-Za-z_][\w\[\]]*(?==)", msg)
            if loc and head and head[0] == loc[-1]:
                msg = ".".join(loc[:-1] + [msg]) if len(loc) > 1 else msg
            elif loc and head:
                msg = f"{key}.{msg}"
            elif loc:
                msg = f"{key}: {msg}"
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
