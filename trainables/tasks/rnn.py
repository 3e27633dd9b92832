"""The 100-unit tanh RNN on the long-range problems (sec. 4, Table 4), with hand-written BPTT.

Why BPTT by hand: autograd records three small matmuls per time step (forward, dh and dW_hh).
Writing the backward pass out lets the weight gradients of all T steps be one large matmul
each (dW_hh = H_prev^T dA over all steps), which leaves one sequential matmul per step forward
and one backward. tests/test_rnn_model.py checks these gradients against autograd through
torch.nn.RNN with the same weights.

Population: weights carry a leading member dimension K; member k samples its own minibatches from
its own seed. The addition/multiplication minibatches of different members can have different
lengths: they are left-padded to the longest and the hidden state is held at h0 = 0 through the
padding (mask m_t), which adds exact zeros to every sum, so member k computes what its solo run
computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import TaskConfig
from trainables.init import esn_recurrent, gaussian, glorot_uniform, orthogonal

HIDDEN_UNITS = 100
PAPER_BATCH_SIZE = 100
HID_TO_OUT_SCALE = 0.1  # Table 4


def _tanh_of_half_(x: torch.Tensor) -> torch.Tensor:
    """In place: ``x`` holding 2a becomes tanh(a) = 2 sigmoid(2a) - 1.

    Why not torch.tanh: in this CPU build it takes about 3x as long as sigmoid, and in the RNN's
    time step it cost as much as the matmul. The result is within 2e-7 of the exact tanh in
    float32 (torch.tanh: 3e-8); the caller folds the doubling into the matmul that produces a.
    """
    return x.sigmoid_().mul_(2.0).sub_(1.0)


@dataclass
class PaddedBatch:
    inputs: torch.Tensor  # (K, T, B, n_in)
    active: torch.Tensor | None  # (K, T, 1, 1) 1.0 where the step is real, None when no padding
    targets: torch.Tensor  # (K, T, B, n_out) float (regression) or (K, T, B) long (classification)
    loss_mask: torch.Tensor  # (K, T, B, 1) float
    error_mask: torch.Tensor  # (K, T, B) bool
    raw: list  # the members' unpadded SequenceBatch objects
    pads: list[int]
    # Every step where some member's loss (error) is read lies in [loss_from, T) ([error_from, T)):
    # known from the problem's layout, so the readout is a slice, found without a host round trip.
    loss_from: int = 0
    error_from: int = 0


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
        self.eval_cases = cfg.eval_cases or 1000
        self.device, self.dtype = device, dtype
        self.classification = self.problem.kind == "classification"
        self._eval_batches: list[PaddedBatch] | None = None
        self._workspaces: dict[str, torch.Tensor] = {}
        # CUDA draws need a CUDA generator; the CPU's serves the CPU and the meta device.
        self._generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
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
        self._eval_batches = None

    # -- data -----------------------------------------------------------------------------
    def _pad(self, batches: list) -> PaddedBatch:
        """The members' batches as (K, T, ...) tensors, shorter ones left-padded (on the device)."""
        K = len(batches)
        T = max(b.inputs.shape[0] for b in batches)
        pads = [T - b.inputs.shape[0] for b in batches]

        def stacked(name: str) -> torch.Tensor:
            parts = [getattr(b, name) for b in batches]
            if not any(pads):
                return torch.stack(parts)
            out = parts[0].new_zeros((K, T, *parts[0].shape[1:]))
            for k, (part, p) in enumerate(zip(parts, pads)):
                out[k, p:] = part
            return out

        active = None
        if any(pads):
            active = torch.ones(K, T, 1, 1, device=self.device, dtype=self.dtype)
            for k, p in enumerate(pads):
                if p:
                    active[k, :p] = 0.0
        targets = stacked("targets")
        return PaddedBatch(
            inputs=stacked("inputs").to(self.dtype),
            active=active,
            targets=targets if self.classification else targets.to(self.dtype),
            loss_mask=stacked("loss_mask").to(self.dtype)[..., None],
            error_mask=stacked("error_mask"),
            raw=batches,
            pads=pads,
            loss_from=min(p + b.loss_from for p, b in zip(pads, batches)),
            error_from=min(p + b.error_from for p, b in zip(pads, batches)),
        )

    def _sample(self, stream: int, index: int) -> PaddedBatch:
        # Stateless in the step: batch `index` of a stream is a function of (seed, stream, index),
        # so a resumed run needs no RNG state; it is drawn on the training device (a generator
        # there, reseeded per batch). Members with equal seeds share one draw.
        cache: dict[int, object] = {}
        for seed in self.seeds:
            if seed not in cache:
                cache[seed] = self.problem.sample(
                    (seed, stream, index), self.batch_size, self.length, self.device, self._generator
                )
        return self._pad([cache[s] for s in self.seeds])

    # -- model ----------------------------------------------------------------------------
    def hidden_states(self, params: list[torch.Tensor], batch: PaddedBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (K, T, B, H), written into ``out`` when given. Each step works in place on
        its (K, B, H) slice (no allocation); member-major storage makes the weight gradients of
        all steps plain views for one matmul each, with no transposed copies."""
        W_ih, W_hh, b_h = params[:3]
        K, T, B, n_in = batch.inputs.shape
        hs = torch.empty(K, T, B, W_hh.shape[-1], device=W_hh.device, dtype=W_hh.dtype) if out is None else out
        # Every slice first holds 2 a_t (twice the pre-activation), for _tanh_of_half_. The input
        # term of all steps is one matmul per member: a 2-D addmm writes its result in one pass,
        # where baddbmm first copies the broadcast bias into the output.
        x = batch.inputs.reshape(K, T * B, n_in)
        for k, pre_k in enumerate(hs.view(K, T * B, -1)):
            torch.addmm(b_h[k], x[k], W_ih[k], beta=2, alpha=2, out=pre_k)
        h, hW = None, torch.empty_like(hs[:, 0])  # h_{-1} = 0
        for t in range(T):
            h_t = hs[:, t]
            if h is not None:
                # bmm then add: baddbmm_ on a strided slice runs as K separate addmm_ calls.
                h_t.add_(torch.bmm(h, W_hh, out=hW), alpha=2)
            _tanh_of_half_(h_t)
            if batch.active is not None:
                if h is None:
                    h_t.mul_(batch.active[:, t])
                else:
                    # where, not h + m (h_t - h): that rounds h_t in its last bit where m = 1.
                    torch.where(batch.active[:, t] > 0, h_t, h, out=h_t)
            h = h_t
        return hs

    def readout(self, params: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """Outputs (K, S, B, n_out) of the hidden states h (K, S, B, H) at the steps read."""
        W_ho, b_o = params[3:]
        K, S, B, H = h.shape
        # (W_ho^T hs^T)^T: with few outputs, BLAS is much faster this way round than hs W_ho.
        h_t = h.reshape(K, S * B, H).transpose(1, 2)
        return torch.bmm(W_ho.transpose(1, 2), h_t).transpose(1, 2).add(b_o).reshape(K, S, B, -1)

    @staticmethod
    def _from(hs: torch.Tensor, start: int) -> torch.Tensor:
        """hs at steps start..T-1: a view when every step is read (memorization's loss), else a
        contiguous copy, so that bmm sees the same layout for any K (a strided batch can take
        another kernel, and a member would then round differently from its solo run)."""
        return hs if start == 0 else hs[:, start:].contiguous()

    def _loss_and_dout(self, out: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member loss, summed over the loss steps and averaged over sequences, and d loss/d out.

        Regression: squared error without 1/2 (as the Faces autoencoder). Classification: softmax
        cross-entropy. Both are the paper's losses for these problems (sec. 4.2)."""
        B = out.shape[2]
        if self.classification:
            logp = torch.log_softmax(out, dim=-1)
            onehot = torch.zeros_like(out).scatter_(-1, targets.unsqueeze(-1), 1.0)
            loss = -(logp * onehot * mask).sum(dim=(1, 2, 3)) / B
            dout = (logp.exp() - onehot) * mask / B
        else:
            diff = (out - targets) * mask
            loss = diff.pow(2).sum(dim=(1, 2, 3)) / B
            dout = 2.0 * diff / B
        return loss, dout

    def loss_and_grads(self, params: list[torch.Tensor], step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch = self._sample(1, step)
        W_ih, W_hh, b_h, W_ho, b_o = params
        K, T, B, _ = batch.inputs.shape
        H = W_hh.shape[-1]
        hs = self.hidden_states(params, batch, out=self._workspace("hs", (K, T, B, H)))
        start = batch.loss_from
        S = T - start
        h_read = self._from(hs, start)
        out = self.readout(params, h_read)
        loss, dout = self._loss_and_dout(out, batch.targets[:, start:], batch.loss_mask[:, start:])
        d_o = dout.reshape(K, S * B, -1)
        g_W_ho = torch.bmm(d_o.transpose(1, 2), h_read.reshape(K, S * B, H)).transpose(1, 2).contiguous()
        g_b_o = d_o.sum(1, keepdim=True)
        dh_out = self._workspace("dh_out", (K, S, B, H))
        torch.bmm(d_o, W_ho.transpose(1, 2), out=dh_out.view(K, S * B, H))

        # Backward through time: one matmul per step; the weight gradients of all steps are one
        # large matmul each afterwards. da_t = dh_t * (1 - h_t^2), computed per step on a slice
        # that is still in cache.
        da = self._workspace("da", (K, T, B, H))
        W_hh_T = W_hh.transpose(1, 2).contiguous()
        dh = torch.zeros_like(hs[:, 0])
        for t in range(T - 1, -1, -1):
            if t >= start:
                dh.add_(dh_out[:, t - start])
            d_t, h_t = da[:, t], hs[:, t]
            torch.mul(h_t, h_t, out=d_t)
            torch.addcmul(dh, dh, d_t, value=-1.0, out=d_t)
            if batch.active is None:
                torch.bmm(d_t, W_hh_T, out=dh)
            else:
                m = batch.active[:, t]
                d_t.mul_(m)
                torch.baddbmm(dh * (1.0 - m), d_t, W_hh_T, out=dh)
        # h_{-1} = 0 adds nothing to dW_hh, so the sum runs over t >= 1 on views of hs and da.
        g_W_hh = torch.bmm(hs[:, :-1].reshape(K, (T - 1) * B, H).transpose(1, 2), da[:, 1:].reshape(K, (T - 1) * B, H))
        da_flat = da.reshape(K, T * B, H)
        g_W_ih = torch.bmm(batch.inputs.reshape(K, T * B, -1).transpose(1, 2), da_flat)
        g_b_h = da_flat.sum(1, keepdim=True)
        return loss, [g_W_ih, g_W_hh, g_b_h, g_W_ho, g_b_o]

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
        member, (K,) on the device."""
        if self._eval_batches is None:
            n = -(-self.eval_cases // self.batch_size)
            self._eval_batches = [self._sample(2, i) for i in range(n)]
        K, H = params[0].shape[0], params[1].shape[-1]
        total = torch.zeros(K, dtype=torch.float64, device=self.device)
        for batch in self._eval_batches:
            _, T, B, _ = batch.inputs.shape
            hs = self.hidden_states(params, batch, out=self._workspace("hs", (K, T, B, H)))
            start = batch.error_from
            out = self.readout(params, self._from(hs, start))
            total += self.problem.zero_one_errors(out, batch.targets[:, start:], batch.error_mask[:, start:])
        return total / len(self._eval_batches)


def build(cfg: TaskConfig, device: torch.device, dtype: torch.dtype) -> RNNWorkload:
    return RNNWorkload(cfg, device, dtype)
