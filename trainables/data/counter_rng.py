"""Counter-based random numbers: the same integers from a key on the CPU, on CUDA and on the host.

A random word is a pure function of (seed, stream, index, position), computed with integer
operations that every device does alike, so a seed gives the same minibatches bit for bit
wherever it is drawn, batch ``index`` of a stream needs no generator state (a resumed run
continues the same stream), and the draws of K members are one batched computation with the
members' keys as a tensor.

The words (all unsigned 32-bit, held in int64):

- ``mix``: Chris Wellons' ``lowbias32`` (hash-prospector), a bijection of 32-bit words:
  ``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16`` (mod 2^32).
- ``absorb(h, words)``: ``h = mix(h ^ w)`` for each word in turn.
- A seed, taken mod 2^64 as the words (low, high), gives two member words
  ``s0 = absorb(SEED_IV[0], (low, high))`` and ``s1 = absorb(SEED_IV[1], (low, high))``.
- A (stream, index) pair, index mod 2^64 as (low, high), gives two words
  ``c_i = absorb(BATCH_IV[i], (stream mod 2^32, index low, index high))``.
- The word at ``position`` (0 <= position < 2^32) of batch (stream, index) of a seed is
  ``mix(mix(position ^ s0 ^ c0) ^ s1 ^ c1)``: two rounds, so that batches of two keys overlap
  only where all 64 key bits agree.

From a word w: a uniform number ``u = (w >> 8) / 2^24`` in [0, 1) (24 bits, exact in float32 and
float64 alike) and an integer in [lo, hi) as ``lo + floor(u * (hi - lo))``, computed as
``lo + (((w >> 8) * (hi - lo)) >> 24)`` in integers. Only the four exact float operations
(+, -, *, /) and conversions are applied to them downstream, never exp/log/cos, whose last bit
differs between CPU and CUDA libraries: that is why no problem draws normals.

Why int64 and masks: torch has no unsigned 64-bit arithmetic on every device, and a product of
two 32-bit words can overflow int64. Every multiplier here is used as a signed number of at most
31 bits (``m - 2^32`` when ``m >= 2^31``, the same residue mod 2^32), so a product of a word in
[0, 2^32) stays inside int64, and ``& 0xFFFFFFFF`` of the two's-complement result is the product
mod 2^32 on every device. Right shifts only ever see non-negative words. The same functions run
on Python ints, numpy int64 arrays and torch int64 tensors: the host computes the lengths that
set a minibatch's shape with the very code the device runs.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
SEED_IV = (0x243F6A88, 0x85A308D3)  # hex digits of pi: arbitrary, fixed, documented
BATCH_IV = (0x13198A2E, 0x03707344)
_M1, _M2 = 0x7FEB352D, 0x846CA68B

Words = TypeVar("Words", int, np.ndarray, torch.Tensor)


def _signed(m: int) -> int:
    return m - (1 << 32) if m >= 1 << 31 else m


_S1, _S2 = _signed(_M1), _signed(_M2)


def mix(x: Words) -> Words:
    """lowbias32 of 32-bit words ``x`` (a Python int, a numpy int64 array or an int64 tensor).

    Tensors and arrays are worked on in place after the first operation (which copies), so the
    argument is left alone and a tensor costs ten element-wise operations."""
    x = x ^ (x >> 16)
    x *= _S1
    x &= MASK32
    x ^= x >> 15
    x *= _S2
    x &= MASK32
    x ^= x >> 16
    return x


def absorb(h: int, words: Sequence[int]) -> int:
    for w in words:
        h = mix(h ^ (w & MASK32))
    return h


def seed_words(seed: int) -> tuple[int, int]:
    """(s0, s1) of a seed, taken mod 2^64 (so -1 and 2^64 - 1 are one seed, as for torch)."""
    seed %= 1 << 64
    parts = (seed & MASK32, seed >> 32)
    return absorb(SEED_IV[0], parts), absorb(SEED_IV[1], parts)


def batch_words(stream: int, index: int) -> tuple[int, int]:
    """(c0, c1) of batch ``index`` of ``stream``."""
    index %= 1 << 64
    parts = (stream & MASK32, index & MASK32, index >> 32)
    return absorb(BATCH_IV[0], parts), absorb(BATCH_IV[1], parts)


def words_at(positions: Words, key0: Words, key1: Words) -> Words:
    """``mix(mix(position ^ key0) ^ key1)``, with key_i = s_i ^ c_i; broadcasting as the operands do."""
    x = mix(positions ^ key0)
    x ^= key1
    return mix(x)


def integers(words: Words, lo: int | Words, hi: int | Words) -> Words:
    """``lo + floor(u * (hi - lo))`` of the words' uniforms u, in integer arithmetic."""
    return lo + (((words >> 8) * (hi - lo)) >> 24)


class MemberKeys:
    """The seed words (s0, s1) of a population's members: a host copy (numpy, for the draws that set
    a shape) and a (K, 2) int64 tensor on the device, made once, so a draw copies nothing."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        self.host = np.array([seed_words(s) for s in self.seeds], dtype=np.int64).reshape(-1, 2)
        self.device = torch.device(device)
        self.tensor = torch.tensor(self.host.tolist(), dtype=torch.int64, device=self.device).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.seeds)

    def select(self, keep: Sequence[int]) -> "MemberKeys":
        return MemberKeys([self.seeds[i] for i in keep], self.device)

    def batch(self, stream: int, index: int, on_device: bool = True) -> tuple[Words, Words]:
        """(key0, key1) of batch (stream, index) per member, shaped (K, 1) for broadcasting over
        positions: device tensors (two element-wise operations, nothing copied) or host arrays."""
        c0, c1 = batch_words(stream, index)
        if on_device:
            return self.tensor[:, :1] ^ c0, self.tensor[:, 1:] ^ c1
        return self.host[:, :1] ^ c0, self.host[:, 1:] ^ c1
