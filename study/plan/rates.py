"""Measured training rates, for `study plan`'s expected wall times (member-updates per second).

Each figure is a measurement of this project's trainables, with where it came from; a task or K
not measured is derived from the nearest measured one, as each function below says. They are
rough: a host's load moves them by tens of percent (docs/benchmarks.md), and a study adds its
evaluations at reports and the driver's bookkeeping.
"""

from __future__ import annotations

import math

# CPU: docs/benchmarks.md, "Figures (2026-11-23, this development machine: 2 vCPUs, torch 2.13.0+cpu,
# 2 threads)": member-updates/s by K, at the paper's minibatch (autoencoders 200, RNN 100) and
# Table 5's T (80; mem5 200). One trial on a 2-vCPU machine.
CPU_SOURCE = "docs/benchmarks.md, figures of 2026-11-23 (2 vCPUs, one trial)"
CPU = {
    "curves": {1: 89.3, 4: 126.7, 16: 127.7, 64: 88.3},
    "mnist": {1: 35.2, 4: 42.2, 16: 36.3},
    "faces": {1: 14.5, 4: 13.6, 16: 10.9},
    "addition": {1: 45.0, 4: 100.8, 16: 113.0, 64: 114.5},
    "multiplication": {1: 64.1, 4: 96.5, 16: 119.1, 64: 108.2},
    "mem5": {1: 27.6, 4: 44.3, 16: 42.8, 64: 36.4},
    "mem20": {1: 54.9, 4: 90.9, 16: 95.3, 64: 85.0},
}
# GPU: issue #19, one NVIDIA H200 with torch 2.11 (benchmarks/updates_per_second.py --device cuda).
GPU_SOURCE = "issue #19: one NVIDIA H200, torch 2.11, benchmarks/updates_per_second.py --device cuda"
GPU_NAME = "NVIDIA H200"
GPU_MEMORY = 141 * 10**9  # the H200's 141 GB: what `study plan` assumes for a GPU it cannot see
GPU = {
    "addition": {1: 86.0, 256: 2600.0},
    "mem5": {64: 1420.0},
    "curves": {256: 18_400.0},
    "mnist": {256: 7250.0},
}
# Tasks never measured take a measured task's figures: the same model at the same T (xor is
# addition's network; multiplication and mem20 run T = 80 as addition does), or on the GPU Faces
# as MNIST slowed by its weights (7.5 M against 2.8 M per member: matmul-bound at K = 256).
STAND_IN = {"xor": "addition", "multiplication": "addition", "mem20": "addition"}
CPU_STAND_IN = {"xor": "addition"}
GPU_FACES_FROM_MNIST = 2.8 / 7.5
# The work the rates were measured at: minibatch and T (RNN problems).
MEASURED_BATCH = {"autoencoder": 200, "rnn": 100}
MEASURED_LENGTH = {"addition": 80, "multiplication": 80, "xor": 80, "mem20": 80, "mem5": 200}
# Below its smallest measured K, a task measured at one K only follows addition's GPU curve
# (86 -> 2,600 member-updates/s from K = 1 to 256: K**0.615), the only one measured at two.
GPU_SLOPE = math.log(2600.0 / 86.0) / math.log(256.0)


def _interpolate(points: dict[int, float], K: int, slope_below: float = 1.0) -> float:
    """Member-updates/s at K: linear in log K and log rate between measured K; flat above the
    largest (the device is busy); below the smallest, falling as K**slope_below."""
    ks = sorted(points)
    if K >= ks[-1]:
        return points[ks[-1]]
    if K <= ks[0]:
        return points[ks[0]] * (K / ks[0]) ** slope_below
    for a, b in zip(ks, ks[1:]):
        if a <= K <= b:
            w = math.log(K / a) / math.log(b / a)
            return math.exp((1 - w) * math.log(points[a]) + w * math.log(points[b]))
    raise AssertionError("unreachable")


def member_updates_per_s(task: str, family: str, K: int, device: str, batch_size: int | None,
                         seq_length: int | None) -> float:
    """Expected member-updates per second of a population of K on ``device`` ("cpu" or "gpu").

    Scaled from the measured work: on the CPU by minibatch x T (the arithmetic), on the GPU by
    T alone for the RNN problems (launch-bound: kernels per update grow with T, not B) and by the
    minibatch for the autoencoders (busy at K = 256)."""
    K = max(1, K)
    if device == "gpu":
        if task == "faces":
            rate = _interpolate(GPU["mnist"], K, GPU_SLOPE) * GPU_FACES_FROM_MNIST
        else:
            rate = _interpolate(GPU[STAND_IN.get(task, task)], K, GPU_SLOPE)
    else:
        rate = _interpolate(CPU[CPU_STAND_IN.get(task, task)], K)
    batch = batch_size or MEASURED_BATCH[family]
    if family == "rnn":
        T = seq_length or MEASURED_LENGTH[task]
        rate *= MEASURED_LENGTH[task] / T
        if device == "cpu":
            rate *= MEASURED_BATCH["rnn"] / batch
    else:
        rate *= MEASURED_BATCH["autoencoder"] / batch
    return rate
