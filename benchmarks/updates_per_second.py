"""Updates per second of every task at the paper's batch sizes: fused populations of K members
against a plain PyTorch loop (nn.Sequential / nn.RNN + torch.optim.SGD) timed in the same process.

    python benchmarks/updates_per_second.py [--tasks curves addition ...] [--ks 1 4 16 64] [--quick]
    python benchmarks/updates_per_second.py --device cuda      # K = 1, 4, 16, 64, 256 on a GPU

The two are interleaved: train() runs with a reporter that, at each report, times the plain loop
for a stretch of updates before handing back. Our figure is the best interval between two reports
(the plain loop's time taken out), per update, so set-up (SI/ESN initialization, data) is not
counted; each interval holds one small evaluation, which counts against us. The plain loop's
figure is its best stretch. Alternating keeps a busy spell of this shared host from landing on one
side only. Both draw a minibatch every update. "member-updates/s" is K x updates/s; the ratio
column divides it by the plain loop's updates/s (one configuration per loop, as a
one-trial-per-process tuner runs it). MNIST and Faces use uniform noise of their input size
(dataset "noise"; the original files are not on this machine), Curves its replica, and the plain
loop trains on the same cases (``training_data``): values do not change the speed, except subnormal
numbers on CPUs that process them slowly, which the trainer's data no longer holds.

``--device cuda``: both run on the GPU (the plain loop's model, data and minibatches too), the
clock is read after ``torch.cuda.synchronize()``, and the default Ks go up to 256.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from trainables import train
from trainables.data.rnn_problems import PROBLEMS
from trainables.config import parse_config
from trainables.tasks import TASKS, task_for
from trainables.tasks.autoencoder import ENCODERS, LOGISTIC_OUTPUT, layer_sizes, training_data

# Each task says which of the paper's sections it belongs to; the plain loop it is compared with
# is that section's architecture (plain_step).
AUTOENCODERS = tuple(name for name, task in TASKS.items() if task.family == "autoencoder")
RNN_TASKS = ("addition", "multiplication", "mem5", "mem20")  # Table 5's problems
TRAIN_CASES = 4000
# Populations larger than this would not fit a K-fold copy of the weights, velocities, gradients
# and activations comfortably in 24 GiB of host memory (Faces: 7.5M weights per member), or, on a
# GPU, in 40 GiB (about 6 weight-sized tensors per member: 180 MB for Faces, 70 MB for MNIST).
MAX_K = {"cpu": {"mnist": 16, "faces": 16}, "cuda": {"mnist": 256, "faces": 128}}


def config(task: str, k: int, updates: int, device: str = "cpu") -> dict:
    cfg = {
        "task": task, "updates": updates, "report_every": updates, "optimizer": "nag",
        "lr": [1e-3] * k, "seed": list(range(k)), "final_momentum_updates": 0, "device": device,
    }
    if task in AUTOENCODERS:
        cfg.update(train_cases=TRAIN_CASES, eval_cases=200, mu_max=0.99,
                   dataset="replica" if task == "curves" else "noise")
    else:
        cfg.update(eval_cases=100, lr=[1e-4] * k, mu_0=0.9)
    return cfg


def seconds_per_update(
    task: str, k: int, ours_updates: int, plain_updates: int, intervals: int, device: str = "cpu"
) -> tuple[float, float]:
    """(plain loop, ours) seconds per update, best of ``intervals`` alternating stretches."""
    dev = torch.device(device)
    plain_step = plain_step_of(task, dev)
    for _ in range(max(2, plain_updates // 5)):  # warm-up
        plain_step()
    plain: list[float] = []
    ours: list[float] = []
    resumed_at: list[float] = []

    def clock() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # the GPU's queue drained: the time of the work, not of its launch
        return time.perf_counter()

    def reporter(report) -> None:
        now = clock()
        if resumed_at:  # the first interval holds set-up and warm-up: not counted
            ours.append((now - resumed_at[-1]) / ours_updates)
        t0 = clock()
        for _ in range(plain_updates):
            plain_step()
        plain.append((clock() - t0) / plain_updates)
        resumed_at.append(clock())

    cfg = config(task, k, ours_updates * (intervals + 1), device)
    cfg["report_every"] = ours_updates
    train(cfg, reporter)
    return min(plain), min(ours)


def plain_autoencoder_step(task: str, device: torch.device = torch.device("cpu")):
    sizes = layer_sizes(task)
    code = len(ENCODERS[task]) - 2
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i != code and i != len(sizes) - 2:
            layers.append(nn.Sigmoid())
    net = nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    # The cases ours trains on (the Curves replica, noise for MNIST and Faces), so that a difference
    # of speed is one of the code, not of the data.
    data = torch.as_tensor(training_data(parse_config(config(task, 1, 1))), device=device)
    rng = np.random.default_rng(0)
    bce = LOGISTIC_OUTPUT[task]

    def step() -> None:
        x = data[torch.as_tensor(rng.integers(0, TRAIN_CASES, 200)).to(device, non_blocking=True)]
        out = net(x)
        if bce:
            loss = nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1).mean()
        else:
            loss = (out - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def plain_rnn_step(task: str, device: torch.device = torch.device("cpu")):
    problem = PROBLEMS[task]
    rnn = nn.RNN(problem.n_in, 100, nonlinearity="tanh").to(device)
    readout = nn.Linear(100, problem.n_out).to(device)
    opt = torch.optim.SGD([*rnn.parameters(), *readout.parameters()], lr=1e-4, momentum=0.9, nesterov=True)
    generator = torch.Generator(device=device)
    index = iter(range(10**9))

    def step() -> None:
        # The same minibatches' generator as ours (made on the device, one per update).
        b = problem.sample((0, 1, next(index)), 100, problem.default_length, device, generator)
        out = readout(rnn(b.inputs)[0])
        mask = b.loss_mask.to(torch.float32)
        if problem.kind == "classification":
            ce = nn.functional.cross_entropy(out.flatten(0, 1), b.targets.flatten(), reduction="none")
            loss = (ce * mask.flatten()).sum() / 100
        else:
            loss = ((out - b.targets).pow(2) * mask[..., None]).sum() / 100
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def plain_step_of(task: str, device: torch.device = torch.device("cpu")):
    """One update of the plain PyTorch loop of the task's architecture."""
    return {"autoencoder": plain_autoencoder_step, "rnn": plain_rnn_step}[task_for(task).family](task, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=[*AUTOENCODERS, *RNN_TASKS])
    ap.add_argument("--ks", nargs="+", type=int, default=None, help="default: 1 4 16 64 (cpu), 1 4 16 64 256 (cuda)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where both ours and the plain loop run (cuda: the first visible GPU)")
    ap.add_argument("--quick", action="store_true", help="fewer updates per measurement (noisier)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to this torch build")
    ks = args.ks or ([1, 4, 16, 64, 256] if args.device == "cuda" else [1, 4, 16, 64])
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}), batch: autoencoders 200, RNN 100")
    print(f"{'task':<15}{'K':>4}{'plain upd/s':>13}{'ours upd/s':>12}{'member-upd/s':>14}{'ratio':>8}")
    for task in args.tasks:
        ae = task in AUTOENCODERS
        # Autoencoder intervals of 50 updates (a run reports every 100 by default): the evaluation
        # (200 cases) and the checkpoint taken at each report then cost under 2%.
        n = (5 if args.quick else 50) if ae else (5 if args.quick else 15)
        for k in ks:
            if k > MAX_K[args.device].get(task, 256 if args.device == "cuda" else 64):
                print(f"{task:<15}{k:>4}{'':>13}{'skipped (memory)':>26}")
                continue
            # On the CPU a K-fold population does K-fold work per update: shorter intervals. On a GPU
            # it does not, as long as the GPU is not full.
            m = n if args.device == "cuda" else max(2, n // max(1, k // 4))
            plain, ours = seconds_per_update(task, k, m, n, intervals=3 if args.quick else 4, device=args.device)
            ratio = k * plain / ours
            print(f"{task:<15}{k:>4}{1 / plain:>13.2f}{1 / ours:>12.2f}{k / ours:>14.2f}{ratio:>7.2f}x", flush=True)

if __name__ == "__main__":
    main()
