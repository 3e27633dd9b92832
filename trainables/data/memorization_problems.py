"""The memorization problems of sec. 4 (Hochreiter & Schmidhuber 1997): mem-5 and mem-20 of
Table 5, after Sutskever's 2011 HF-RNN release as summarised in the task definitions ("RNN
problems"). Where each number of a minibatch comes from is in ``trainables.data.rnn_problems``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch

from trainables.data import counter_rng
from trainables.data.counter_rng import MemberKeys
from trainables.data.device_fills import device_arange, device_vector, float32_value
from trainables.data.sequence_batches import PopulationBatch
from trainables.data.sequence_problem import SequenceProblem


@functools.lru_cache(maxsize=64)
def _memorization_layout(problem: "MemorizationProblem", length: int, device: torch.device,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the inputs at steps n..T-1, (T - n, 1, C); the centred one-hot values of a symbol step,
    where a channel is on and off, (C,); the channel ids (C,)), C = n_in + 1 with the indicator."""
    n, C = problem.n_symbols, problem.n_in + 1
    mean = problem.input_mean(length)
    on = [float32_value(1.0 - m) for m in mean] + [1.0]
    off = [float32_value(0.0 - m) for m in mean] + [1.0]
    rest = device_vector(off, dtype, device).repeat(length - n, 1)
    rest[:, problem.blank] = on[problem.blank]
    rest[length - 2 * n - 1, problem.blank] = off[problem.blank]
    rest[length - 2 * n - 1, problem.trigger] = on[problem.trigger]
    return (rest.view(length - n, 1, C), device_vector(on, dtype, device), device_vector(off, dtype, device),
            torch.arange(C, device=device))


class MemorizationProblem(SequenceProblem):
    """Memorization ("mem-5", "mem-20"): recall n symbols after a long gap of blanks.

    Inputs are one-hot over (alphabet symbols, blank, trigger): the n symbols at t = 0..n-1, then
    blanks, the trigger at t = L-n-1, blanks at the last n steps. Targets are classes over
    (alphabet symbols, blank): blank everywhere except the last n steps, which must reproduce the
    n symbols in order. The length is fixed at L = T (no random length, unlike addition). The loss
    (softmax cross-entropy) covers every step; the error covers the last n steps.

    Zero-one error unit, wrong symbols per sequence: at each of the last n steps the prediction is
    the argmax over the alphabet classes only, and the error is the number of wrong symbols per
    sequence, averaged over sequences. The paper (sec. 4.2) says "the fraction of timesteps that
    are computed incorrectly", but Table 5's bias-only row (mem-5 2.5, mem-20 8.0) equals
    n * (1 - 1/alphabet) = 5 * 1/2 and 10 * 4/5, the expected wrong symbols per sequence of a
    model that always guesses one symbol; a fraction of timesteps could not exceed 1. This unit
    reproduces the table; task-definitions.md marks it unverified.
    """

    kind: Literal["classification"] = "classification"

    def __init__(self, name: str, n_symbols: int, alphabet: int, default_length: int) -> None:
        self.name = name
        self.n_symbols = n_symbols
        self.alphabet = alphabet
        self.blank = alphabet  # class and input channel index of the blank
        self.trigger = alphabet + 1  # input channel index of the trigger
        self.n_in = alphabet + 2
        self.n_out = alphabet + 1
        self.default_length = default_length
        self.input_scale = 0.1  # Table 4: in-to-hid (mem)

    def _check_length(self, length: int) -> None:
        if length < 2 * self.n_symbols + 1:
            raise ValueError(
                f"Invalid sequence length: {length} ({self.name} needs T >= {2 * self.n_symbols + 1}:"
                f" {self.n_symbols} symbols, a trigger and {self.n_symbols} answers)"
            )

    def input_mean(self, length: int | None = None) -> np.ndarray:
        length = length or self.default_length
        self._check_length(length)
        n = self.n_symbols
        mean = np.full(self.n_in, n / (self.alphabet * length))  # symbols uniform over the alphabet
        mean[self.blank] = (length - n - 1) / length
        mean[self.trigger] = 1.0 / length
        return mean

    def target_distribution(self, length: int | None = None) -> np.ndarray:
        """The average target class distribution over all steps (every step enters the loss)."""
        length = length or self.default_length
        self._check_length(length)
        n = self.n_symbols
        p = np.full(self.n_out, n / (self.alphabet * length))
        p[self.blank] = (length - n) / length
        return p

    def output_bias(self, length: int | None = None) -> np.ndarray:
        # Table 4's "average of outputs" for softmax units: softmax(log p) = p.
        return np.log(self.target_distribution(length))

    def lengths(self, keys: MemberKeys, stream: int, index: int, length: int) -> list[int]:
        self._check_length(length)
        return [length] * len(keys)

    def _draw(self, key0: Any, key1: Any, lengths: list[int], batch: int, length: int,
              device: torch.device, dtype: torch.dtype) -> PopulationBatch:
        self._check_length(length)
        n, B, T = self.n_symbols, batch, length
        words = counter_rng.words_at(device_arange(n * B, device), key0, key1).view(-1, n * B)
        K = words.shape[0]
        symbols = counter_rng.integers(words, 0, self.alphabet).view(K, n, B)

        rest, on, off, channel = _memorization_layout(self, T, device, dtype)
        inputs = torch.empty(K, T, B, self.n_in + 1, dtype=dtype, device=device)
        inputs[:, n:] = rest
        torch.where(symbols.unsqueeze(-1) == channel, on, off, out=inputs[:, :n])
        targets = torch.empty(K, T, B, dtype=torch.int64, device=device)
        targets[:, : T - n] = self.blank
        targets[:, T - n:] = symbols
        return PopulationBatch(inputs, targets, target_from=0, target_fill=self.blank, loss_from=0,
                               error_from=T - n, lengths=tuple(lengths))

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor | None = None) -> torch.Tensor:
        predicted = outputs[..., : self.alphabet].argmax(dim=-1)
        wrong = predicted != targets
        if error_mask is not None:
            wrong &= error_mask
        return wrong.sum(dim=-2).to(torch.float64).mean(dim=-1)
