"""From a spec to training configs: the values a sampler draws become one trial's raw config
(``task_config_dict``), checked with trainables' own rules at every searched edge before anything
starts (``check_configs``); a grid's points in order (``grid_points``), each run once: where CM and
NAG are the same plain SGD (momentum 0 at every update), the NAG point is left out
(``sgd_duplicates``) and the reports show the CM one's runs in both columns."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from study.errors import SpecError
from study.spec.limits import MAX_SIZES, MAX_UPDATES
from study.spec.params import ONE_MINUS, FloatParam
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.tasks import task_for
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
    """Every point of a grid spec that runs, in the order Optuna's GridSampler may visit them:
    the full product less ``sgd_duplicates`` (each the same runs as a point that stays)."""
    names = list(spec.search)
    values = [spec.search[n].values for n in names]  # type: ignore[union-attr]
    dropped = {_point_key(p) for p in sgd_duplicates(spec)}
    points = (dict(zip(names, combo)) for combo in itertools.product(*values))
    return [p for p in points if _point_key(p) not in dropped]


# At momentum 0 at every update, CM's and NAG's updates are the same (v <- 0*v - lr*g at theta +
# 0*v = theta): plain SGD. The first is run, the second shown with its runs (study/report/sgd_shared.py).
SGD_TWINS = ("cm", "nag")
# The schedules under which mu_max = 0 gives mu = 0 at every update: Eq. 5 is min(..., mu_max)
# and "constant" is mu_max itself; the final phase only lowers mu (min(mu, final_momentum)). The
# RNN schedule runs its warm-up at mu = 0.9 whatever the config says, so it never qualifies.
ZERO_MU_SCHEDULES = ("eq5", "constant")


def momentum_zero_throughout(raw: dict[str, Any]) -> bool:
    """Whether the raw training config ``raw`` trains every member with mu = 0 at every update
    (its resolved schedule is Eq. 5 or constant, at mu_max 0). False for a config that is not
    valid: nothing is merged on a guess."""
    try:
        cfg = parse_config(raw)
        kind = task_for(cfg.task).resolve(cfg).momentum_schedule
    except (ConfigError, ValueError, TypeError):
        return False
    return kind in ZERO_MU_SCHEDULES and all(float(m) == 0.0 for m in cfg.member_values("mu_max"))


def sgd_duplicates(spec: StudySpec) -> list[dict[str, Any]]:
    """The grid points left out because they run exactly what another point runs: the NAG point
    of each pair of grid points that differ only in optimizer (CM or NAG) and whose resolved
    configs both keep mu = 0 at every update (``momentum_zero_throughout``), as Table 1's mu_max = 0
    column (plain SGD, one column for CM and NAG in the paper). Only grids: a sampler that draws
    points is not affected."""
    if spec.sampler.type != "grid" or "optimizer" not in spec.search:
        return []
    names = list(spec.search)
    optimizers = list(spec.search["optimizer"].values)  # type: ignore[union-attr]
    if not all(o in optimizers for o in SGD_TWINS):
        return []
    if "mu_max" not in spec.search and not _is_zero(spec.config.get("mu_max")):
        return []  # every point at the default or a fixed nonzero cap: nothing to enumerate
    # Only mu_max = 0 can qualify: the other axes are enumerated with mu_max at its zero values.
    axes = {n: [v for v in spec.search[n].values if n != "mu_max" or _is_zero(v)]  # type: ignore[union-attr]
            for n in names if n != "optimizer"}
    out = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        kept, dropped = ({**point, "optimizer": o} for o in SGD_TWINS)
        if all(momentum_zero_throughout(task_config_dict(spec, p)) for p in (kept, dropped)):
            out.append({n: dropped[n] for n in names})
    return out


def sgd_note(spec: StudySpec) -> str | None:
    """The plan's note on the grid points run once for CM and NAG (None where there are none)."""
    dropped = sgd_duplicates(spec)
    if not dropped:
        return None
    return (f"{len(dropped)} of the grid's {spec.grid_size()} points are not run: at mu_max = 0 CM and NAG are the "
            "same plain SGD (mu = 0 at every update under this schedule), so each runs once as optimizer cm and "
            "the reports show those runs in both the CM and the NAG column")


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) == 0.0


def _point_key(point: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in point.items()))
