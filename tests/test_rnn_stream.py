"""The RNN problems' data stream: counter-based, the same on every device, drawn for all members at once.

The reference here is written from the stream's definition (docs/trainables.md, "Data") in numpy
uint64 arithmetic, where a 32 x 32-bit product is exact and masked to 32 bits: an implementation
independent of the module's int64 arithmetic with signed multipliers. Minibatches are compared
bit for bit; distributions against the problems' definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import parse_config
from trainables.data.counter_rng import MemberKeys, mix, words_at
from trainables.data.rnn_problems import PROBLEMS
from trainables.tasks.rnn import RNNWorkload

U32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------- the reference


def ref_mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 in uint64 (the product of two 32-bit words is exact there)."""
    x = np.asarray(x, dtype=np.uint64) & U32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & U32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & U32
    x ^= x >> np.uint64(16)
    return x


def ref_absorb(h: int, words: list[int]) -> np.uint64:
    h = np.uint64(h)
    for w in words:
        h = ref_mix(np.array([h ^ np.uint64(w)]))[0]
    return h


def ref_keys(seed: int, stream: int, index: int) -> tuple[np.uint64, np.uint64]:
    s = seed % 2**64
    seed_parts = [s % 2**32, s // 2**32]
    i = index % 2**64
    batch_parts = [stream % 2**32, i % 2**32, i // 2**32]
    s0, s1 = ref_absorb(0x243F6A88, seed_parts), ref_absorb(0x85A308D3, seed_parts)
    c0, c1 = ref_absorb(0x13198A2E, batch_parts), ref_absorb(0x03707344, batch_parts)
    return s0 ^ c0, s1 ^ c1


def ref_words(seed: int, stream: int, index: int, positions) -> np.ndarray:
    k0, k1 = ref_keys(seed, stream, index)
    return ref_mix(ref_mix(np.asarray(positions, dtype=np.uint64) ^ k0) ^ k1)


def ref_int(words: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """lo + floor(u (hi - lo)) with u = (w >> 8) / 2^24, in floating point (exact at these sizes)."""
    u = (words >> np.uint64(8)).astype(np.float64) / 2**24
    return lo + np.floor(u * (hi - lo)).astype(np.int64)


def ref_marked_pair(name: str, seed: int, stream: int, index: int, B: int, T: int):
    """(inputs, last-step target) of a marked-pair minibatch, from the definition."""
    f = lambda x: int(x * T / 100)  # noqa: E731
    L = int(ref_int(ref_words(seed, stream, index, [2**31]), f(100), f(110))[0])
    t, b = np.arange(L)[:, None], np.arange(B)[None, :]
    w = ref_words(seed, stream, index, (L - 1 - t) * B + b)
    if name == "xor":
        values = (w >> np.uint64(31)).astype(np.float64)
    else:
        values = ((w >> np.uint64(8)).astype(np.float64) + 0.5) / 2**24
    I = ref_int(ref_words(seed, stream, index, 2**32 - 1 - 2 * np.arange(B)), f(1), f(10))
    J = ref_int(ref_words(seed, stream, index, 2**32 - 2 - 2 * np.arange(B)), f(10), f(50))
    marker = np.zeros((L, B))
    marker[0] = marker[L - 3] = -1.0
    marker[I, np.arange(B)] = 1.0
    marker[J, np.arange(B)] = 1.0
    # The marker's mean: P(I = 0) E[1/L] (a -1 replaced by +1 where I = 0), from the definition.
    p_zero = 1.0 / (f(10) - f(1)) if f(1) == 0 else 0.0
    marker_mean = p_zero * np.mean([1.0 / n for n in range(f(100), f(110))])
    inputs = np.stack([values - 0.5, marker - marker_mean], axis=-1).astype(np.float32)
    vi, vj = values[I, np.arange(B)], values[J, np.arange(B)]
    target = {"addition": vi + vj - 1.0, "multiplication": vi * vj - 0.25,
              "xor": np.logical_xor(vi, vj) - 0.5}[name].astype(np.float32)
    return inputs, target


def ref_memorization(name: str, seed: int, stream: int, index: int, B: int, T: int):
    n, alphabet = {"mem5": (5, 2), "mem20": (10, 5)}[name]
    j, b = np.arange(n)[:, None], np.arange(B)[None, :]
    symbols = ref_int(ref_words(seed, stream, index, j * B + b), 0, alphabet)
    code = np.full((T, B), alphabet)
    code[:n] = symbols
    code[T - n - 1] = alphabet + 1
    onehot = np.eye(alphabet + 2)[code]
    mean = np.full(alphabet + 2, n / (alphabet * T))
    mean[alphabet], mean[alphabet + 1] = (T - n - 1) / T, 1.0 / T
    targets = np.full((T, B), alphabet)
    targets[T - n:] = symbols
    return (onehot - mean).astype(np.float32), targets


# --------------------------------------------------------------------------- bit for bit


def test_the_hash_agrees_with_the_uint64_reference_on_hosts_and_tensors():
    x = np.array([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF], dtype=np.uint64)
    expected = ref_mix(x)
    assert [mix(int(v)) for v in x] == expected.tolist()  # Python ints (host lengths)
    assert mix(x.astype(np.int64)).tolist() == expected.tolist()  # numpy int64
    assert mix(torch.tensor(x.astype(np.int64))).tolist() == expected.tolist()  # torch int64
    seeds = [0, 1, -1, 2**63 - 1, 12345678901234]
    keys = MemberKeys(seeds)
    positions = torch.tensor([0, 1, 999, 2**31, 2**32 - 1], dtype=torch.int64)
    for stream, index in [(1, 0), (2, 7), (1, 2**40 + 3)]:
        k0, k1 = keys.batch(stream, index)
        got = words_at(positions, k0, k1)
        for row, seed in zip(got.tolist(), seeds):
            assert row == ref_words(seed, stream, index, positions.numpy()).tolist()


@pytest.mark.parametrize("name", ["addition", "multiplication", "xor"])
@pytest.mark.parametrize("key, B, T", [((0, 1, 0), 7, 80), ((5, 2, 123), 3, 30), ((-3, 1, 2**33 + 1), 4, 200)])
def test_marked_pair_minibatch_is_the_definitions_bit_for_bit(name, key, B, T):
    inputs, target = ref_marked_pair(name, *key, B, T)
    batch = PROBLEMS[name].sample(key, B, T).numpy()
    np.testing.assert_array_equal(batch.inputs, inputs)
    np.testing.assert_array_equal(batch.targets[-1, :, 0], target)
    assert batch.targets.shape == (inputs.shape[0], B, 1) and not batch.targets[:-1].any()


@pytest.mark.parametrize("name", ["mem5", "mem20"])
@pytest.mark.parametrize("key, B", [((0, 1, 0), 7), ((9, 2, 4), 3)])
def test_memorization_minibatch_is_the_definitions_bit_for_bit(name, key, B):
    T = PROBLEMS[name].default_length
    inputs, targets = ref_memorization(name, *key, B, T)
    batch = PROBLEMS[name].sample(key, B, T).numpy()
    np.testing.assert_array_equal(batch.inputs, inputs)
    np.testing.assert_array_equal(batch.targets, targets)


@pytest.mark.parametrize("name", ["addition", "multiplication", "mem5"])
def test_population_draw_is_each_members_own_minibatch_padded_on_the_left(name):
    problem = PROBLEMS[name]
    T, B = (80, 6) if name != "mem5" else (30, 6)
    seeds = [4, 0, 17, 4, 123456]
    keys = MemberKeys(seeds)
    lengths = problem.lengths(keys, 1, 9, T)
    if name != "mem5":
        assert len(set(lengths)) > 1, "test needs members of different lengths"
    for dtype in (torch.float32, torch.float64):
        pop = problem.draw(keys, 1, 9, B, T, dtype)
        assert pop.inputs.dtype == dtype and pop.lengths == tuple(lengths) and pop.steps == max(lengths)
        for k, seed in enumerate(seeds):
            alone = problem.sample((seed, 1, 9), B, T)
            member = pop.member(k)
            for field in ("inputs", "targets", "loss_mask", "error_mask"):
                assert torch.equal(getattr(member, field), getattr(alone, field)), (k, field)
            pad = pop.steps - lengths[k]
            assert not pop.inputs[k, :pad].any()  # padding: every channel 0, the indicator too
            assert (pop.inputs[k, pad:, :, -1] == 1).all()
    # Members that leave keep their stream: the survivors' draw is theirs, as before.
    kept = problem.draw(keys.select([2, 0]), 1, 9, B, T)
    for j, k in enumerate([2, 0]):
        assert torch.equal(kept.member(j).inputs, pop.member(k).inputs.to(torch.float32))


def test_host_lengths_are_the_devices():
    # The host computes each member's length (it sets the shape) with the code the device runs;
    # the device's own copy sets the padding. A disagreement would shift every marker.
    problem = PROBLEMS["addition"]
    seeds = list(range(40))
    keys = MemberKeys(seeds)
    for index in range(5):
        pop = problem.draw(keys, 1, index, 2, 80)
        for k, length in enumerate(pop.lengths):
            present = pop.inputs[k, :, 0, -1]
            assert int(present.sum()) == length and present[-length:].all()


def test_workload_trains_on_the_stream_and_select_keeps_it():
    cfg = parse_config({"task": "addition", "seed": [3, 8, 1], "batch_size": 4, "eval_cases": 8,
                        "seq_length": 40, "dtype": "float64"})
    w = RNNWorkload(cfg, torch.device("cpu"), torch.float64)
    batch = w._sample(1, 17)
    for k, seed in enumerate([3, 8, 1]):
        np.testing.assert_array_equal(batch.member(k).numpy().inputs, ref_marked_pair("addition", seed, 1, 17, 4, 40)[0])
    w.select([2, 0])
    after = w._sample(1, 17)
    for j, seed in enumerate([1, 3]):
        np.testing.assert_array_equal(after.member(j).numpy().inputs, ref_marked_pair("addition", seed, 1, 17, 4, 40)[0])


# --------------------------------------------------------------------------- distributions


def test_marked_pair_distributions_follow_the_definition():
    problem, T, B = PROBLEMS["addition"], 80, 100
    keys = MemberKeys(list(range(50)))
    lengths = np.array([problem.lengths(keys, 1, i, T) for i in range(40)]).ravel()  # 2000 draws
    counts = np.bincount(lengths - 80, minlength=8)
    assert len(counts) == 8 and counts.min() > 250 - 4 * np.sqrt(250 * 7 / 8)  # L in [80, 88), uniform
    values, i_s, j_s = [], [], []
    for index in range(10):
        b = problem.sample((index, 1, index), B, T).numpy()
        values.append(b.inputs[..., 0].ravel() + 0.5)
        markers = np.rint(b.inputs[..., 1]).astype(int)
        for col in range(B):
            i, j = np.flatnonzero(markers[:, col] == 1)
            i_s.append(i), j_s.append(j)
    v = np.concatenate(values)
    assert 0.0 < v.min() and v.max() < 1.0
    n = len(v)
    assert abs(v.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n) and abs(v.var() - 1 / 12) < 0.005
    assert np.histogram(v, bins=10, range=(0, 1))[0].min() > n / 10 * 0.9
    assert set(i_s) == set(range(0, 8)) and set(j_s) == set(range(8, 40))  # [f(1), f(10)), [f(10), f(50))
    assert abs(np.mean(i_s) - 3.5) < 0.3 and abs(np.mean(j_s) - 23.5) < 1.5


def test_memorization_symbols_are_uniform_and_independent_of_position():
    problem = PROBLEMS["mem20"]
    keys = MemberKeys(list(range(20)))
    symbols = np.concatenate([problem.draw(keys, 1, i, 50, 80).targets[:, -10:].numpy().ravel() for i in range(5)])
    counts = np.bincount(symbols, minlength=5)
    assert len(counts) == 5 and counts.min() > len(symbols) / 5 * 0.95
    pairs = symbols.reshape(-1, 2)  # neighbouring positions: no dependence
    joint = np.bincount(pairs[:, 0] * 5 + pairs[:, 1], minlength=25)
    assert joint.min() > len(pairs) / 25 * 0.85


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_cpus_minibatches_and_trains_to_rounding():
    from trainables import train

    for name in ("addition", "multiplication", "mem5"):
        keys = MemberKeys([0, 7, 11])
        on_cpu = PROBLEMS[name].draw(keys, 1, 3, 20, 30, torch.float64)
        on_gpu = PROBLEMS[name].draw(MemberKeys([0, 7, 11], "cuda"), 1, 3, 20, 30, torch.float64)
        assert torch.equal(on_cpu.inputs, on_gpu.inputs.cpu()) and torch.equal(on_cpu.targets, on_gpu.targets.cpu())
    cfg = {"task": "addition", "seed": [0, 7], "lr": [1e-3, 3e-3], "seq_length": 30, "batch_size": 10,
           "eval_cases": 20, "updates": 40, "report_every": 20, "dtype": "float64"}
    cpu, gpu = train({**cfg, "device": "cpu"}), train({**cfg, "device": "cuda"})
    for a, b in zip(cpu, gpu):
        assert a.loss == pytest.approx(b.loss, rel=1e-9) and a.error == pytest.approx(b.error, abs=1e-12)
