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

The modules: ``sequence_batches`` (the minibatch types), ``sequence_problem`` (the interface
every problem implements), ``marked_pair_problems`` (addition, multiplication, xor) and
``memorization_problems`` (mem5, mem20); this one names them (``PROBLEMS``).
"""

from __future__ import annotations

import torch

from trainables.data.marked_pair_problems import MarkedPairProblem
from trainables.data.memorization_problems import MemorizationProblem
from trainables.data.sequence_problem import SequenceProblem


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
