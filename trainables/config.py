"""The training config: one typed object, validated once at the edge.

Population fields (``POPULATION_FIELDS``: ``lr``, ``mu_max``, ``mu_0``, ``init_scale``,
``spectral_radius``, ``seed``, ``optimizer``, ``final_momentum_updates``, ``final_momentum``) take a
single value or a list of K values; a list makes the run a fused population of K members
(design.md). Scalars are shared by every member; lists must all have the same length. Members may
use different optimizers only among ``MIXABLE_OPTIMIZERS`` (one batched momentum update).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Sequence, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

POPULATION_FIELDS = (
    "lr", "mu_max", "mu_0", "init_scale", "spectral_radius", "seed",
    "optimizer", "final_momentum_updates", "final_momentum",
)
# The optimizers that members of one population may mix (trainables.optim.MixedMomentum).
MIXABLE_OPTIMIZERS = ("sgd", "cm", "nag")

TaskName = Literal[
    "curves", "mnist", "faces", "addition", "multiplication", "mem5", "mem20", "xor"
]
OptimizerName = Literal["nag", "cm", "sgd", "adagrad", "rmsprop", "rmsprop_nesterov", "adam"]


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and the rule."""


FloatOrList = float | list[float]
IntOrList = int | list[int]


class TaskConfig(BaseModel):
    """Everything one training run needs. Defaults marked 'task' come from the task's paper setup."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskName
    # One name, or one per member (different names only among MIXABLE_OPTIMIZERS).
    optimizer: OptimizerName | list[OptimizerName] = "nag"
    lr: FloatOrList = 0.005
    # Eq. 5's cap (autoencoders) or the constant momentum of schedule "constant".
    mu_max: FloatOrList = 0.99
    # The RNN schedule's momentum after its first 1000 updates (sec. 4.2).
    mu_0: FloatOrList = 0.9
    # None: the task's paper schedule (autoencoders "eq5", RNN problems "rnn").
    momentum_schedule: Literal["eq5", "rnn", "constant"] | None = None
    # Final low-momentum phase (sec. 3, Table 2): mu = min(mu, final_momentum) for the last N updates.
    # None: the task's default (autoencoders 1000 when updates allow, RNN problems 0). Both may differ
    # per member; a None in a list is that member's task default.
    final_momentum_updates: int | None | list[int | None] = None
    final_momentum: FloatOrList = 0.9
    # Autoencoders: "sparse" (SI, sec. 3.1), "gaussian", "glorot", "orthogonal".
    # RNN problems: "esn" (Table 4) or the same alternatives for the recurrent matrix.
    init: Literal["sparse", "esn", "gaussian", "glorot", "orthogonal"] | None = None
    # Autoencoders: the SI scale multiplier (Table 3). RNN problems: the input-to-hidden scale
    # (Table 4: 0.001 for addition/multiplication, 0.1 for memorization). None: the task's default.
    init_scale: FloatOrList | None = None
    # RNN problems: spectral radius of the hidden-to-hidden matrix (Table 4: 1.1).
    spectral_radius: FloatOrList = 1.1
    seed: IntOrList = 0
    updates: int = 1000
    batch_size: int | None = None
    report_every: int = 100
    # Autoencoders: number of training cases (None: the data set's full training set).
    train_cases: int | None = None
    # Cases the reported error is computed on. Autoencoders: the first N training cases
    # (None: all, as the paper). RNN problems: a fixed set of N sequences from the member's seed.
    eval_cases: int | None = None
    # RNN problems: sequence length T (None: Table 5's, 80 or 200).
    seq_length: int | None = None
    # Autoencoders: "replica" (procedural Curves, no download), "original" (files in data_dir) or
    # "noise" (uniform noise of the task's input size: for speed measurements only, no learning).
    dataset: Literal["replica", "original", "noise"] = "replica"
    data_dir: str | None = None
    # Exponential (Polyak) averaging of the iterates; reported as extra metric "averaged_error".
    polyak_decay: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    rms_decay: float = 0.9
    eps: float = 1e-8
    # "auto": CUDA when present (scripts); "cpu"; "cuda" or "cuda:N". The study service replaces it
    # with the device Ray assigned to the trial (study/plan/devices.py); it does not affect results'
    # identity, so a checkpoint resumes under another device.
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    # On CUDA, the updates between two reports replay as captured CUDA graphs (trainables/graphs.py);
    # False runs them eagerly (same results, to rounding). Ignored on the CPU. Like ``device``, it
    # does not affect a run's identity: a checkpoint resumes with either setting.
    cuda_graphs: bool = True

    @field_validator("lr", "init_scale", "spectral_radius")
    @classmethod
    def _positive(cls, v: Any, info: Any) -> Any:
        for x in _as_list(v):
            if x is not None and not (math.isfinite(x) and x > 0):
                raise ValueError(f"{info.field_name}={x!r} is not allowed: must be a finite number > 0")
        return v

    @field_validator("mu_max", "mu_0", "final_momentum")
    @classmethod
    def _momentum(cls, v: Any, info: Any) -> Any:
        for x in _as_list(v):
            if not (0.0 <= x < 1.0):
                raise ValueError(f"{info.field_name}={x!r} is not allowed: momentum must lie in [0, 1)")
        return v

    @field_validator("adam_beta1", "adam_beta2", "rms_decay", "polyak_decay")
    @classmethod
    def _decay(cls, v: Any, info: Any) -> Any:
        if v is not None and not (0.0 <= v < 1.0):
            raise ValueError(f"{info.field_name}={v!r} is not allowed: must lie in [0, 1)")
        return v

    @field_validator("updates", "report_every", "batch_size", "train_cases", "eval_cases", "seq_length")
    @classmethod
    def _count(cls, v: Any, info: Any) -> Any:
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name}={v!r} is not allowed: must be an integer >= 1")
        return v

    @field_validator("final_momentum_updates")
    @classmethod
    def _nonneg(cls, v: Any, info: Any) -> Any:
        for x in _as_list(v):
            if x is not None and x < 0:
                raise ValueError(f"{info.field_name}={x!r} is not allowed: must be an integer >= 0")
        return v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer(cls, v: Any) -> Any:
        allowed = get_args(OptimizerName)
        for x in _as_list(v):
            if not isinstance(x, str) or x not in allowed:
                raise ValueError(f"optimizer={x!r} is not allowed: must be one of {list(allowed)}")
        if isinstance(v, list) and len(set(v)) > 1 and not set(v) <= set(MIXABLE_OPTIMIZERS):
            raise ValueError(
                f"optimizer={v!r} is not allowed: members with different optimizers may only use "
                f"{list(MIXABLE_OPTIMIZERS)}; any other method only as the one optimizer of every member"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device={v!r} is not allowed: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"eps={v!r} is not allowed: must be a finite number > 0")
        return v

    @model_validator(mode="after")
    def _population_lengths(self) -> "TaskConfig":
        lengths = {f: len(getattr(self, f)) for f in POPULATION_FIELDS if isinstance(getattr(self, f), list)}
        for f, n in lengths.items():
            if n == 0:
                raise ValueError(f"{f}=[] is not allowed: a population list needs at least one value")
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{f} has {n}" for f, n in lengths.items())
            raise ValueError(f"population lists must have the same length, but {shown}")
        return self

    @property
    def population_size(self) -> int:
        for f in POPULATION_FIELDS:
            v = getattr(self, f)
            if isinstance(v, list):
                return len(v)
        return 1

    def member_values(self, name: str) -> list[Any]:
        """The per-member values of a population field (a scalar repeated K times)."""
        v = getattr(self, name)
        return list(v) if isinstance(v, list) else [v] * self.population_size

    def member(self, k: int) -> "TaskConfig":
        """The solo config of member k: the run that member k of this population must reproduce."""
        return self.model_copy(update={f: self.member_values(f)[k] for f in POPULATION_FIELDS})

    def select(self, ids: Sequence[int]) -> "TaskConfig":
        """The sub-population of members ``ids`` (this population's indices, in the order given):
        population lists keep those members' values, scalars stay shared. One id gives a
        population of one, with lists of one where the field was a list."""
        ids = list(ids)
        K = self.population_size
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < K for i in ids):
            raise ConfigError(f"ids={ids!r} is not allowed: a non-empty list of member indices in [0, {K})")
        lists = {f: getattr(self, f) for f in POPULATION_FIELDS if isinstance(getattr(self, f), list)}
        return self.model_copy(update={f: [v[i] for i in ids] for f, v in lists.items()})


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def parse_config(raw: dict[str, Any] | TaskConfig) -> TaskConfig:
    """Validate a raw mapping; every problem is reported as 'key=value is not allowed: rule'."""
    if isinstance(raw, TaskConfig):
        return raw
    try:
        return TaskConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(TaskConfig.model_fields))
            msg = f"unknown key {key!r} (value {err['input']!r}); allowed keys: {allowed}"
        elif err["type"] == "literal_error":
            msg = f"{key}={err['input']!r} is not allowed: {err['msg']}"
        elif not msg.startswith(key.split(".")[0]) and "population lists" not in msg:
            msg = f"{key}={err.get('input')!r} is not allowed: {msg}"
        lines.append(msg)
    return "invalid training config: " + "; ".join(lines)
