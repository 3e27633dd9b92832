"""The bias-only level of a task: the error of a model that learns its output biases and nothing
else, computed with the task's own data code at the study's settings.

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

import functools
from typing import Any

import numpy as np

# Sequences drawn to estimate an RNN problem's level (its standard error is below 0.01).
RNN_SEQUENCES = 4000
# The key of those sequences: a stream of its own, apart from training and evaluation data.
RNN_KEY = (0, 7, 0)


@functools.lru_cache(maxsize=32)
def _autoencoder_level(task: str, dataset: str, data_dir: str | None, train_cases: int | None,
                       eval_cases: int | None) -> float:
    from trainables.data.autoencoder_files import load_autoencoder_data
    from trainables.tasks.autoencoder import ENCODERS

    if dataset == "noise":  # as trainables.tasks.autoencoder.build draws it
        data = np.random.default_rng(0).random((train_cases or 2000, ENCODERS[task][0]), dtype=np.float32)
    else:
        data = load_autoencoder_data(task, dataset, data_dir, train_cases, 0)
    x = data[: eval_cases or len(data)].astype(np.float64)
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


@functools.lru_cache(maxsize=32)
def _rnn_level(task: str, seq_length: int | None) -> float:
    import torch

    from trainables.data.rnn_problems import PROBLEMS

    problem = PROBLEMS[task]
    length = seq_length or problem.default_length
    batch = problem.sample(RNN_KEY, RNN_SEQUENCES, length).numpy()
    bias = np.asarray(problem.output_bias(length), dtype=np.float32)
    outputs = np.broadcast_to(bias, (*batch.targets.shape[:2], problem.n_out))
    return problem.zero_one_error(torch.as_tensor(np.ascontiguousarray(outputs)), batch)


def bias_only_error(config: dict[str, Any]) -> tuple[float | None, str]:
    """(level, how it was obtained) for a member's training config, or (None, why not)."""
    from study.report.data import family

    task = config["task"]
    if family(task) == "autoencoder":
        dataset = config.get("dataset") or "replica"
        try:
            level = _autoencoder_level(task, dataset, config.get("data_dir"), config.get("train_cases"),
                                       config.get("eval_cases"))
        except (OSError, ValueError) as exc:
            return None, f"no bias-only level: the {task} data could not be read here ({exc})"
        return level, "mean image"
    level = _rnn_level(task, config.get("seq_length"))
    return level, "mean output" if task in ("addition", "multiplication", "xor") else "average target distribution"


__all__ = ["bias_only_error"]
