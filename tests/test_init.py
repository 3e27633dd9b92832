"""Initializations against their definitions (sec. 3.1, Table 4) and independent references."""

import numpy as np
import pytest
import torch

from trainables.init import esn_recurrent, glorot_uniform, orthogonal, output_bias, sparse_init, sparse_init_tanh
from trainables.tasks.autoencoder import AutoencoderWorkload, layer_sizes


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fan_in, fan_out", [(784, 400), (25, 6), (6, 25), (2000, 1000)])
def test_sparse_init_gives_exactly_15_nonzero_incoming_weights_per_unit(fan_in, fan_out):
    w = sparse_init(fan_in, fan_out, 1.0, gen())
    assert ((w != 0).sum(0) == min(15, fan_in)).all()


def test_sparse_init_weights_are_unit_gaussian_times_the_scale():
    w = sparse_init(1000, 2000, 2.0, gen())
    nz = w[w != 0].numpy()
    assert nz.size == 15 * 2000
    assert abs(nz.mean()) < 0.05 and nz.std() == pytest.approx(2.0, rel=0.03)


def test_sparse_init_tanh_variant_scales_weights_by_a_quarter_and_sets_biases_to_half():
    w, b = sparse_init_tanh(100, 50, 1.0, gen(3))
    assert torch.equal(w, 0.25 * sparse_init(100, 50, 1.0, gen(3)))
    assert (b == 0.5).all()


@pytest.mark.parametrize("radius", [0.5, 1.1, 1.5])
def test_esn_recurrent_matrix_has_the_target_spectral_radius_and_15_fan_in(radius):
    w = esn_recurrent(100, radius, gen(1)).numpy()
    assert abs(np.max(np.abs(np.linalg.eigvals(w))) - radius) < 1e-6
    assert ((w != 0).sum(0) == 15).all()


def test_glorot_uniform_stays_within_its_bound_and_fills_it():
    w = glorot_uniform(300, 200, 1.0, gen()).numpy()
    bound = np.sqrt(6 / 500)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound


def test_orthogonal_init_has_orthonormal_columns_times_the_scale():
    w = orthogonal(100, 50, 1.1, gen()).numpy()
    np.testing.assert_allclose(w.T @ w, 1.21 * np.eye(50), atol=1e-10)


def test_output_bias_is_the_mean_of_the_training_outputs():
    y = np.random.default_rng(0).normal(size=(500, 3))
    np.testing.assert_allclose(output_bias(y).numpy(), y.mean(0))


def test_autoencoder_population_member_gets_exactly_its_solo_weights_and_paper_architecture():
    data = torch.rand(50, 784)
    kw = dict(task="curves", data=data, init="sparse", batch_size=10, eval_cases=50,
              device=torch.device("cpu"), dtype=torch.float64)
    pop = AutoencoderWorkload(seeds=[4, 5], init_scales=[1.0, 2.0], **kw).init_params()
    solo = AutoencoderWorkload(seeds=[5], init_scales=[2.0], **kw).init_params()
    assert all(torch.equal(p[1], s[0]) for p, s in zip(pop, solo))
    assert layer_sizes("curves") == (784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784)
    assert [p.shape[1:] for p in pop[0::2]] == [(a, b) for a, b in zip(layer_sizes("curves")[:-1], layer_sizes("curves")[1:])]
    assert all((b == 0).all() for b in pop[1::2])
