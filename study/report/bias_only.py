"""The bias-only level of a task: the error of a model that learns its output biases and nothing
else, computed by the task itself (``Task.bias_only_error``, trainables/tasks) with its own data
code at the study's settings.

Such a model predicts the same output for every case: the one its training loss prefers.

- Autoencoders (squared error, linear or logistic outputs): the mean image of the cases the error
  is scored on, so the level is their total variance, ``mean_n ||x_n - mean(x)||^2``, on the first
  ``eval_cases`` training cases as the trainer scores them (``trainables.data``).
- Addition, multiplication (regression, centred targets): the target mean, i.e. the problem's
  ``output_bias`` (0 in centred units); the level is the zero-one error of that constant on the
  problem's own sequences, the fraction of cases off by more than 0.04.
- Memorization (softmax): the average target distribution (``output_bias``); its argmax is one
  fixed symbol, which gets n (1 - 1/alphabet) symbols wrong per sequence (Table 5's bias row).

The paper's bias-only row of Table 5 is data (study/published_results.yaml) and is shown beside
these as it stands. Where the data cannot be read here (an original data file that is not on this
machine) there is no level: ``None`` and the reason.
"""

from __future__ import annotations

from typing import Any

from study.report.stats import or_none

# The config fields a bias-only level depends on: the task and the cases its error is scored on.
DATA_FIELDS = ("task", "dataset", "data_dir", "train_cases", "eval_cases", "seq_length")


def bias_only_error(config: dict[str, Any]) -> tuple[float | None, str]:
    """(level, how it was obtained) for a member's training config, or (None, why not)."""
    from trainables.config import TaskConfig
    from trainables.tasks import task_for

    task = config["task"]
    # Only the data fields: a stored config may hold keys an older trainer wrote.
    try:
        cfg = TaskConfig(**{k: config[k] for k in DATA_FIELDS if config.get(k) is not None})
        return task_for(task).bias_only_error(cfg)
    except (OSError, ValueError) as exc:
        return None, f"no bias-only level: the {task} data could not be read here ({exc})"


def member_data_config(row: Any) -> dict[str, Any]:
    """A member row's data settings (``DATA_FIELDS``, of a members frame) as the training config
    takes them: gaps as None, counts as ints (pandas reads integer columns with gaps as floats)."""
    config = {}
    for k in DATA_FIELDS:
        v = or_none(row.get(k))
        if v is not None and k in ("train_cases", "eval_cases", "seq_length"):
            v = int(v)
        config[k] = v
    return config


__all__ = ["DATA_FIELDS", "bias_only_error", "member_data_config"]
