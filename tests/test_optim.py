"""Population optimizers against independent references: torch.optim, numpy loops, Theorem 2.1."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainables.optim import (
    OPTIMIZERS,
    MixedMomentum,
    make_optimizer,
    momentum_step,
    polyak_init,
    polyak_update,
)

DTYPE = torch.float64
SHAPES = [(3, 4), (5,)]  # per-member shapes: two tensors of different rank, n = 17 in all
N = sum(int(np.prod(s)) for s in SHAPES)
LRS = [0.02, 0.1, 0.3]
MUS = [0.5, 0.9, 0.99]
STEPS = 50


def _quadratic(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """A random SPD A (eigenvalues in [0.1, 2]) and b for q(x) = x'Ax/2 + b'x."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    lam = torch.linspace(0.1, 2.0, n, dtype=DTYPE)
    return q @ torch.diag(lam) @ q.T, torch.randn(n, generator=g, dtype=DTYPE)


A, B = _quadratic()


def _grad(points: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradient A x + b of every member's quadratic, x = the member's tensors flattened."""
    k = points[0].shape[0]
    x = torch.cat([p.reshape(k, -1) for p in points], dim=1)
    # One matrix-vector product per member on a fresh copy, so a member's gradient does not depend
    # on K (a batched or misaligned BLAS call may sum in another order) and population and solo
    # runs can be compared bit for bit.
    g = torch.stack([A @ x[m].clone() + B for m in range(k)])
    return [c.reshape(p.shape) for c, p in zip(torch.split(g, [int(np.prod(s)) for s in SHAPES], dim=1), points)]


def _init_params(k: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, *s, generator=g, dtype=DTYPE) for s in SHAPES]


def _run_population(name: str, lrs, mus, steps: int = STEPS, **kw) -> list[list[torch.Tensor]]:
    """theta after each update, as a list (per step) of lists (per tensor) of (K, ...) tensors."""
    params = _init_params(len(lrs))
    opt = make_optimizer(name, params, torch.tensor(lrs, dtype=DTYPE), **kw)
    opt.mu = torch.tensor(mus, dtype=DTYPE)
    history = []
    for _ in range(steps):
        opt.step(_grad(opt.gradient_point()))
        history.append([p.clone() for p in params])
    return history


def _run_torch(make_torch_opt, k: int, steps: int = STEPS) -> list[list[torch.Tensor]]:
    """A torch.optim optimizer on member k's slice alone."""
    params = [p[k].clone().requires_grad_(True) for p in _init_params(len(LRS))]
    opt = make_torch_opt(params)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.no_grad():
            grads = _grad([p.detach().unsqueeze(0) for p in params])
        for p, g in zip(params, grads):
            p.grad = g[0].clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


def _assert_member_matches(ours, theirs, k: int, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    for step, (mine, ref) in enumerate(zip(ours, theirs)):
        for p, r in zip(mine, ref):
            assert torch.allclose(p[k], r, rtol=rtol, atol=atol), f"member {k} differs at update {step + 1}"


# --- CM and NAG (Eqs. 1-4) ---------------------------------------------------------------


def test_cm_matches_torch_sgd_momentum() -> None:
    ours = _run_population("cm", LRS, MUS)
    for k, (lr, mu) in enumerate(zip(LRS, MUS)):
        theirs = _run_torch(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=mu, dampening=0), k)
        _assert_member_matches(ours, theirs, k)


def test_nag_matches_torch_sgd_nesterov_on_lookahead_point() -> None:
    params = _init_params(len(LRS))
    opt = make_optimizer("nag", params, torch.tensor(LRS, dtype=DTYPE))
    opt.mu = torch.tensor(MUS, dtype=DTYPE)
    lookahead = []
    for _ in range(STEPS):
        opt.step(_grad(opt.gradient_point()))
        lookahead.append(opt.gradient_point())  # phi = theta + mu*v
    for k, (lr, mu) in enumerate(zip(LRS, MUS)):
        theirs = _run_torch(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=mu, dampening=0, nesterov=True), k)
        _assert_member_matches(lookahead, theirs, k)


def _numpy_momentum_loop(nesterov: bool, lr_of_t, mu_of_t, steps: int) -> list[np.ndarray]:
    """Eqs. 1-2 / 3-4 literally, one member, flat vector, numpy."""
    a, b = A.numpy(), B.numpy()
    theta = np.concatenate([p[0].reshape(-1).numpy() for p in _init_params(1)])
    v = np.zeros_like(theta)
    out = []
    for t in range(steps):
        mu, lr = mu_of_t(t), lr_of_t(t)
        at = theta + mu * v if nesterov else theta
        v = mu * v - lr * (a @ at + b)
        theta = theta + v
        out.append(theta.copy())
    return out


@pytest.mark.parametrize("name", ["cm", "nag"])
def test_momentum_with_changing_mu_and_lr_follows_eqs_1_to_4_exactly(name: str) -> None:
    # mu changes every 7 updates and lr halves at update 30: Eq. 3 takes the gradient at
    # theta_t + mu_t v_t and the velocity is never rescaled by lr (unlike torch's form).
    mu_of_t = lambda t: min(1 - 1 / (2 * (t // 7 + 1)), 0.95)  # noqa: E731
    lr_of_t = lambda t: 0.2 if t < 30 else 0.1  # noqa: E731
    params = _init_params(1)
    opt = make_optimizer(name, params, torch.tensor([0.2], dtype=DTYPE))
    ours = []
    for t in range(STEPS):
        opt.mu = torch.tensor([mu_of_t(t)], dtype=DTYPE)
        opt.lr = torch.tensor([lr_of_t(t)], dtype=DTYPE)
        opt.step(_grad(opt.gradient_point()))
        ours.append(torch.cat([p[0].reshape(-1) for p in params]).numpy())
    ref = _numpy_momentum_loop(name == "nag", lr_of_t, mu_of_t, STEPS)
    np.testing.assert_allclose(np.array(ours), np.array(ref), rtol=1e-10, atol=1e-12)


def test_theorem_2_1_nag_is_cm_with_reduced_momentum_per_eigendirection() -> None:
    rng = np.random.default_rng(7)
    n = 6
    for trial in range(5):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        a = q @ np.diag(rng.uniform(0.1, 3.0, n)) @ q.T
        a = (a + a.T) / 2
        b = rng.standard_normal(n)
        lam, eigvecs = np.linalg.eigh(a)
        u = eigvecs.T  # y = U x, A = U' diag(lam) U
        c = u @ b
        k = 4
        mus = rng.uniform(0.0, 0.999, k)
        lrs = rng.uniform(0.01, 0.5, k)
        x0, v0 = rng.standard_normal((k, n)), rng.standard_normal((k, n))

        x = torch.tensor(x0)
        opt = make_optimizer("nag", [x], torch.tensor(lrs))
        opt.state["velocity"][0].copy_(torch.tensor(v0))
        opt.mu = torch.tensor(mus)
        (point,) = opt.gradient_point()
        opt.step([point @ torch.tensor(a).T + torch.tensor(b)])
        x1, v1 = x.numpy(), opt.state["velocity"][0].numpy()

        for m in range(k):
            y, vy = u @ x0[m], u @ v0[m]
            mu_eff = mus[m] * (1 - lam * lrs[m])  # Theorem 2.1: per-direction momentum
            cm_v = mu_eff * vy - lrs[m] * (lam * y + c)  # one CM step on [p]_i, Eq. 1
            cm_x = y + cm_v  # Eq. 2
            np.testing.assert_allclose(u @ x1[m], cm_x, rtol=1e-10, atol=1e-12, err_msg=f"trial {trial}")
            np.testing.assert_allclose(u @ v1[m], cm_v, rtol=1e-10, atol=1e-12, err_msg=f"trial {trial}")


def test_sgd_ignores_mu() -> None:
    params = _init_params(len(LRS))
    start = [p.clone() for p in params]
    opt = make_optimizer("sgd", params, torch.tensor(LRS, dtype=DTYPE))
    expected = [p.clone() for p in start]
    lrs = torch.tensor(LRS, dtype=DTYPE)
    for _ in range(10):
        opt.mu = torch.full((len(LRS),), 0.99, dtype=DTYPE)
        opt.step(_grad(opt.gradient_point()))
        expected = [p - lrs.reshape(-1, *[1] * (p.dim() - 1)) * g for p, g in zip(expected, _grad(expected))]
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-14)
    cm = _run_population("cm", LRS, [0.0] * len(LRS), steps=10)[-1]
    for p, c in zip(params, cm):
        assert torch.equal(p, c)


def test_momentum_step_works_for_a_single_member() -> None:
    theta, v = [torch.tensor([[1.0, 2.0]], dtype=DTYPE)], [torch.tensor([[0.5, -0.5]], dtype=DTYPE)]
    momentum_step(theta, [torch.tensor([[1.0, 1.0]], dtype=DTYPE)], v, lr=torch.tensor([0.1]), mu=torch.tensor([0.9]))
    torch.testing.assert_close(v[0], torch.tensor([[0.35, -0.55]], dtype=DTYPE))
    torch.testing.assert_close(theta[0], torch.tensor([[1.35, 1.45]], dtype=DTYPE))


# --- adaptive methods, member k against torch.optim on its slice ------------------------


def test_adagrad_matches_torch_adagrad_per_member() -> None:
    ours = _run_population("adagrad", LRS, MUS, eps=1e-8)
    for k, lr in enumerate(LRS):
        theirs = _run_torch(lambda ps: torch.optim.Adagrad(ps, lr=lr, eps=1e-8), k)
        _assert_member_matches(ours, theirs, k)


def test_rmsprop_without_momentum_matches_torch_rmsprop_per_member() -> None:
    ours = _run_population("rmsprop", LRS, [0.0] * len(LRS), rms_decay=0.95, eps=1e-8)
    for k, lr in enumerate(LRS):
        theirs = _run_torch(lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=0.95, eps=1e-8), k)
        _assert_member_matches(ours, theirs, k)


def test_rmsprop_with_momentum_matches_torch_rmsprop_momentum_per_member() -> None:
    lrs = [0.001, 0.005, 0.01]  # small: RMSprop's steps are lr-sized whatever the curvature
    ours = _run_population("rmsprop", lrs, MUS, rms_decay=0.9, eps=1e-8)
    for k, (lr, mu) in enumerate(zip(lrs, MUS)):
        theirs = _run_torch(lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=0.9, eps=1e-8, momentum=mu), k)
        _assert_member_matches(ours, theirs, k)


def test_adam_matches_torch_adam_per_member() -> None:
    ours = _run_population("adam", LRS, MUS, adam_beta1=0.8, adam_beta2=0.99, eps=1e-8)
    for k, lr in enumerate(LRS):
        theirs = _run_torch(lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.8, 0.99), eps=1e-8), k)
        _assert_member_matches(ours, theirs, k)


def test_rmsprop_nesterov_matches_numpy_loop_of_lecture_equations() -> None:
    # Lecture 6e / Goodfellow et al. Alg. 8.6, one member at a time, flat vector:
    # g = grad(theta + mu v); ms = rho ms + (1-rho) g^2; v = mu v - lr g / sqrt(ms + eps); theta += v
    lrs, rho, eps = [0.001, 0.005, 0.01], 0.9, 1e-8
    ours = _run_population("rmsprop_nesterov", lrs, MUS, rms_decay=rho, eps=eps)
    a, b = A.numpy(), B.numpy()
    for k, (lr, mu) in enumerate(zip(lrs, MUS)):
        theta = np.concatenate([p[k].reshape(-1).numpy() for p in _init_params(len(lrs))])
        v, ms = np.zeros_like(theta), np.zeros_like(theta)
        for step in range(STEPS):
            g = a @ (theta + mu * v) + b
            ms = rho * ms + (1 - rho) * g * g
            v = mu * v - lr * g / np.sqrt(ms + eps)
            theta = theta + v
            mine = torch.cat([p[k].reshape(-1) for p in ours[step]]).numpy()
            np.testing.assert_allclose(mine, theta, rtol=1e-10, atol=1e-12, err_msg=f"member {k} update {step + 1}")


# --- the shared interface, over every optimizer -----------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_population_member_equals_solo_run_bit_for_bit(name: str) -> None:
    population = _run_population(name, LRS, MUS, steps=20)[-1]
    for k, (lr, mu) in enumerate(zip(LRS, MUS)):
        params = [p[k : k + 1].clone() for p in _init_params(len(LRS))]
        opt = make_optimizer(name, params, torch.tensor([lr], dtype=DTYPE))
        opt.mu = torch.tensor([mu], dtype=DTYPE)
        for _ in range(20):
            opt.step(_grad(opt.gradient_point()))
        for p, q in zip(population, params):
            assert torch.equal(p[k : k + 1], q), f"{name}: member {k} differs from its solo run"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradient_point_returns_new_tensors(name: str) -> None:
    params = _init_params(2)
    opt = make_optimizer(name, params, torch.tensor([0.1, 0.2], dtype=DTYPE))
    opt.mu = torch.tensor([0.9, 0.5], dtype=DTYPE)
    opt.step(_grad(opt.gradient_point()))
    before = [p.clone() for p in params]
    for point in opt.gradient_point():
        point.add_(1.0)
    for p, q in zip(params, before):
        assert torch.equal(p, q)


def _run_with_schedule(opt, params, t0: int, t1: int) -> None:
    for t in range(t0, t1):
        opt.mu = torch.tensor([min(1 - 1 / (2 * (t // 5 + 1)), 0.99)] * params[0].shape[0], dtype=DTYPE)
        if t == 12:
            opt.lr = opt.lr * 0.5  # the trainer may edit lr; resume must keep the edit
        opt.step(_grad(opt.gradient_point()))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_bit_identically(name: str) -> None:
    lrs = torch.tensor([0.01, 0.05, 0.1], dtype=DTYPE)
    params = _init_params(3)
    opt = make_optimizer(name, params, lrs)
    _run_with_schedule(opt, params, 0, 15)

    buffer = io.BytesIO()
    torch.save({"params": [p.clone() for p in params], "optimizer": opt.state_dict()}, buffer)
    _run_with_schedule(opt, params, 15, 30)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_params = [p.clone() for p in saved["params"]]
    resumed = make_optimizer(name, resumed_params, torch.ones(3, dtype=DTYPE))
    resumed.load_state_dict(saved["optimizer"])
    assert torch.equal(resumed.lr, lrs * 0.5)
    _run_with_schedule(resumed, resumed_params, 15, 30)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_another_optimizer_or_hyperparameters() -> None:
    params = _init_params(2)
    lr = torch.tensor([0.1, 0.1], dtype=DTYPE)
    state = make_optimizer("adam", params, lr).state_dict()
    with pytest.raises(ValueError, match="'adam' cannot be loaded into 'nag'"):
        make_optimizer("nag", params, lr).load_state_dict(state)
    with pytest.raises(ValueError, match="hyperparameters"):
        make_optimizer("adam", params, lr, adam_beta2=0.99).load_state_dict(state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reset_members_zeroes_only_masked_members_state(name: str) -> None:
    params = _init_params(3)
    opt = make_optimizer(name, params, torch.tensor([0.01, 0.05, 0.1], dtype=DTYPE))
    opt.mu = torch.tensor(MUS, dtype=DTYPE)
    for _ in range(5):
        opt.step(_grad(opt.gradient_point()))
    before = {n: [t.clone() for t in ts] for n, ts in opt.state.items()}
    assert all(bool((t[1] != 0).any()) for ts in before.values() for t in ts if name != "sgd")
    opt.reset_members(torch.tensor([False, True, False]))
    for n, ts in opt.state.items():
        for t, b in zip(ts, before[n]):
            assert bool((t[1] == 0).all()), f"{n} of member 1 not reset"
            assert torch.equal(t[[0, 2]], b[[0, 2]]), f"{n} of members 0, 2 changed"


def test_reset_member_restarts_like_a_fresh_optimizer() -> None:
    # After a reset, member 1 continues from its current theta exactly as a new optimizer would
    # (Adam's bias correction restarts too).
    params = _init_params(3)
    lrs = torch.tensor([0.01, 0.05, 0.1], dtype=DTYPE)
    opt = make_optimizer("adam", params, lrs)
    for _ in range(5):
        opt.step(_grad(opt.gradient_point()))
    opt.reset_members(torch.tensor([False, True, False]))
    fresh_params = [p[1:2].clone() for p in params]
    fresh = make_optimizer("adam", fresh_params, lrs[1:2])
    for _ in range(5):
        opt.step(_grad(opt.gradient_point()))
        fresh.step(_grad(fresh.gradient_point()))
    for p, q in zip(params, fresh_params):
        assert torch.equal(p[1:2], q)


def test_make_optimizer_rejects_unknown_name_and_bad_lr() -> None:
    params = _init_params(3)
    with pytest.raises(ValueError, match=r"optimizer='lbfgs' is not allowed: must be one of"):
        make_optimizer("lbfgs", params, torch.ones(3))
    with pytest.raises(ValueError, match=r"lr of shape \(2,\) is not allowed"):
        make_optimizer("nag", params, torch.ones(2))
    with pytest.raises(ValueError, match=r"lr=.* is not allowed: each must be a finite number > 0"):
        make_optimizer("nag", params, torch.tensor([0.1, 0.0, 0.1]))
    with pytest.raises(ValueError, match=r"same leading member dimension"):
        make_optimizer("nag", [torch.zeros(3, 2), torch.zeros(2, 2)], torch.ones(3))
    with pytest.raises(ValueError, match=r"rms_decay=1\.0 is not allowed"):
        make_optimizer("rmsprop", params, torch.ones(3), rms_decay=1.0)


# --- Polyak averaging -------------------------------------------------------------------


def test_polyak_update_matches_torch_ema_averaged_model() -> None:
    decay = 0.95
    module = torch.nn.ParameterList([torch.nn.Parameter(p) for p in _init_params(len(LRS))])
    params = list(module)
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.update_parameters(module)  # the first call copies, as polyak_init
    averages = polyak_init(params)
    opt = make_optimizer("nag", params, torch.tensor(LRS, dtype=DTYPE))
    opt.mu = torch.tensor(MUS, dtype=DTYPE)
    for _ in range(STEPS):
        opt.step(_grad(opt.gradient_point()))
        ema.update_parameters(module)
        polyak_update(averages, params, decay)
        for a, e in zip(averages, ema.module.parameters()):
            torch.testing.assert_close(a, e.detach(), rtol=1e-12, atol=1e-14)
    # and against the formula itself, avg <- decay*avg + (1-decay)*theta
    expected = [decay * a + (1 - decay) * p.detach() for a, p in zip(averages, params)]
    polyak_update(averages, params, decay)
    torch.testing.assert_close(averages, expected, rtol=1e-12, atol=1e-14)


def test_polyak_decay_is_validated() -> None:
    with pytest.raises(ValueError, match=r"polyak_decay=1\.0 is not allowed"):
        polyak_update([torch.zeros(1)], [torch.zeros(1)], 1.0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 2])
def test_gradient_point_into_out_equals_a_fresh_point_and_reuses_the_tensors(name: str, k: int) -> None:
    params = _init_params(k)
    opt = make_optimizer(name, params, torch.tensor([0.1, 0.2][:k], dtype=DTYPE))
    opt.mu = torch.tensor([0.9, 0.5][:k], dtype=DTYPE)
    out = [torch.full_like(p, float("nan")) for p in params]
    for _ in range(3):
        opt.step(_grad(opt.gradient_point()))
        fresh = opt.gradient_point()
        written = opt.gradient_point(out)
        assert all(w is o for w, o in zip(written, out))
        for f, w in zip(fresh, written):
            assert torch.equal(f, w)
    with pytest.raises(ValueError, match="out with shapes"):
        opt.gradient_point(out[:-1])


# --- a population of SGD, CM and NAG members (MixedMomentum) ------------------------------

MIXED = ["sgd", "cm", "nag"]


def test_mixed_population_matches_torch_sgd_member_by_member() -> None:
    # Constant lr and mu. torch's iterate is theta for SGD (momentum 0) and CM, and the look-ahead
    # point theta + mu*v for Nesterov: what our gradient_point() is for each kind of member.
    params = _init_params(len(LRS))
    opt = make_optimizer(MIXED, params, torch.tensor(LRS, dtype=DTYPE))
    assert isinstance(opt, MixedMomentum)
    opt.mu = torch.tensor(MUS, dtype=DTYPE)
    points = []
    for _ in range(STEPS):
        opt.step(_grad(opt.gradient_point()))
        points.append(opt.gradient_point())
    for k, (name, lr, mu) in enumerate(zip(MIXED, LRS, MUS)):
        theirs = _run_torch(lambda ps: torch.optim.SGD(
            ps, lr=lr, momentum=0.0 if name == "sgd" else mu, dampening=0, nesterov=name == "nag"), k)
        _assert_member_matches(points, theirs, k)
    # SGD and CM members' gradient point is theta itself
    for p, q in zip(params, points[-1]):
        assert torch.equal(p[:2], q[:2])


def test_mixed_member_equals_its_own_optimizer_run_alone() -> None:
    # With changing mu and lr, which torch's form does not follow: member k against the class of
    # its own name on its slice (within float64 rounding: another K may take another kernel path).
    params = _init_params(len(MIXED))
    opt = make_optimizer(MIXED, params, torch.tensor(LRS, dtype=DTYPE))
    alone = [[p[k : k + 1].clone() for p in _init_params(len(MIXED))] for k in range(len(MIXED))]
    solos = [make_optimizer(name, ps, torch.tensor([lr], dtype=DTYPE)) for name, ps, lr in zip(MIXED, alone, LRS)]
    for t in range(30):
        mu = min(1 - 1 / (2 * (t // 5 + 1)), 0.99)
        opt.mu = torch.full((len(MIXED),), mu, dtype=DTYPE)
        if t == 12:
            opt.lr = opt.lr * 0.5
        opt.step(_grad(opt.gradient_point()))
        for k, solo in enumerate(solos):
            solo.mu = torch.tensor([mu], dtype=DTYPE)
            if t == 12:
                solo.lr = solo.lr * 0.5
            solo.step(_grad(solo.gradient_point()))
    for k, ps in enumerate(alone):
        for p, q in zip(params, ps):
            torch.testing.assert_close(p[k : k + 1], q, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state["velocity"][0][k : k + 1], solos[k].state["velocity"][0], rtol=1e-12, atol=1e-14)


def test_one_name_for_every_member_is_that_optimizers_own_class() -> None:
    for name in sorted(OPTIMIZERS):
        opt = make_optimizer([name] * 3, _init_params(3), torch.tensor(LRS, dtype=DTYPE))
        assert type(opt) is OPTIMIZERS[name]
    with pytest.raises(ValueError, match=r"optimizer=\['nag', 'adam'\] is not allowed: .*'cm', 'nag', 'sgd'"):
        make_optimizer(["nag", "adam"], _init_params(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"members=.* is not allowed"):
        MixedMomentum(_init_params(3), torch.ones(3), members=["nag", "cm"])


def test_mixed_state_dict_round_trip_continues_bit_identically_and_checks_the_members() -> None:
    params = _init_params(3)
    opt = make_optimizer(MIXED, params, torch.tensor([0.01, 0.05, 0.1], dtype=DTYPE))
    _run_with_schedule(opt, params, 0, 15)
    saved = {"params": [p.clone() for p in params], "optimizer": opt.state_dict()}
    _run_with_schedule(opt, params, 15, 30)
    resumed_params = [p.clone() for p in saved["params"]]
    resumed = make_optimizer(MIXED, resumed_params, torch.ones(3, dtype=DTYPE))
    resumed.load_state_dict(saved["optimizer"])
    _run_with_schedule(resumed, resumed_params, 15, 30)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="hyperparameters"):
        make_optimizer(["nag", "cm", "sgd"], _init_params(3), torch.ones(3)).load_state_dict(saved["optimizer"])


# --- members leaving the population (select) ------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(OPTIMIZERS), "mixed"])
def test_select_keeps_the_chosen_members_state_and_they_continue_as_before(name: str) -> None:
    # Members 2 and 0 (in that order) go on after member 1 leaves, exactly as in a run without
    # the selection (float64 rounding: the elementwise kernels of K = 2 and K = 3 may differ).
    names = MIXED if name == "mixed" else name
    lrs = torch.tensor([0.01, 0.05, 0.1], dtype=DTYPE)
    full_params, params = _init_params(3), _init_params(3)
    full, opt = make_optimizer(names, full_params, lrs), make_optimizer(names, params, lrs)
    _run_with_schedule(full, full_params, 0, 20)
    _run_with_schedule(opt, params, 0, 10)
    before = {n: [t.clone() for t in ts] for n, ts in opt.state.items()}
    opt.select([2, 0])
    assert opt.population_size == 2 and opt.lr.shape == opt.mu.shape == (2,)
    assert [tuple(p.shape) for p in opt.params] == [(2, *s) for s in SHAPES]
    for n, ts in opt.state.items():  # every state list, Adam's (K,) step counts included
        for t, b in zip(ts, before[n]):
            assert torch.equal(t, b[[2, 0]])
    _run_with_schedule(opt, opt.params, 10, 20)
    for p, q in zip(opt.params, full_params):
        torch.testing.assert_close(p, q[[2, 0]], rtol=1e-12, atol=1e-14)
    for n, ts in opt.state.items():
        for t, b in zip(ts, full.state[n]):
            torch.testing.assert_close(t, b[[2, 0]], rtol=1e-12, atol=1e-14)
    if name == "mixed":
        assert opt.members == ["nag", "sgd"]
    with pytest.raises(ValueError, match=r"keep=\[2\] is not allowed"):
        opt.select([2])


@pytest.mark.parametrize("lr", [0.02, [0.02, 0.1]])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_python_float_lr_reaches_the_optimizer_exactly(name: str, lr: float | list[float]) -> None:
    """A learning rate given as a Python float (or list) is the float64 value itself, not its
    float32 rounding (torch.as_tensor(0.02) is float32: 0.019999999552965164)."""
    k = 1 if isinstance(lr, float) else len(lr)
    opt = make_optimizer(name, _init_params(k), lr)
    assert opt.lr.dtype == torch.float64
    assert opt.lr.tolist() == ([lr] if isinstance(lr, float) else lr)


def test_plain_sgd_with_a_float_lr_steps_as_numpy_in_float64() -> None:
    """One step of plain SGD at lr=0.02 from zero velocity is theta + (-0.02 * g), bit for bit in
    float64, computed by numpy (not against torch.optim.SGD: its add with alpha may fuse the
    multiply and the add into one rounding)."""
    params = _init_params(1)
    start = [p.numpy().copy() for p in params]
    grads = [g.numpy().copy() for g in _grad(params)]
    opt = make_optimizer("sgd", params, 0.02)
    opt.mu = torch.zeros(1, dtype=DTYPE)
    opt.step(_grad(opt.gradient_point()))
    for p, s, g in zip(params, start, grads):
        assert np.array_equal(p.numpy(), s + (-0.02 * g))
