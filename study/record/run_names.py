"""A configuration's name in MLflow's runs table: its optimizer, then its searched values
(``nag mu 0.99 r 1.1``), so a reader sees the settings without opening the run.

Plain functions of the configuration (no MLflow here: study/record/tracking.py names the runs and
adds the configuration's id where two names would be the same).
"""

from __future__ import annotations

from typing import Any, Mapping

from study.spec.params import field_value

# The paper's symbols, short enough for the table's first column; any other field keeps its name.
SHORT = {"mu_max": "mu", "mu_0": "mu0", "spectral_radius": "r", "init_scale": "scale", "lr": "lr",
         "momentum_schedule": "schedule"}


def short_value(value: Any) -> str:
    """A value in as few digits as tell it apart: 3 significant digits, more where a momentum near 1
    would round to 1 (0.9995 stays 0.9995, not 1; 1 - mu is what matters there)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    for digits in range(3, 10):
        text = f"{value:.{digits}g}"
        shown = float(text)
        close = abs(shown - value) <= 5e-3 * abs(value)
        if close and (not 0 < value < 1 or abs(shown - value) <= 0.02 * (1 - value)):
            return text
    return repr(value)


def configuration_name(config: Mapping[str, Any], sampled: Mapping[str, Any]) -> str:
    """``<optimizer> <field> <value> ...`` over the searched fields in the spec's order, each with
    the value the configuration trained with (``one_minus_mu_max`` 0.01 is ``mu 0.99``)."""
    parts = [str(config["optimizer"])] if config.get("optimizer") is not None else []
    for name, value in sampled.items():
        field, value = field_value(name, value, dict(config))
        if field != "optimizer":  # already first
            parts.append(f"{SHORT.get(field, field)} {short_value(config.get(field, value))}")
    # No quotes: the name is looked up in MLflow's search syntax (tracking.py).
    return " ".join(parts).replace("'", "") or "configuration"
