"""The long-range RNN problems of sec. 4 (Hochreiter & Schmidhuber 1997), as Table 5 uses them.

Every random number comes from the counter-based generator of ``trainables.data.counter_rng``:
the minibatch of a key (seed, stream, index) is a pure function of it, the same bit for bit on
the CPU and on CUDA, drawn where it is used (no host round trip), and a resumed run needs no RNG
state. The K members of a population draw their minibatches in one batched computation
(``draw``), left-padded to the longest; ``sample`` draws the minibatch of one key, unpadded.
Layouts follow Sutskever's 2011 HF-RNN release as summarised in the task definitions ("RNN
problems").

Where each number comes from, in batch ``(stream, index)`` of B sequences, with the positions of
``counter_rng`` (word ``w``, uniform ``u = (w >> 8) / 2^24``, integer ``lo + floor(u (hi - lo))``):

- marked pairs (addition, multiplication, xor), minibatch length L (shared by its B sequences):
  L is the integer in [f(100), f(110)) at position 2^31; the value of sequence b at step t
  (0 <= t < L) is at position ``(L - 1 - t) B + b`` (counted from the end, so a member's values
  do not depend on how far it is padded): for addition/multiplication the midpoint
  ``(c + 1/2) / 2^24`` of the 24-bit code ``c = w >> 8`` (so the mean is exactly 1/2), for xor
  the top bit of ``w``; I of sequence b is the integer in [f(1), f(10)) at position ``2^32 - 1 - 2b``, J in
  [f(10), f(50)) at ``2^32 - 2 - 2b``.
- memorization: symbol j (0 <= j < n) of sequence b is the integer in [0, alphabet) at position
  ``j B + b``.

Centring. Sec. 4.1: "we found centering (mean subtraction) of both the inputs and the outputs to
be important". Every input channel and every regression target has a fixed mean subtracted. The
means are exact expectations under the generating distribution (closed forms below, no sampling),
so they depend only on the problem and the nominal length T:

- a mean is the expectation of one element of a minibatch, ``E[mean over (t, b) of x]``; where the
  length of a minibatch is random (addition, multiplication) this averages ``1 / length`` over the
  lengths, which is what a per-minibatch mean converges to.
- classification targets are class ids and are not centred; the softmax output bias carries their
  average instead (Table 4, "out-bias: average of outputs"), see ``output_bias``.

Every centred input and target is rounded to float32 once (the values themselves are exact in
float32), so float32 and float64 runs train on the same numbers. Arrays are time-major:
``(T, B, ...)`` per sequence batch, ``(K, T, B, ...)`` per population.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from trainables.data import counter_rng
from trainables.data.counter_rng import MemberKeys

# Sec. 4.2: "the fraction of cases where ... the error in the final output prediction exceeded 0.04".
REGRESSION_TOLERANCE = 0.04
LENGTH_POSITION = 1 << 31
_TOP = (1 << 32) - 1


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
        return SequenceBatch(*(_as_numpy(getattr(self, f.name)) for f in fields(self)[:4]),
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
        targets = torch.as_tensor(_as_numpy(batch.targets))
        out = torch.as_tensor(np.array(_as_numpy(outputs))).reshape(*targets.shape[:2], -1)
        return float(self.zero_one_errors(out, targets, torch.as_tensor(_as_numpy(batch.error_mask))))

    def output_bias(self, length: int | None = None) -> np.ndarray:
        """Table 4's output bias, "average of outputs", in the model's (centred) units."""
        raise NotImplementedError

    def input_mean(self, length: int | None = None) -> np.ndarray:
        """The per-channel mean subtracted from the inputs (n_in,)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, default_length={self.default_length})"


def _as_numpy(outputs: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here: the trainer passes model outputs as is.
    if hasattr(outputs, "detach"):
        outputs = outputs.detach().cpu().numpy()
    return np.asarray(outputs)


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"Invalid batch size: {batch} (must be >= 1)")


def _float32(x: float) -> float:
    """x rounded to float32, as a Python float (exact in either dtype)."""
    return float(np.float32(x))


def _vector(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Python numbers as a tensor made on the device, one fill each: a fill's number is a kernel
    argument, where torch.tensor(values, device=...) is a copy from the host that waits on CUDA."""
    out = torch.empty(len(values), dtype=dtype, device=device)
    for i, v in enumerate(values):
        out[i] = v
    return out


@functools.lru_cache(maxsize=64)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=device)


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
    return _vector(lo, torch.int64, device), _vector(hi, torch.int64, device)


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
        absent = _arange(T, device).view(1, T, 1) < pad  # (K, T, 1): padding

        mean = self.input_mean(length)
        m_zero, m_minus, m_plus = (_float32(v - mean[1]) for v in (0.0, -1.0, 1.0))
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


@functools.lru_cache(maxsize=64)
def _memorization_layout(problem: "MemorizationProblem", length: int, device: torch.device,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the inputs at steps n..T-1, (T - n, 1, C); the centred one-hot values of a symbol step,
    where a channel is on and off, (C,); the channel ids (C,)), C = n_in + 1 with the indicator."""
    n, C = problem.n_symbols, problem.n_in + 1
    mean = problem.input_mean(length)
    on = [_float32(1.0 - m) for m in mean] + [1.0]
    off = [_float32(0.0 - m) for m in mean] + [1.0]
    rest = _vector(off, dtype, device).repeat(length - n, 1)
    rest[:, problem.blank] = on[problem.blank]
    rest[length - 2 * n - 1, problem.blank] = off[problem.blank]
    rest[length - 2 * n - 1, problem.trigger] = on[problem.trigger]
    return (rest.view(length - n, 1, C), _vector(on, dtype, device), _vector(off, dtype, device),
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
        words = counter_rng.words_at(_arange(n * B, device), key0, key1).view(-1, n * B)
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


def _sum_codes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # (a + 1/2) / 2^24 + (b + 1/2) / 2^24
    return (a + b + 1).to(torch.float64).mul_(2.0 ** -24)


def _product_codes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # (2a + 1)(2b + 1) / 2^50 < 2^50 / 2^50: exact in float64
    return ((2 * a + 1) * (2 * b + 1)).to(torch.float64).mul_(2.0 ** -50)


def _xor_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a ^ b).to(torch.float64)


PROBLEMS: dict[str, SequenceProblem] = {
    # E[v_I + v_J] = 1 and E[v_I * v_J] = 1/4 for independent values of mean 1/2 (I != J always):
    # exactly, for the midpoints of 2^24 equal cells as for U(0, 1).
    "addition": MarkedPairProblem("addition", 24, _sum_codes, 0.5, 1.0),
    "multiplication": MarkedPairProblem("multiplication", 24, _product_codes, 0.5, 0.25),
    # Optional extra of the same family (task-definitions.md); not in Table 5, layout unverified:
    # fair bits instead of U(0, 1) values, target v_I XOR v_J, scored like addition.
    "xor": MarkedPairProblem("xor", 1, _xor_bits, 0.5, 0.5),
    "mem5": MemorizationProblem("mem5", n_symbols=5, alphabet=2, default_length=200),
    "mem20": MemorizationProblem("mem20", n_symbols=10, alphabet=5, default_length=80),
}
