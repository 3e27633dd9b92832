"""The parameters a spec searches (``search:``): float and int ranges, categorical choices and
grid values, each checked on its own (the spec model checks how they combine)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from study.spec.limits import MAX_CHOICES


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


# The sampler's (and Optuna's) name of a field searched with ``transform: one_minus``: this prefix
# and the field (study/spec/expand.py ``param_name``).
ONE_MINUS = "one_minus_"


def field_value(name: str, value: Any, config: dict[str, Any] | None = None) -> tuple[str, Any]:
    """The sampler's name back to what a user reads: (the field, its value), e.g.
    ``one_minus_mu_max`` 0.007 -> ``mu_max`` 0.993 (the trial's config value where it has one:
    the value it trained with); any other name as it is."""
    if not name.startswith(ONE_MINUS):
        return name, value
    field = name[len(ONE_MINUS):]
    trained = (config or {}).get(field)
    if isinstance(trained, float):
        return field, trained
    return field, 1.0 - value if isinstance(value, (int, float)) and not isinstance(value, bool) else value


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
