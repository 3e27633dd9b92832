"""The long-range RNN problems of sec. 4 (Hochreiter & Schmidhuber 1997), as Table 5 uses them.

A minibatch is a pure function of a key (e.g. ``(seed, stream, index)``): the key seeds a host
RNG for the one draw that sets a shape (the length of an addition/multiplication minibatch) and a
``torch.Generator`` on the training device for everything else, so minibatches are made where
they are used, without a host round trip, and a resumed run needs no RNG state. Layouts follow
Sutskever's 2011 HF-RNN release as summarised in the task definitions ("RNN problems").

Centring. Sec. 4.1: "we found centering (mean subtraction) of both the inputs and the outputs to
be important". Every input channel and every regression target has a fixed mean subtracted. The
means are exact expectations under the generating distribution (closed forms below, no sampling),
so they depend only on the problem and the nominal length T:

- a mean is the expectation of one element of a minibatch, ``E[mean over (t, b) of x]``; where the
  length of a minibatch is random (addition, multiplication) this averages ``1 / length`` over the
  lengths, which is what a per-minibatch mean converges to.
- classification targets are class ids and are not centred; the softmax output bias carries their
  average instead (Table 4, "out-bias: average of outputs"), see ``output_bias``.

Arrays are time-major: ``(T, B, ...)``, torch tensors on the requested device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

# Sec. 4.2: "the fraction of cases where ... the error in the final output prediction exceeded 0.04".
REGRESSION_TOLERANCE = 0.04


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

    def sample(
        self,
        key: int | Sequence[int],
        batch: int,
        length: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> SequenceBatch:
        """The minibatch of ``key``: the same key gives the same minibatch on the same device.

        ``generator``: a ``torch.Generator`` for ``device`` to reuse (it is reseeded from the
        key); by default a new one. The length of a marked-pair minibatch is drawn on the host.
        """
        _check_batch(batch)
        host_seed, device_seed = np.random.SeedSequence(key).generate_state(2, dtype=np.uint64).tolist()
        device = torch.device(device)
        if generator is None:
            # CUDA draws need a CUDA generator; the CPU's serves the CPU and the meta device.
            generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
        generator.manual_seed(device_seed & (2**63 - 1))
        return self._sample(random.Random(host_seed), generator, batch, length, device)

    def _sample(self, host: random.Random, g: torch.Generator, batch: int, length: int, device: torch.device) -> SequenceBatch:
        raise NotImplementedError

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor) -> torch.Tensor:
        """The zero-one error per leading index: outputs (..., T, B, n_out), masks (..., T, B)."""
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

    Zero-one error (sec. 4.2): the fraction of sequences whose final prediction is off by more
    than 0.04.
    """

    kind: Literal["regression"] = "regression"
    n_in = 2
    n_out = 1

    def __init__(
        self,
        name: str,
        draw_values: Callable[[torch.Generator, tuple[int, int], torch.device], torch.Tensor],
        combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        value_mean: float,
        target_mean: float,
        default_length: int = 80,
        input_scale: float = 0.001,
    ) -> None:
        self.name = name
        self._draw_values = draw_values
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

    def _sample(self, host: random.Random, g: torch.Generator, batch: int, length: int, device: torch.device) -> SequenceBatch:
        r = self.ranges(length)
        steps = host.randrange(*r["length"])  # sets the shape: drawn on the host
        values = self._draw_values(g, (steps, batch), device)
        i = torch.randint(*r["I"], (1, batch), generator=g, device=device)
        j = torch.randint(*r["J"], (1, batch), generator=g, device=device)

        marker = torch.zeros(steps, batch, dtype=torch.float64, device=device)
        marker[0] = -1.0
        marker[steps - 3] = -1.0
        marker.scatter_(0, i, 1.0).scatter_(0, j, 1.0)

        mean = self.input_mean(length)
        inputs = torch.stack([values - float(mean[0]), marker - float(mean[1])], dim=-1)
        targets = torch.zeros(steps, batch, 1, dtype=torch.float32, device=device)
        targets[-1, :, 0] = self._combine(values.gather(0, i)[0], values.gather(0, j)[0]) - self._target_mean
        last_step = torch.zeros(steps, batch, dtype=torch.bool, device=device)
        last_step[-1] = True
        return SequenceBatch(
            inputs=inputs.to(torch.float32),
            targets=targets,
            loss_mask=last_step,
            error_mask=last_step.clone(),
            loss_from=steps - 1,
            error_from=steps - 1,
        )

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor) -> torch.Tensor:
        off = (outputs - targets).abs().amax(dim=-1) > REGRESSION_TOLERANCE
        return (off & error_mask).any(dim=-2).to(torch.float64).mean(dim=-1)


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

    def _sample(self, host: random.Random, g: torch.Generator, batch: int, length: int, device: torch.device) -> SequenceBatch:
        self._check_length(length)
        n = self.n_symbols
        symbols = torch.randint(0, self.alphabet, (n, batch), generator=g, device=device)

        channel = torch.full((length, batch), self.blank, dtype=torch.int64, device=device)
        channel[:n] = symbols
        channel[length - n - 1] = self.trigger
        # scatter, not one_hot: one_hot checks the class range on the host on some devices.
        inputs = torch.zeros(length, batch, self.n_in, dtype=torch.float64, device=device)
        inputs.scatter_(-1, channel.unsqueeze(-1), 1.0)
        for c, m in enumerate(self.input_mean(length).tolist()):  # Python numbers: no host-to-device copy
            inputs[..., c] -= m

        targets = torch.full((length, batch), self.blank, dtype=torch.int64, device=device)
        targets[length - n :] = symbols
        error_mask = torch.zeros(length, batch, dtype=torch.bool, device=device)
        error_mask[length - n :] = True
        return SequenceBatch(
            inputs=inputs.to(torch.float32),
            targets=targets,
            loss_mask=torch.ones(length, batch, dtype=torch.bool, device=device),
            error_mask=error_mask,
            loss_from=0,
            error_from=length - n,
        )

    def zero_one_errors(self, outputs: torch.Tensor, targets: torch.Tensor, error_mask: torch.Tensor) -> torch.Tensor:
        predicted = outputs[..., : self.alphabet].argmax(dim=-1)
        wrong = (predicted != targets) & error_mask
        return wrong.sum(dim=-2).to(torch.float64).mean(dim=-1)


def _uniform_values(g: torch.Generator, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=device, dtype=torch.float64)


def _binary_values(g: torch.Generator, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g, device=device).to(torch.float64)


def _xor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logical_xor(a != 0, b != 0).to(a.dtype)


PROBLEMS: dict[str, SequenceProblem] = {
    # E[v_I + v_J] = 1 and E[v_I * v_J] = 1/4 for independent U[0,1] values (I != J always).
    "addition": MarkedPairProblem("addition", _uniform_values, torch.add, 0.5, 1.0),
    "multiplication": MarkedPairProblem("multiplication", _uniform_values, torch.mul, 0.5, 0.25),
    # Optional extra of the same family (task-definitions.md); not in Table 5, layout unverified:
    # fair bits instead of U[0,1] values, target v_I XOR v_J, scored like addition.
    "xor": MarkedPairProblem("xor", _binary_values, _xor, 0.5, 0.5),
    "mem5": MemorizationProblem("mem5", n_symbols=5, alphabet=2, default_length=200),
    "mem20": MemorizationProblem("mem20", n_symbols=10, alphabet=5, default_length=80),
}
