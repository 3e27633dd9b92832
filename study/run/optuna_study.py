"""Optuna, in one place: the spec's sampler (built and checked here), and nothing of Ray.

Every other module of study/ reaches Optuna through this one, so which Optuna APIs the service
depends on can be read on one page.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

from pydantic import ConfigDict, ValidationError

from study.spec.model import SpecError, StudySpec, param_name

SAMPLERS = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "gp": "GPSampler", "random": "RandomSampler",
            "qmc": "QMCSampler", "grid": "GridSampler"}


def optuna_sampler(spec: StudySpec, extra: dict[str, Any] | None = None) -> Any:
    """The spec's Optuna sampler, built with ``seed`` and ``options``; a misspelt or bad option is a
    SpecError naming ``sampler.options.<key>`` (so it is found at validation, not in the driver)."""
    import optuna.samplers

    kind, seed, opts = spec.sampler.type, spec.sampler.seed, dict(spec.sampler.options)
    cls = getattr(optuna.samplers, SAMPLERS[kind])
    extra = extra or {}
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("seed", "search_space")]
    for key in opts:
        if key in ("seed", "search_space"):
            raise SpecError(
                f"sampler.options.{key} is not allowed: "
                + ("give the seed as sampler.seed" if key == "seed" else "the grid comes from search")
            )
        if key not in allowed:
            raise SpecError(
                f"sampler.options.{key}={opts[key]!r} is not allowed: {cls.__name__} has no option {key!r}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        opts[key] = _checked_option(cls, key, opts[key])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some samplers and options
            if kind == "grid":
                grid = {param_name(f, p): list(p.values) for f, p in spec.search.items()}  # type: ignore[union-attr]
                return cls(grid, seed=seed, **opts)
            return cls(seed=seed, **opts, **extra)
    except (TypeError, ValueError, AttributeError) as exc:
        raise SpecError(
            f"sampler={{type: {kind}, seed: {seed!r}, options: {opts!r}}} is not allowed: {cls.__name__}: {exc}"
        ) from None


def _checked_option(cls: type, key: str, value: Any) -> Any:
    """``value`` checked against the type the sampler's constructor declares for ``key`` (Optuna
    accepts e.g. n_startup_trials='ten' at construction and fails only when it samples, in the
    driver). An annotation that cannot be resolved here (a type imported only for type checkers)
    is not checked."""
    import collections.abc
    import sys
    import typing

    from pydantic import TypeAdapter

    bad = _non_finite(value)
    if bad is not None:
        # pydantic's float takes inf and nan; no sampler setting means them.
        raise SpecError(f"sampler.options.{key}={value!r} is not allowed: {bad!r} is not a finite number")
    annotation = inspect.signature(cls).parameters[key].annotation
    if isinstance(annotation, str):  # Optuna's modules use postponed annotations
        names = {**vars(typing), **vars(collections.abc), **vars(sys.modules[cls.__module__])}
        try:
            annotation = eval(annotation, names)  # noqa: S307 - a library's own annotation, not input
        except Exception:
            return value
    if annotation is inspect.Parameter.empty:
        return value
    try:
        adapter = TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # a type pydantic cannot describe: left to the sampler
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        wanted = getattr(annotation, "__name__", None) or str(annotation).replace("collections.abc.", "")
        raise SpecError(
            f"sampler.options.{key}={value!r} is not allowed: {cls.__name__} takes {key} as {wanted} "
            f"({exc.errors()[0]['msg'].lower()})"
        ) from None


def _non_finite(value: Any) -> float | None:
    """The first inf or nan in a plain value (lists and mappings searched), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        found = _non_finite(v)
        if found is not None:
            return found
    return None
