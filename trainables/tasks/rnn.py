"""The 100-unit tanh RNN on the long-range problems (sec. 4, Table 4), with hand-written BPTT.

Why BPTT by hand: autograd records three small matmuls per time step (forward, dh and dW_hh).
Writing the backward pass out lets the weight gradients of all T steps be one large matmul
each (dW_hh = H_prev^T dA over all steps), which leaves one sequential matmul per step forward
and one backward. tests/test_rnn_model.py checks these gradients against autograd through
torch.nn.RNN with the same weights.

Population: weights carry a leading member dimension K, and every operation is batched over the
members: an update is the same fixed sequence of operations whatever K is (three per time step
forward, two backward; tests/test_op_counts.py counts them). Member k draws its own minibatches
from its own seed, all members in one draw (trainables/data/rnn_problems.py).

Padding. Addition/multiplication minibatches of different members can have different lengths:
they are left-padded to the longest, so every member's sequence ends at the last step. Every
input channel is 0 on padding, the hidden bias included: it is folded into the weights of an
indicator channel that is 1 on a member's own steps and 0 on its padding. So at a padded step the
pre-activation is a sum of exact zeros, h = tanh(0) = 0 exactly, and the hidden state stays at
h0 = 0 until the member's first own step, where the pre-activation is its input term plus exact
zeros. Backward, the gradients of the padded steps meet only zero inputs and zero hidden states,
so they add exact zeros to every weight gradient. Member k therefore computes what its solo run
computes, up to the order in which the matmuls sum (tested in float64).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import numpy as np
import torch

from trainables.config import ConfigError, TaskConfig
from trainables.data.counter_rng import MemberKeys
from trainables.data.rnn_problems import PROBLEMS
from trainables.data.sequence_batches import PopulationBatch
from trainables.init import esn_recurrent, gaussian, glorot_uniform, orthogonal
from trainables.schedules import warmup_of
from trainables.tasks.protocol import member_defaults

HIDDEN_UNITS = 100
PAPER_BATCH_SIZE = 100
HID_TO_OUT_SCALE = 0.1  # Table 4
ALLOWED_INITS = ("esn", "gaussian", "glorot", "orthogonal")
PAPER_SCHEDULE = "rnn"  # sec. 4.2: mu = 0.9 for the first 1000 updates, then mu_0
EVAL_CASES = 1000  # sequences the reported error is computed on, by default
# Evaluation sequences kept in memory for the whole run; more are drawn again at each report.
EVAL_KEPT_CASES = 1000

# tanh(a) = 1 - 2 sigmoid(-2a). Why not torch.tanh: in this CPU build it takes many times as long
# as sigmoid and cost more than the recurrent matmul. The pre-activation is held as z = -2a, the
# -2 folded into the weights (an exact scaling), so a step is sigmoid_ then one add: 1 - 2 s.
PRE_SCALE = -2.0


def recurrent_init(kind: str, n: int, radius: float, g: torch.Generator) -> torch.Tensor:
    """The hidden-to-hidden matrix; every kind is rescaled to the given spectral radius."""
    if kind == "esn":
        return esn_recurrent(n, radius, g)
    w = {"gaussian": gaussian, "glorot": glorot_uniform, "orthogonal": orthogonal, "sparse": None}[kind]
    if w is None:
        raise ValueError("init='sparse' is not allowed for RNN tasks: use 'esn' (sparse, rescaled to the spectral radius)")
    m = w(n, n, 1.0, g)
    return m * (radius / float(np.max(np.abs(np.linalg.eigvals(m.numpy())))))


class RNNWorkload:
    def __init__(self, cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> None:
        from trainables.data.rnn_problems import PROBLEMS

        self.problem = PROBLEMS[cfg.task]
        self.seeds = cfg.member_values("seed")
        self.radii = cfg.member_values("spectral_radius")
        self.in_scales = [self.problem.input_scale if s is None else s for s in cfg.member_values("init_scale")]
        self.init = cfg.init or "esn"
        self.length = cfg.seq_length or self.problem.default_length
        self.batch_size = cfg.batch_size or PAPER_BATCH_SIZE
        self.eval_cases = cfg.eval_cases or EVAL_CASES
        self.device, self.dtype = device, dtype
        self.classification = self.problem.kind == "classification"
        self.keys = MemberKeys(self.seeds, device)  # the members' seed words, on the device once
        self._eval_batches: list[PopulationBatch] | None = None
        self._workspaces: dict[str, torch.Tensor] = {}
        self._one = torch.ones(1, device=device, dtype=dtype)
        self._minus_one = torch.full((1,), -1.0, device=device, dtype=dtype)
        recurrent_init(self.init, 2, 1.0, torch.Generator().manual_seed(0))  # fail early on a bad kind

    # -- parameters -----------------------------------------------------------------------
    def init_params(self) -> list[torch.Tensor]:
        """[W_ih, W_hh, b_h, W_ho, b_o] (Table 4), each with a leading member dimension."""
        n_in, n_out, H = self.problem.n_in, self.problem.n_out, HIDDEN_UNITS
        members = []
        for seed, radius, in_scale in zip(self.seeds, self.radii, self.in_scales):
            g = torch.Generator().manual_seed(seed)
            members.append([
                gaussian(n_in, H, in_scale, g),
                recurrent_init(self.init, H, radius, g),
                torch.zeros(1, H, dtype=torch.float64),
                gaussian(H, n_out, HID_TO_OUT_SCALE, g),
                torch.as_tensor(self.problem.output_bias(self.length), dtype=torch.float64).reshape(1, n_out),
            ])
        return [torch.stack([m[i] for m in members]).to(self.device, self.dtype).contiguous() for i in range(5)]

    def select(self, keep: list[int]) -> None:
        """Keep only the members at positions ``keep`` (the others were stopped or diverged): their
        seeds, radii and input scales. The evaluation set is drawn again from the survivors' seeds
        when next needed: the same sequences, padded to the longest of theirs alone, exactly as a
        population of the survivors (and a run resumed with them) has it."""
        self.seeds = [self.seeds[i] for i in keep]
        self.radii = [self.radii[i] for i in keep]
        self.in_scales = [self.in_scales[i] for i in keep]
        self.keys = self.keys.select(keep)
        self._eval_batches = None

    # -- data -----------------------------------------------------------------------------
    def _sample(self, stream: int, index: int) -> PopulationBatch:
        # Stateless in the step: batch `index` of a stream is a function of (seed, stream, index),
        # so a resumed run needs no RNG state; all members' batches are one draw on the device.
        return self.problem.draw(self.keys, stream, index, self.batch_size, self.length, self.dtype)

    # -- model ----------------------------------------------------------------------------
    def hidden_states(self, params: list[torch.Tensor], batch: PopulationBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (K, T, B, H), written into ``out`` when given. Member-major storage makes
        the weight gradients of all steps plain views for one matmul each, with no transposed
        copies; each step works on its (K, B, H) slice."""
        W_ih, W_hh, b_h = params[:3]
        K, T, B, C = batch.inputs.shape
        H = W_hh.shape[-1]
        hs = torch.empty(K, T, B, H, device=W_hh.device, dtype=W_hh.dtype) if out is None else out
        # The input term of all steps, the bias with it (its weights on the indicator channel):
        # one matmul, written as z = -2 (x W_ih + b) in every step's slice.
        W_in = torch.cat([W_ih, b_h], dim=1).mul_(PRE_SCALE)
        torch.bmm(batch.inputs.view(K, T * B, C), W_in, out=hs.view(K, T * B, H))
        W_rec = W_hh.mul(PRE_SCALE)
        s = self._workspace("step", (K, B, H))
        steps = hs.unbind(1)
        steps[0].sigmoid_()  # h_{-1} = 0: no recurrent term
        torch.add(self._one, steps[0], alpha=-2.0, out=steps[0])
        for t in range(1, T):
            # The recurrent term added by the matmul into a contiguous buffer (baddbmm_ in place
            # on the strided slice would run as K separate matmuls), then back into the slice.
            # Element-wise operations write the (K, B, H) slice, never the contiguous buffer: on
            # the slice they loop over each member's B x H block as a solo run does, where on a
            # contiguous buffer the vectorized loop would split K B H elements differently, and
            # the last few of a member would take the scalar tail path in one run and not the other.
            torch.sigmoid(torch.baddbmm(steps[t], steps[t - 1], W_rec, out=s), out=steps[t])
            torch.add(self._one, steps[t], alpha=-2.0, out=steps[t])
        return hs

    def readout(self, params: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """Outputs (K, S, B, n_out) of the hidden states h (K, S, B, H) at the steps read."""
        W_ho, b_o = params[3:]
        K, S, B, H = h.shape
        if W_ho.shape[-1] == 1:
            # One output: a product and a sum. A matmul of this shape is a matrix-vector product,
            # which MKL computes one way for a single member and another for a batch of them, so
            # member k would round differently from its solo run.
            return torch.mul(h, W_ho.view(K, 1, 1, H)).sum(-1, keepdim=True).add_(b_o.view(K, 1, 1, 1))
        # (W_ho^T hs^T + b_o^T)^T: with few outputs, BLAS is much faster this way round than hs W_ho.
        out_t = torch.baddbmm(b_o.transpose(1, 2), W_ho.transpose(1, 2), h.reshape(K, S * B, H).transpose(1, 2))
        return out_t.transpose(1, 2).view(K, S, B, -1)

    @staticmethod
    def _from(hs: torch.Tensor, start: int) -> torch.Tensor:
        """hs at steps start..T-1: a view when every step is read (memorization's loss), else a
        contiguous copy, so that bmm sees the same layout for any K (a strided batch can take
        another kernel, and a member would then round differently from its solo run)."""
        return hs if start == 0 else hs[:, start:].contiguous()

    def _loss_and_dout(self, out: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member loss, summed over the loss steps (every step given) and averaged over
        sequences, and d loss/d out.

        Regression: squared error without 1/2 (as the Faces autoencoder). Classification: softmax
        cross-entropy. Both are the paper's losses for these problems (sec. 4.2)."""
        B = out.shape[2]
        if self.classification:
            logp = torch.log_softmax(out, dim=-1)
            index = targets.unsqueeze(-1)
            loss = logp.gather(-1, index).sum(dim=(1, 2, 3)).div_(-B)
            dout = logp.exp_().scatter_add_(-1, index, self._minus_one.expand(index.shape)).div_(B)
        else:
            diff = out - targets
            loss = diff.square().sum(dim=(1, 2, 3)).div_(B)
            dout = diff.mul_(2.0 / B)
        return loss, dout

    def batch(self, step: int) -> PopulationBatch:
        """The members' training minibatch of update ``step``, as ``loss_and_grads_on`` reads it.

        Without the members' lengths: they change from step to step, the update does not read them
        (the padding is in the inputs), and a captured update (trainables/graphs.py) is keyed by a
        minibatch's shapes and host fields."""
        return dataclasses.replace(self._sample(1, step), lengths=None)

    def scratch(self) -> list[torch.Tensor]:
        """The buffers kept from one update to the next (``_workspace``)."""
        return list(self._workspaces.values())

    def loss_and_grads(self, params: list[torch.Tensor], step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.loss_and_grads_on(params, self.batch(step))

    def loss_and_grads_on(self, params: list[torch.Tensor], batch: PopulationBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        W_ih, W_hh, b_h, W_ho, b_o = params
        K, T, B, C = batch.inputs.shape
        H = W_hh.shape[-1]
        hs = self.hidden_states(params, batch, out=self._workspace("hs", (K, T, B, H)))
        start = batch.loss_from
        S = T - start
        h_read = self._from(hs, start)
        out = self.readout(params, h_read)
        loss, dout = self._loss_and_dout(out, batch.targets[:, start - batch.target_from:])
        d_o = dout.view(K, S * B, -1)
        g_W_ho = torch.bmm(d_o.transpose(1, 2), h_read.view(K, S * B, H)).transpose(1, 2).contiguous()
        g_b_o = d_o.sum(1, keepdim=True)
        dh_out = self._workspace("dh_out", (K, S, B, H))
        torch.bmm(d_o, W_ho.transpose(1, 2), out=dh_out.view(K, S * B, H))

        # Backward through time, two operations per step: da_t = dh_t (1 - h_t^2) (tanh_backward,
        # on a slice still in cache), then dh_{t-1} = da_t W_hh^T plus the readout's gradient at
        # t-1 where it is read (one baddbmm). The weight gradients of all steps are one large
        # matmul each afterwards.
        da = self._workspace("da", (K, T, B, H))
        W_hh_T = W_hh.transpose(1, 2).contiguous()
        dh = self._workspace("dh", (K, B, H))
        h_steps, da_steps, read = hs.unbind(1), da.unbind(1), dh_out.unbind(1)
        tanh_backward = torch.ops.aten.tanh_backward.grad_input
        tanh_backward(read[T - 1 - start], h_steps[T - 1], grad_input=da_steps[T - 1])
        for t in range(T - 1, 0, -1):
            if t - 1 >= start:
                torch.baddbmm(read[t - 1 - start], da_steps[t], W_hh_T, out=dh)
            else:
                torch.bmm(da_steps[t], W_hh_T, out=dh)
            tanh_backward(dh, h_steps[t - 1], grad_input=da_steps[t - 1])
        # h_{-1} = 0 adds nothing to dW_hh, so the sum runs over t >= 1 on views of hs and da.
        g_W_hh = torch.bmm(hs[:, :-1].reshape(K, (T - 1) * B, H).transpose(1, 2), da[:, 1:].reshape(K, (T - 1) * B, H))
        # The input weights and the bias (the indicator channel's weights) in one matmul.
        g_in = torch.bmm(batch.inputs.view(K, T * B, C).transpose(1, 2), da.view(K, T * B, H))
        n_in = W_ih.shape[1]
        return loss, [g_in[:, :n_in], g_W_hh, g_in[:, n_in:], g_W_ho, g_b_o]

    def _workspace(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor of ``shape`` whose storage is kept from one update to the next (contents undefined).

        Why: the (K, T, B, H) arrays of BPTT are about 130 MB each at K = 16 and T = 200. Allocated
        afresh every update, the allocator returns them to the OS and the next update faults them
        back in page by page, which cost more than the arithmetic done on them (mem5, K = 16: about
        700 -> 500 ms per update)."""
        n = math.prod(shape)
        buf = self._workspaces.get(name)
        if buf is None or buf.numel() < n:
            buf = self._workspaces[name] = torch.empty(n, device=self.device, dtype=self.dtype)
        return buf[:n].view(shape)

    @torch.no_grad()
    def error(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Zero-one error (sec. 4.2; units in docs/trainables.md) on a fixed evaluation set per
        member, (K,) on the device: ``evaluated_sequences`` sequences, minibatches 0, 1, ... of
        the evaluation stream. The first ``EVAL_KEPT_CASES`` are kept for the run; the rest (an
        evaluation set fine enough for Table 5's smallest values has tens of thousands) are drawn
        again at each report, the same ones each time (a minibatch is a function of its seed,
        stream and index), so memory does not grow with eval_cases."""
        n = -(-self.eval_cases // self.batch_size)
        if self._eval_batches is None:
            kept = min(n, max(1, EVAL_KEPT_CASES // self.batch_size))
            self._eval_batches = [self._sample(2, i) for i in range(kept)]
        K, H = params[0].shape[0], params[1].shape[-1]
        total = torch.zeros(K, dtype=torch.float64, device=self.device)
        for i in range(n):
            batch = self._eval_batches[i] if i < len(self._eval_batches) else self._sample(2, i)
            _, T, B, _ = batch.inputs.shape
            hs = self.hidden_states(params, batch, out=self._workspace("hs", (K, T, B, H)))
            start = batch.error_from
            out = self.readout(params, self._from(hs, start))
            total += self.problem.zero_one_errors(out, batch.targets[:, start - batch.target_from:])
        return total / n


def build(cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> RNNWorkload:
    return RNNWorkload(cfg, device, dtype)


def memory_estimate(cfg: TaskConfig):
    """Bytes this task allocates per member (trainables/tasks/memory.py), with T the longest
    minibatch (addition and multiplication draw lengths up to 1.1 T) and B the minibatch size:
    the weights about six times over; BPTT's (T, B, H) arrays of every time step (hidden states,
    their gradients, the readout's gradient and a copy of the steps read), kept from one update to
    the next; the readout's outputs and loss terms; a minibatch (its inputs, targets and masks,
    and the draw's own temporaries); and the evaluation set, ceil(eval_cases / B) such minibatches,
    at most those of ``EVAL_KEPT_CASES`` sequences kept for the whole run and one more drawn at a
    time beyond them."""
    from trainables.data.rnn_problems import PROBLEMS
    from trainables.tasks.memory import MemoryEstimate, Part, dtype_bytes, weight_copies

    size = dtype_bytes(cfg)
    problem = PROBLEMS[cfg.task]
    length = cfg.seq_length or problem.default_length
    T = problem.ranges(length)["length"][1] - 1 if hasattr(problem, "ranges") else length
    B = cfg.batch_size or PAPER_BATCH_SIZE
    H, n_in, n_out = HIDDEN_UNITS, problem.n_in, problem.n_out
    weights = n_in * H + H * H + H + H * n_out + n_out
    targets = 16 if problem.kind == "classification" else n_out * (size + 4)
    batch = T * B * ((n_in + 1) * (size + 4) + targets + size + 3 + 2 * n_in * 4)
    # The kept evaluation minibatches, and one drawn again at a report when eval_cases is larger.
    all_eval = -(-(cfg.eval_cases or EVAL_CASES) // B)
    kept = min(all_eval, max(1, EVAL_KEPT_CASES // B))
    eval_batches = kept + (1 if all_eval > kept else 0)
    return MemoryEstimate(per_member=(
        Part("weights and optimizer state", weight_copies(cfg) * weights * size, ("optimizer", "dtype")),
        Part("BPTT activations", T * B * (4 * H + 6 * n_out) * size, ("batch_size", "seq_length")),
        Part("minibatch", batch, ("batch_size", "seq_length")),
        Part("evaluation set", eval_batches * batch, ("eval_cases", "seq_length")),
    ))


# Sequences drawn to estimate a problem's bias-only level (its standard error is below 0.01), on a
# key of their own, apart from every training and evaluation stream.
BIAS_ONLY_SEQUENCES = 4000
BIAS_ONLY_KEY = (0, 7, 0)


def validate(cfg: TaskConfig) -> None:
    """What an RNN problem refuses before any work: an autoencoder-only init, a data set (the
    problems are generated), and a sequence length the problem has no room in."""
    if cfg.init is not None and cfg.init not in ALLOWED_INITS:
        raise ConfigError(f"init={cfg.init!r} is not allowed for task {cfg.task!r}: allowed {ALLOWED_INITS}")
    if cfg.dataset != "replica":
        raise ConfigError(f"dataset={cfg.dataset!r} is not allowed for task {cfg.task!r}: RNN problems are generated")
    _check_sequence_length(cfg)


def _check_sequence_length(cfg: TaskConfig) -> None:
    """The problem's own rule for T (marked pairs need T >= 10; memorization room for its symbols,
    a trigger and the answers), checked before any work rather than when the first batch is drawn."""
    problem = PROBLEMS[cfg.task]
    length = cfg.seq_length or problem.default_length
    try:
        if hasattr(problem, "ranges"):
            problem.ranges(length)
        else:
            problem.target_distribution(length)
    except ValueError as exc:
        shown = re.sub(r"^Invalid sequence length: \d+ \((.*)\)$", r"\1", str(exc))
        raise ConfigError(f"seq_length={length!r} is not allowed for task {cfg.task!r}: {shown}") from None


def resolve(cfg: TaskConfig) -> TaskConfig:
    """``cfg`` with the RNN defaults filled (trainables/tasks/protocol.py, Task.resolve): Table 4's
    input scale and init, sec. 4.2's schedule, no final phase, Table 5's T."""
    problem = PROBLEMS[cfg.task]
    return cfg.model_copy(update={
        "init": cfg.init or "esn",
        "init_scale": member_defaults(cfg.init_scale, problem.input_scale),
        "momentum_schedule": cfg.momentum_schedule or PAPER_SCHEDULE,
        "final_momentum_updates": member_defaults(cfg.final_momentum_updates, 0),
        "batch_size": cfg.batch_size or PAPER_BATCH_SIZE,
        "eval_cases": cfg.eval_cases or EVAL_CASES,
        "seq_length": cfg.seq_length or problem.default_length,
    })


@functools.lru_cache(maxsize=32)
def _bias_only_level(task: str, seq_length: int | None) -> float:
    problem = PROBLEMS[task]
    length = seq_length or problem.default_length
    batch = problem.sample(BIAS_ONLY_KEY, BIAS_ONLY_SEQUENCES, length).numpy()
    bias = np.asarray(problem.output_bias(length), dtype=np.float32)
    outputs = np.broadcast_to(bias, (*batch.targets.shape[:2], problem.n_out))
    return problem.zero_one_error(torch.as_tensor(np.ascontiguousarray(outputs)), batch)


def bias_only_error(cfg: TaskConfig) -> tuple[float, str]:
    """A model that learns its output biases only predicts the problem's ``output_bias`` at every
    step: the target mean for the regression problems (addition, multiplication, xor: 0 in centred
    units), scored by the fraction of cases off by more than 0.04; the average target distribution
    for memorization (softmax), whose argmax is one fixed symbol, so n (1 - 1/alphabet) symbols of
    a sequence are wrong (Table 5's bias row)."""
    how = "average target distribution" if PROBLEMS[cfg.task].kind == "classification" else "mean output"
    return _bias_only_level(cfg.task, cfg.seq_length), how


def evaluated_sequences(cfg: TaskConfig) -> int:
    """Sequences the reported error is scored on: ``eval_cases`` rounded up to whole minibatches
    (the evaluation set is ceil(eval_cases / B) minibatches of B)."""
    batch = cfg.batch_size or PAPER_BATCH_SIZE
    return -(-(cfg.eval_cases or EVAL_CASES) // batch) * batch


def error_resolution(cfg: TaskConfig) -> float:
    """The step of a member's reported error: each sequence adds a whole count (a wrong answer,
    or a number of wrong symbols) to a sum divided by ``evaluated_sequences``, so one wrong
    symbol more or less moves the error by 1 / that number."""
    return 1.0 / evaluated_sequences(cfg)


@dataclasses.dataclass(frozen=True)
class RNNTask:
    """One of the long-range problems of sec. 4 as a Task (trainables/tasks/protocol.py)."""

    name: str
    family: str = "rnn"
    error_name: str = "zero-one error"
    default_metric: str = "error"
    # Table 5 varies the learning rate and mu_0; Table 4 sets the input scale and spectral radius.
    paper_params: tuple[str, ...] = ("lr", "mu_0", "mu_max", "init_scale", "spectral_radius")
    bias_only_prediction: str = "the target mean, or the average target distribution"
    reports_final_phase_start: bool = False  # no table of the paper compares the RNNs' phases

    def resolve(self, cfg: TaskConfig) -> TaskConfig:
        return resolve(cfg)

    def validate(self, cfg: TaskConfig) -> None:
        validate(cfg)

    def final_phase_updates(self, updates: int) -> int:
        return 0

    def warmup_updates(self, cfg: TaskConfig) -> int:
        return warmup_of(cfg.momentum_schedule or PAPER_SCHEDULE)

    def memory_estimate(self, cfg: TaskConfig):
        return memory_estimate(cfg)

    def bias_only_error(self, cfg: TaskConfig) -> tuple[float, str]:
        return bias_only_error(cfg)

    def error_resolution(self, cfg: TaskConfig) -> float | None:
        return error_resolution(cfg)

    def build(self, cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> RNNWorkload:
        return build(cfg, device, dtype)
