"""The interface every RNN problem of sec. 4 implements (``SequenceProblem``): a population's
minibatches of one (stream, index) in one batched draw, one key's minibatch alone, the zero-one
error, and the closed-form means the problem is centred with (sec. 4.1). The trainer never
branches on a problem's name; the problems are in ``trainables.data.rnn_problems``.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from trainables.data import counter_rng
from trainables.data.counter_rng import MemberKeys
from trainables.data.sequence_batches import PopulationBatch, SequenceBatch, as_numpy


class SequenceProblem:
    """The interface every RNN problem implements; the trainer never branches on the name."""

    name: str
    n_in: int
    n_out: int
    kind: Literal["regression", "classification"]
    # Table 5's sequence length T for this problem.
    default_length: int
    # Table 4: scale of the dense input-to-hidden weights, 0.001 (add, mul) or 0.1 (memorization).
    input_scale: float

    def lengths(self, keys: MemberKeys, stream: int, index: int, length: int) -> list[int]:
        """Each member's length of minibatch (stream, index), computed on the host (it sets a shape)."""
        raise NotImplementedError

    def draw(self, keys: MemberKeys, stream: int, index: int, batch: int, length: int,
             dtype: torch.dtype = torch.float32) -> PopulationBatch:
        """The members' minibatches of (stream, index) for nominal length ``length``, on the keys'
        device, as one batched computation whose operations do not depend on K."""
        _check_batch(batch)
        key0, key1 = keys.batch(stream, index)
        return self._draw(key0, key1, self.lengths(keys, stream, index, length), batch, length, keys.device, dtype)

    def sample(
        self,
        key: int | Sequence[int],
        batch: int,
        length: int,
        device: torch.device | str = "cpu",
        generator: Any = None,
    ) -> SequenceBatch:
        """The minibatch of ``key`` = (seed, stream, index) (an int is (seed, 0, 0), missing parts
        are 0): the same on every device, and member k's minibatch of ``draw`` for seed k.

        ``generator`` is not used (the numbers come from the counter-based generator); it is
        accepted so that callers written for the earlier torch-generator draws keep running."""
        _check_batch(batch)
        seed, stream, index = (*np.atleast_1d(np.asarray(key, dtype=object)).tolist(), 0, 0)[:3]
        s0, s1 = counter_rng.seed_words(int(seed))
        c0, c1 = counter_rng.batch_words(int(stream), int(index))
        key0, key1 = s0 ^ c0, s1 ^ c1  # Python ints: nothing is copied to the device
        lengths = [self._length(key0, key1, length)]
        return self._draw(key0, key1, lengths, batch, length, torch.device(device), torch.float32).member(0)

    def _length(self, key0: Any, key1: Any, length: int) -> Any:
        return length

    def _draw(self, key0: Any, key1: Any, lengths: list[int], batch: int, length: int,
              device: torch.device, dtype: torch.dtype) -> PopulationBatch:
        raise NotImplementedError

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The zero-one error per leading index: outputs (..., T, B, n_out), masks (..., T, B);
        no mask: every step given counts."""
        raise NotImplementedError

    def zero_one_error(self, outputs: Any, batch: SequenceBatch) -> float:
        """The zero-one error of one batch (outputs as tensor or array, shaped like the targets)."""
        targets = torch.as_tensor(as_numpy(batch.targets))
        out = torch.as_tensor(np.array(as_numpy(outputs))).reshape(*targets.shape[:2], -1)
        return float(self.zero_one_errors(out, targets, torch.as_tensor(as_numpy(batch.error_mask))))

    def output_bias(self, length: int | None = None) -> np.ndarray:
        """Table 4's output bias, "average of outputs", in the model's (centred) units."""
        raise NotImplementedError

    def input_mean(self, length: int | None = None) -> np.ndarray:
        """The per-channel mean subtracted from the inputs (n_in,)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, default_length={self.default_length})"


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"Invalid batch size: {batch} (must be >= 1)")
