"""The deep autoencoders of Hinton & Salakhutdinov (2006) as the paper trains them (sec. 3).

Sizes, units and losses follow task-definitions.md: every hidden layer is logistic except the
linear code layer; Curves and MNIST have logistic outputs trained with cross-entropy, Faces has
linear outputs trained with squared error (no 1/2). The reported error (Tables 1-3) is the
training squared error per case of the post-nonlinearity reconstruction.

A population of K members is one batched computation: every weight is (K, fan_in, fan_out) and a
layer is one ``baddbmm``. Member k draws its weights and minibatch order from its own seed, so it
reproduces the solo run of the same config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import ConfigError, TaskConfig
from trainables.init import dense_init
from trainables.schedules import warmup_of
from trainables.tasks.protocol import member_defaults

ENCODERS = {
    "curves": (784, 400, 200, 100, 50, 25, 6),
    "mnist": (784, 1000, 500, 250, 30),
    "faces": (625, 2000, 1000, 500, 30),
}
LOGISTIC_OUTPUT = {"curves": True, "mnist": True, "faces": False}
PAPER_BATCH_SIZE = 200
PAPER_FINAL_MOMENTUM_UPDATES = 1000  # sec. 3: mu = 0.9 for the last 1000 updates (Table 2).
PAPER_SCHEDULE = "eq5"  # sec. 3, Eq. 5
ALLOWED_INITS = ("sparse", "gaussian", "glorot", "orthogonal")
EVAL_CHUNK = 5000


def layer_sizes(task: str) -> tuple[int, ...]:
    """Encoder then mirrored decoder, e.g. curves: 784-400-200-100-50-25-6-25-50-100-200-400-784."""
    enc = ENCODERS[task]
    return enc + enc[-2::-1]


@dataclass
class AutoencoderWorkload:
    task: str
    data: torch.Tensor  # (N, D) training cases, shared by every member
    seeds: list[int]
    init: str
    init_scales: list[float]
    batch_size: int
    eval_cases: int
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        self.sizes = layer_sizes(self.task)
        self.code_layer = len(ENCODERS[self.task]) - 2  # index of the layer that outputs the code
        self.logistic_output = LOGISTIC_OUTPUT[self.task]
        self.batches_per_epoch = max(1, self.data.shape[0] // self.batch_size)
        self._epoch_cache: dict[int, torch.Tensor] = {}

    # -- parameters -----------------------------------------------------------------------
    def init_params(self) -> list[torch.Tensor]:
        """[W1, b1, ..., WL, bL], W (K, in, out), b (K, 1, out); SI biases are 0 (sec. 3.1)."""
        per_member = []
        for seed, scale in zip(self.seeds, self.init_scales):
            g = torch.Generator().manual_seed(seed)
            layers = []
            for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
                layers += [dense_init(self.init, fan_in, fan_out, scale, g), torch.zeros(1, fan_out, dtype=torch.float64)]
            per_member.append(layers)
        return [
            torch.stack([m[i] for m in per_member]).to(self.device, self.dtype).contiguous()
            for i in range(len(per_member[0]))
        ]

    def select(self, keep: list[int]) -> None:
        """Keep only the members at positions ``keep`` (the others were stopped or diverged): their
        seeds, init scales and cached minibatch orders, so later minibatches are theirs alone."""
        self.seeds = [self.seeds[i] for i in keep]
        self.init_scales = [self.init_scales[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long).to(self.device)
        self._epoch_cache = {e: order.index_select(0, idx) for e, order in self._epoch_cache.items()}

    # -- data -----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        # Stateless in the step: the order of epoch e is a function of (seed, e) alone, so a
        # resumed run needs no RNG state to see the same minibatches.
        if epoch not in self._epoch_cache:
            n = self.data.shape[0]
            orders = np.stack([np.random.default_rng([seed, 1, epoch]).permutation(n) for seed in self.seeds])
            if self.device.type == "cuda":
                # From pinned memory without waiting: the update loop never waits on the host.
                order = torch.as_tensor(orders).pin_memory().to(self.device, non_blocking=True)
            else:
                order = torch.as_tensor(orders, device=self.device)
            self._epoch_cache = {epoch: order}
        return self._epoch_cache[epoch]

    def batch(self, step: int) -> torch.Tensor:
        """(K, B): the indices of member k's training cases at update ``step``. The cases
        themselves are gathered in ``loss_and_grads_on``: a captured update (trainables/graphs.py)
        then copies K*B indices into its static input instead of K*B*D pixels."""
        epoch, i = divmod(step, self.batches_per_epoch)
        return self._epoch_order(epoch)[:, i * self.batch_size : (i + 1) * self.batch_size]

    def minibatch(self, step: int) -> torch.Tensor:
        """(K, B, D): member k's minibatch at update ``step``."""
        return self.data[self.batch(step)]

    # -- model ----------------------------------------------------------------------------
    def forward(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Output pre-activations (K, B, D) for inputs (K, B, D)."""
        if x.shape[0] == 1:
            # One member: the 2-D addmm that nn.Linear uses (a batch of one costs more in baddbmm).
            return self._layers([p[0] for p in params], x[0], torch.addmm)[None]
        return self._layers(params, x, torch.baddbmm)

    def _layers(self, params: list[torch.Tensor], h: torch.Tensor, matmul_add) -> torch.Tensor:
        n_layers = len(params) // 2
        for i in range(n_layers):
            h = matmul_add(params[2 * i + 1], h, params[2 * i])
            if i != self.code_layer and i != n_layers - 1:
                h = torch.sigmoid(h)
        return h

    def _loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.logistic_output:
            per_case = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        else:
            per_case = (out - x).pow(2).sum(-1)
        return per_case.mean(-1)

    def loss_and_grads(self, params: list[torch.Tensor], step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.loss_and_grads_on(params, self.batch(step))

    def loss_and_grads_on(self, params: list[torch.Tensor], batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss (K,) and gradients on the cases ``batch`` (K, B): what a CUDA graph captures."""
        x = self.data[batch]
        solo = x.shape[0] == 1
        # One member: differentiate with respect to the 2-D slices themselves. Slicing inside the
        # graph would make autograd scatter every gradient into a fresh zero (1, ...) tensor.
        leaves = [(p[0] if solo else p).detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            out = self._layers(leaves, x[0], torch.addmm)[None] if solo else self._layers(leaves, x, torch.baddbmm)
            loss = self._loss(out, x)
            grads = torch.autograd.grad(loss.sum(), leaves)
        return loss.detach(), [g[None] for g in grads] if solo else list(grads)

    @torch.no_grad()
    def error(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Training squared error per case (no 1/2) on the first ``eval_cases`` cases, per member."""
        K = params[0].shape[0]
        total = torch.zeros(K, dtype=torch.float64, device=self.device)
        n = min(self.eval_cases, self.data.shape[0])
        for start in range(0, n, EVAL_CHUNK):
            x = self.data[start : min(n, start + EVAL_CHUNK)].expand(K, -1, -1)
            out = self.forward(params, x)
            recon = torch.sigmoid(out) if self.logistic_output else out
            total += (recon - x).pow(2).sum(-1).sum(-1).double()
        return total / n


def training_data(cfg: TaskConfig) -> np.ndarray:
    """The (N, D) float32 training cases a run of ``cfg`` trains on, subnormal numbers set to 0.

    Why the flush: the Curves replica's Gaussian pen leaves about 4% of its pixels between 1e-45
    and 1.2e-38, subnormal in float32. On x86 CPUs that penalise subnormal operands (many Intel
    cores: a microcode assist per vector instruction that meets one) every matmul and elementwise
    op that reads the minibatch then runs several times slower, which made Curves training on such
    hosts half as fast as a loop over data without them. As intensities they are 0 to within 1e-38;
    the flush is done once, in float32, so float32 and float64 runs still see the same cases.
    """
    from trainables.data.autoencoder_files import load_autoencoder_data

    if cfg.dataset == "noise":
        data = np.random.default_rng(0).random((cfg.train_cases or 2000, ENCODERS[cfg.task][0]), dtype=np.float32)
    else:
        data = load_autoencoder_data(cfg.task, cfg.dataset, cfg.data_dir, cfg.train_cases, 0)
    data = np.asarray(data, dtype=np.float32)
    return np.where(np.abs(data) < np.finfo(np.float32).tiny, np.float32(0), data)


def build(cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> AutoencoderWorkload:
    data = training_data(cfg)
    batch = cfg.batch_size or PAPER_BATCH_SIZE
    if batch > data.shape[0]:
        raise ValueError(f"batch_size={batch} is not allowed: larger than the {data.shape[0]} training cases")
    scales = [1.0 if s is None else s for s in cfg.member_values("init_scale")]
    return AutoencoderWorkload(
        task=cfg.task,
        data=torch.as_tensor(np.ascontiguousarray(data), device=device, dtype=dtype),
        seeds=cfg.member_values("seed"),
        init=cfg.init or "sparse",
        init_scales=scales,
        batch_size=batch,
        eval_cases=cfg.eval_cases or data.shape[0],
        device=device,
        dtype=dtype,
    )


# Training cases of each data set when train_cases is not given (trainables/data/autoencoder_files.py).
FULL_TRAIN_CASES = {"curves": 20_000, "mnist": 60_000, "faces": 103_500}
NOISE_TRAIN_CASES = 2000


def memory_estimate(cfg: TaskConfig):
    """Bytes this task allocates, per member and shared (trainables/tasks/memory.py): the weights
    about six times over; for training, each layer's output and its gradient for a minibatch,
    the minibatch and the loss's per-case terms; for evaluation (one chunk of at most EVAL_CHUNK
    cases at a time, without a graph) two layers' outputs and four reconstruction-sized terms.
    Training and evaluation do not overlap, so a member needs the larger of the two. The data set
    is shared by every member (a float32 host copy besides it when it trains in float64)."""
    from trainables.tasks.memory import MemoryEstimate, Part, dtype_bytes, weight_copies

    size = dtype_bytes(cfg)
    sizes = layer_sizes(cfg.task)
    D = sizes[0]
    full = NOISE_TRAIN_CASES if cfg.dataset == "noise" else FULL_TRAIN_CASES[cfg.task]
    cases = (cfg.train_cases or full) if cfg.dataset == "noise" else min(cfg.train_cases or full, full)
    batch = cfg.batch_size or PAPER_BATCH_SIZE
    chunk = min(cfg.eval_cases or cases, cases, EVAL_CHUNK)
    weights = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    train = batch * (3 * sum(sizes) + 3 * D) * size
    evaluation = chunk * (2 * max(sizes) + 4 * D) * size
    activations = (
        Part("minibatch activations", train, ("batch_size",))
        if train >= evaluation
        else Part("evaluation activations", evaluation, ("eval_cases",))
    )
    return MemoryEstimate(
        per_member=(
            Part("weights and optimizer state", weight_copies(cfg) * weights * size, ("task", "optimizer", "dtype")),
            activations,
            Part("minibatch order", cases * 8, ("train_cases",)),
        ),
        shared=(Part("training data", cases * D * (size + (4 if size != 4 else 0)), ("train_cases", "dataset")),),
    )


def validate(cfg: TaskConfig) -> None:
    """What an autoencoder refuses before any work: an RNN-only init, and a replica of a data set
    that has none (only Curves is procedural)."""
    if cfg.init is not None and cfg.init not in ALLOWED_INITS:
        raise ConfigError(f"init={cfg.init!r} is not allowed for task {cfg.task!r}: allowed {ALLOWED_INITS}")
    if cfg.dataset == "replica" and cfg.task != "curves":
        from trainables.data.autoencoder_files import KNOWN_FILES, TASK_FILES

        name = TASK_FILES[cfg.task]
        raise ConfigError(
            f"dataset='replica' is not allowed for task {cfg.task!r}: only curves has a procedural replica; "
            f"use dataset='original' with {name} in data_dir (from {KNOWN_FILES[name].url})"
        )


def final_phase_updates(updates: int) -> int:
    """Sec. 3: the last 1000 updates at mu <= 0.9, shortened to a tenth of a run shorter than 10,000."""
    return min(PAPER_FINAL_MOMENTUM_UPDATES, updates // 10)


def train_cases(cfg: TaskConfig) -> int:
    """The training cases a run of ``cfg`` trains on (the data set's full training set by default)."""
    if cfg.dataset == "noise":
        return cfg.train_cases or NOISE_TRAIN_CASES
    return cfg.train_cases or FULL_TRAIN_CASES[cfg.task]


def resolve(cfg: TaskConfig) -> TaskConfig:
    """``cfg`` with the autoencoder defaults filled (trainables/tasks/protocol.py, Task.resolve)."""
    cases = train_cases(cfg)
    return cfg.model_copy(update={
        "init": cfg.init or "sparse",
        "init_scale": member_defaults(cfg.init_scale, 1.0),
        "momentum_schedule": cfg.momentum_schedule or PAPER_SCHEDULE,
        "final_momentum_updates": member_defaults(cfg.final_momentum_updates, final_phase_updates(cfg.updates)),
        "batch_size": cfg.batch_size or PAPER_BATCH_SIZE,
        "train_cases": cases,
        "eval_cases": cfg.eval_cases or cases,
    })


@functools.lru_cache(maxsize=32)
def _bias_only_level(task: str, dataset: str, data_dir: str | None, train_cases: int | None,
                     eval_cases: int | None) -> float:
    cfg = TaskConfig(task=task, dataset=dataset, data_dir=data_dir, train_cases=train_cases, eval_cases=eval_cases)
    x = training_data(cfg)[: eval_cases or None].astype(np.float64)
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


def bias_only_error(cfg: TaskConfig) -> tuple[float, str]:
    """A model that learns its output biases only predicts the same image for every case, and
    squared error prefers the mean image: the level is the cases' total variance,
    ``mean_n ||x_n - mean(x)||^2``, on the first ``eval_cases`` training cases as ``error`` scores
    them."""
    return _bias_only_level(cfg.task, cfg.dataset, cfg.data_dir, cfg.train_cases, cfg.eval_cases), "mean image"


@dataclass(frozen=True)
class AutoencoderTask:
    """Curves, MNIST or Faces as a Task (trainables/tasks/protocol.py)."""

    name: str
    family: str = "autoencoder"
    error_name: str = "training squared error"
    default_metric: str = "error"
    # Tables 1-3 vary the learning rate, Eq. 5's mu_max and the SI scale.
    paper_params: tuple[str, ...] = ("lr", "mu_max", "init_scale")
    bias_only_prediction: str = "the mean image"
    # Table 2 (sec. 3) measures the error at the start of the final phase and at the end.
    reports_final_phase_start: bool = True

    def resolve(self, cfg: TaskConfig) -> TaskConfig:
        return resolve(cfg)

    def validate(self, cfg: TaskConfig) -> None:
        validate(cfg)

    def final_phase_updates(self, updates: int) -> int:
        return final_phase_updates(updates)

    def warmup_updates(self, cfg: TaskConfig) -> int:
        return warmup_of(cfg.momentum_schedule or PAPER_SCHEDULE)

    def memory_estimate(self, cfg: TaskConfig):
        return memory_estimate(cfg)

    def bias_only_error(self, cfg: TaskConfig) -> tuple[float, str]:
        return bias_only_error(cfg)

    def error_resolution(self, cfg: TaskConfig) -> float | None:
        return None  # a squared error: continuous

    def build(self, cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> AutoencoderWorkload:
        return build(cfg, device, dtype)
