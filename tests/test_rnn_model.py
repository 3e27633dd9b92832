"""The hand-written BPTT of the RNN task against autograd through torch.nn.RNN (independent)."""

import numpy as np
import pytest
import torch

from trainables.config import parse_config
from trainables.tasks.rnn import HIDDEN_UNITS, RNNWorkload


def reference_loss(workload: RNNWorkload, params, k: int, batch) -> torch.Tensor:
    """Member k's loss on its unpadded batch, through torch.nn.RNN + a linear readout."""
    W_ih, W_hh, b_h, W_ho, b_o = (p[k] for p in params)
    n_in, H = W_ih.shape
    rnn = torch.nn.RNN(n_in, H, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(W_ih.T)
        rnn.weight_hh_l0.copy_(W_hh.T)
        rnn.bias_ih_l0.copy_(b_h[0])
        rnn.bias_hh_l0.zero_()
    readout = torch.nn.Linear(H, W_ho.shape[1], dtype=torch.float64)
    with torch.no_grad():
        readout.weight.copy_(W_ho.T)
        readout.bias.copy_(b_o[0])
    x = torch.as_tensor(batch.inputs, dtype=torch.float64)
    hs, _ = rnn(x)
    out = readout(hs)
    mask = torch.as_tensor(batch.loss_mask, dtype=torch.float64)
    B = x.shape[1]
    if workload.classification:
        ce = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), torch.as_tensor(batch.targets).reshape(-1), reduction="none")
        loss = (ce.reshape(mask.shape) * mask).sum() / B
    else:
        loss = (((out - torch.as_tensor(batch.targets, dtype=torch.float64)) ** 2) * mask[..., None]).sum() / B
    grads = torch.autograd.grad(loss, [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, readout.weight, readout.bias])
    return loss.detach(), [grads[0].T, grads[1].T, grads[2][None], grads[3].T, grads[4][None]]


@pytest.mark.parametrize("task", ["addition", "mem5"])
def test_bptt_gradients_match_autograd_through_torch_nn_rnn(task):
    # Three seeds: addition minibatches then have different lengths, exercising the padding mask.
    cfg = parse_config({"task": task, "seed": [0, 1, 2], "seq_length": 30, "batch_size": 7,
                        "init_scale": 0.3, "dtype": "float64"})
    w = RNNWorkload(cfg, torch.device("cpu"), torch.float64)
    params = w.init_params()
    loss, grads = w.loss_and_grads(params, step=5)
    batch = w._sample(1, 5)
    if task == "addition":
        assert len(set(batch.lengths)) > 1, "test needs members of different lengths"
    for k in range(3):
        member = batch.member(k)
        # member k's part of the padded draw is its own minibatch, as drawn alone
        alone = w.problem.sample((k, 1, 5), 7, 30)
        for field in ("inputs", "targets", "loss_mask", "error_mask"):
            assert torch.equal(getattr(member, field), getattr(alone, field))
        ref_loss, ref_grads = reference_loss(w, params, k, member)
        assert torch.allclose(loss[k], ref_loss, rtol=1e-10)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g[k], r, rtol=1e-8, atol=1e-12)


def test_hidden_layer_has_100_tanh_units_and_table_4_scales():
    cfg = parse_config({"task": "addition", "seed": 3})
    w = RNNWorkload(cfg, torch.device("cpu"), torch.float64)
    W_ih, W_hh, b_h, W_ho, b_o = w.init_params()
    assert W_hh.shape == (1, HIDDEN_UNITS, HIDDEN_UNITS)
    assert abs(np.max(np.abs(np.linalg.eigvals(W_hh[0].numpy()))) - 1.1) < 1e-6
    assert ((W_hh[0] != 0).sum(0) == 15).all()
    assert W_ih[0].std().item() == pytest.approx(0.001, rel=0.2)
    assert W_ho[0].std().item() == pytest.approx(0.1, rel=0.2)
    assert (b_h == 0).all()
