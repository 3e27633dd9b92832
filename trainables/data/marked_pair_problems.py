"""The marked-pair problems of sec. 4 (Hochreiter & Schmidhuber 1997): addition, multiplication
(Table 5) and xor (an extra of the same family), after Sutskever's 2011 HF-RNN release as
summarised in the task definitions ("RNN problems"). Where each number of a minibatch comes from
is in ``trainables.data.rnn_problems``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import numpy as np
import torch

from trainables.data import counter_rng
from trainables.data.counter_rng import MemberKeys
from trainables.data.device_fills import device_arange, device_vector, float32_value
from trainables.data.sequence_batches import PopulationBatch
from trainables.data.sequence_problem import SequenceProblem

# Sec. 4.2: "the fraction of cases where ... the error in the final output prediction exceeded 0.04".
REGRESSION_TOLERANCE = 0.04
LENGTH_POSITION = 1 << 31
_TOP = (1 << 32) - 1


@functools.lru_cache(maxsize=64)
def _marked_pair_positions(T: int, B: int, device: torch.device) -> torch.Tensor:
    """Positions of a padded marked-pair batch: the values at padded steps t = 0..T-1 (as
    ``(T - 1 - t) B + b``), the length, then I and J of each sequence interleaved."""
    t = torch.arange(T - 1, -1, -1, dtype=torch.int64, device=device)[:, None]
    b = torch.arange(B, dtype=torch.int64, device=device)
    pairs = _TOP - torch.arange(2 * B, dtype=torch.int64, device=device)
    length = torch.full((1,), LENGTH_POSITION, dtype=torch.int64, device=device)
    return torch.cat([(t * B + b).reshape(-1), length, pairs])


@functools.lru_cache(maxsize=16)
def _pair_ranges(ranges: tuple[tuple[int, int], tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = zip(*ranges)
    return device_vector(lo, torch.int64, device), device_vector(hi, torch.int64, device)


class MarkedPairProblem(SequenceProblem):
    """Addition, multiplication (and XOR): combine the values at two marked steps.

    Channel 0 holds a value at every step; channel 1 is the marker: +1 at the two marked steps I
    and J, -1 at t=0 and t=L-3 (as in Sutskever's 2011 code), 0 elsewhere. With
    ``f(x) = int(x * T / 100)`` for the nominal length T:

    - the minibatch's length L is drawn from [f(100), f(110)) and shared by its sequences,
    - I from [f(1), f(10)), J from [f(10), f(50)), independently per sequence,
    - one output, read at the last step: ``combine(v_I, v_J)``.

    For T < 100, f(1) = 0 so I may be 0, the step that also carries the -1 marker; the +1 wins
    there (it is the marker that carries the task). T must be >= 10 for every range to be
    non-empty.

    Values are drawn as integer codes: a 24-bit code c whose value is the midpoint (c + 1/2) / 2^24
    (``value_bits`` 24), or one bit whose value is itself (1). Centred inputs are exact in float32
    either way. ``combine`` takes the codes at I and J and returns the raw target in float64,
    exactly (sums and products of 25-bit numbers fit a float64), before centring and the one
    rounding to float32.

    Zero-one error (sec. 4.2): the fraction of sequences whose final prediction is off by more
    than 0.04.
    """

    kind: Literal["regression"] = "regression"
    n_in = 2
    n_out = 1

    def __init__(
        self,
        name: str,
        value_bits: int,
        combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        value_mean: float,
        target_mean: float,
        default_length: int = 80,
        input_scale: float = 0.001,
    ) -> None:
        self.name = name
        self._value_bits = value_bits
        self._combine = combine
        self._value_mean = value_mean
        self._target_mean = target_mean
        self.default_length = default_length
        self.input_scale = input_scale

    @staticmethod
    def ranges(length: int) -> dict[str, tuple[int, int]]:
        """Half-open ranges of L, I and J for nominal length T (task-definitions.md)."""
        if length < 10:
            raise ValueError(f"Invalid sequence length: {length} (marked-pair problems need T >= 10)")

        def f(x: float) -> int:
            return int(x * length / 100)

        return {"length": (f(100), f(110)), "I": (f(1), f(10)), "J": (f(10), f(50))}

    def input_mean(self, length: int | None = None) -> np.ndarray:
        # Per sequence the marker channel sums to +1 +1 -1 -1 = 0, except when I = 0 overwrites
        # the -1 at t=0 (sum +1); so its element mean is P(I = 0) * E_L[1 / L], exactly.
        r = self.ranges(length or self.default_length)
        i_lo, i_hi = r["I"]
        p_i_zero = 1.0 / (i_hi - i_lo) if i_lo == 0 else 0.0
        inv_length = float(np.mean(1.0 / np.arange(*r["length"], dtype=np.float64)))
        return np.array([self._value_mean, p_i_zero * inv_length])

    def target_mean(self, length: int | None = None) -> np.ndarray:
        return np.array([self._target_mean])

    def output_bias(self, length: int | None = None) -> np.ndarray:
        # Targets are centred with their exact mean, so the average centred output is 0.
        return np.zeros(self.n_out)

    def lengths(self, keys: MemberKeys, stream: int, index: int, length: int) -> list[int]:
        key0, key1 = keys.batch(stream, index, on_device=False)
        return [int(n) for n in np.ravel(self._length(key0, key1, length))]

    def _length(self, key0: Any, key1: Any, length: int) -> Any:
        words = counter_rng.words_at(LENGTH_POSITION, key0, key1)
        return counter_rng.integers(words, *self.ranges(length)["length"])

    def _draw(self, key0: Any, key1: Any, lengths: list[int], batch: int, length: int,
              device: torch.device, dtype: torch.dtype) -> PopulationBatch:
        r = self.ranges(length)
        T, B = max(lengths), batch
        if T * B >= LENGTH_POSITION:
            raise ValueError(f"Invalid batch size: {batch} (sequences of up to {T} steps need batch * steps < 2^31)")
        positions = _marked_pair_positions(T, B, device)
        words = counter_rng.words_at(positions, key0, key1).view(-1, positions.shape[0])
        K, n = words.shape[0], T * B
        # The length again, on the device (the host's ``lengths`` set the shape): the same integer
        # function of the same words, so the two agree without a copy either way.
        pad = (T - counter_rng.integers(words[:, n], *r["length"])).view(K, 1, 1)
        lo, hi = _pair_ranges((r["I"], r["J"]), device)
        marked = counter_rng.integers(words[:, n + 1:].view(K, B, 2), lo, hi).add_(pad).transpose(1, 2)  # (K, 2, B): I, J
        codes = words[:, :n].view(K, T, B) >> (32 - self._value_bits)
        absent = device_arange(T, device).view(1, T, 1) < pad  # (K, T, 1): padding

        mean = self.input_mean(length)
        m_zero, m_minus, m_plus = (float32_value(v - mean[1]) for v in (0.0, -1.0, 1.0))
        inputs = torch.empty(K, T, B, 3, dtype=dtype, device=device)
        value, marker, indicator = inputs.unbind(-1)
        # value - 1/2 as (2c + 1 - 2^24) / 2^25 (midpoints) or (2c - 1) / 2 (bits): integers below
        # 2^24 in magnitude, then one exact scaling.
        if self._value_bits == 1:
            value.copy_(codes).mul_(2.0).sub_(1.0).mul_(0.5)
        else:
            value.copy_(codes).mul_(2.0).add_(1.0 - 2.0 ** self._value_bits).mul_(2.0 ** -(self._value_bits + 1))
        marker.fill_(m_zero)
        marker.select(1, T - 3).fill_(m_minus)
        marker.scatter_(1, pad.expand(K, 1, B), m_minus)
        marker.scatter_(1, marked, m_plus)  # after the -1s: the +1 wins where I = 0
        indicator.fill_(1.0)
        inputs.masked_fill_(absent.unsqueeze(-1), 0.0)

        pair = codes.gather(1, marked)  # (K, 2, B): the codes at I and J
        raw = self._combine(pair[:, 0], pair[:, 1])
        targets = raw.sub_(self._target_mean).to(torch.float32).to(dtype).view(K, 1, B, 1)
        return PopulationBatch(inputs, targets, target_from=T - 1, target_fill=0.0, loss_from=T - 1,
                               error_from=T - 1, lengths=tuple(lengths))

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor | None = None) -> torch.Tensor:
        off = (outputs - targets).abs().amax(dim=-1) > REGRESSION_TOLERANCE
        if error_mask is not None:
            off &= error_mask
        return off.any(dim=-2).to(torch.float64).mean(dim=-1)
