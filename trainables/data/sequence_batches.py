"""The minibatch types of the RNN problems (sec. 4): one sequence batch, and the K members'
batches of one draw. Arrays are time-major: ``(T, B, ...)`` per sequence batch, ``(K, T, B, ...)``
per population; the problems that make them are in ``trainables.data.rnn_problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class SequenceBatch:
    """One minibatch of sequences, time-major, already centred (torch tensors, or numpy arrays
    after ``.numpy()``).

    ``inputs``: (T, B, n_in) float32. ``targets``: (T, B, n_out) float32 for regression, (T, B)
    int64 class ids for classification. ``loss_mask``: (T, B) bool, the steps whose output enters
    the training loss. ``error_mask``: (T, B) bool, the steps whose output enters the zero-one
    error. Both masks are True on the last steps of the sequence only, from ``loss_from`` and
    ``error_from`` on (known without looking at the data: no host round trip to find them).
    """

    inputs: Any
    targets: Any
    loss_mask: Any
    error_mask: Any
    loss_from: int = 0
    error_from: int = 0

    def numpy(self) -> "SequenceBatch":
        """The same batch as numpy arrays on the host."""
        return SequenceBatch(*(as_numpy(getattr(self, f.name)) for f in fields(self)[:4]),
                             loss_from=self.loss_from, error_from=self.error_from)

    @property
    def length(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[1])


@dataclass(frozen=True)
class PopulationBatch:
    """The minibatches of K members for one (stream, index), left-padded to the longest, T steps.

    ``inputs``: (K, T, B, n_in + 1) in the requested dtype: the problem's n_in channels, then the
    step indicator, 1 on a member's own steps and 0 on its padding; every channel is 0 on padding
    (the RNN folds its hidden bias into the indicator's weights, so padding adds exact zeros).
    ``targets``: the targets at steps ``target_from`` .. T-1 only, (K, S, B, n_out) float in the
    requested dtype or (K, S, B) int64 class ids; at earlier steps every target is ``target_fill``.
    Sequences end together at step T-1, so the steps that enter the loss (the error) are the same
    for every member: ``loss_from`` (``error_from``) .. T-1, both >= ``target_from``.
    ``lengths``: each member's own length (host ints, the shape is known without the device);
    None where only the computation reads the batch (it needs no lengths: the padding is in the
    inputs).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    target_from: int
    target_fill: float | int
    loss_from: int
    error_from: int
    lengths: tuple[int, ...] | None

    @property
    def steps(self) -> int:
        return int(self.inputs.shape[1])

    def member(self, k: int) -> SequenceBatch:
        """Member k's minibatch, unpadded, as ``sample`` gives it (float32 inputs, full targets)."""
        T, L = self.steps, self.lengths[k]
        pad = T - L
        inputs = self.inputs[k, pad:, :, :-1].to(torch.float32)
        known = self.targets[k].to(torch.float32) if self.targets.is_floating_point() else self.targets[k]
        targets = known.new_full((L, *known.shape[1:]), self.target_fill)
        targets[self.target_from - pad:] = known
        step = torch.arange(L, device=inputs.device)[:, None].expand(L, inputs.shape[1])
        return SequenceBatch(inputs, targets, step >= self.loss_from - pad, step >= self.error_from - pad,
                             loss_from=self.loss_from - pad, error_from=self.error_from - pad)


def as_numpy(outputs: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here: the trainer passes model outputs as is.
    if hasattr(outputs, "detach"):
        outputs = outputs.detach().cpu().numpy()
    return np.asarray(outputs)
