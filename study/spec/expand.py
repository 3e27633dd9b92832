"""From a spec to training configs: the values a sampler draws become one trial's raw config
(``task_config_dict``), checked with trainables' own rules at every searched edge before anything
starts (``check_configs``); a grid's points in order (``grid_points``)."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from study.errors import SpecError
from study.spec.limits import MAX_SIZES, MAX_UPDATES
from study.spec.params import ONE_MINUS, FloatParam
from trainables.config import ConfigError, TaskConfig
from trainables.train import check_config

if TYPE_CHECKING:
    from study.spec.model import StudySpec


def param_name(field: str, param: Any) -> str:
    """The name the sampler (and Optuna's storage) knows a searched field by."""
    if isinstance(param, FloatParam) and param.transform == "one_minus":
        return f"{ONE_MINUS}{field}"
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



def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of a grid spec, in the order Optuna's GridSampler may visit them."""
    names = list(spec.search)
    values = [spec.search[n].values for n in names]  # type: ignore[union-attr]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]
