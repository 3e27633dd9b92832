"""Members of one population that differ in their optimizer and final phase, sub-populations, and
members that leave the batched computation (stopped by the reporter, or diverged).

Every comparison of a member with another run of the same member is in float64, within 1e-12
relative: a population of another size may take another kernel path (tests/test_training.py).
"""

import io
from dataclasses import replace

import pytest
import torch

from trainables import ConfigError, TaskConfig, parse_config, train
from trainables.optim import NAG, MixedMomentum, make_optimizer
from trainables.tasks import rnn
from trainables.train import default_final_updates, member_schedules

RNN = {"task": "addition", "seq_length": 10, "batch_size": 8, "eval_cases": 16, "report_every": 10, "dtype": "float64"}
CURVES = {"task": "curves", "train_cases": 50, "eval_cases": 50, "batch_size": 5, "report_every": 4, "dtype": "float64"}


class Recorder:
    """Keeps every report and, with ``state_at``, the checkpoint of that report number (1-based);
    returns ``stop[i]`` at report i (the members to stop)."""

    def __init__(self, stop: dict[int, list[int]] | None = None, state_at: int | None = None):
        self.reports, self.stop, self.state_at, self.state = [], stop or {}, state_at, None

    def __call__(self, report):
        self.reports.append(report)
        if len(self.reports) == self.state_at:
            self.state = report.checkpoint()
        return self.stop.get(len(self.reports))


def _close(a, b) -> None:
    """Two reports' figures of one member, within float64 rounding."""
    assert (a.status, a.diverged_at, a.mu, a.lr) == (b.status, b.diverged_at, b.mu, b.lr)
    assert (a.error, a.loss, *a.extra.values()) == pytest.approx((b.error, b.loss, *b.extra.values()), rel=1e-12, abs=0)


def _runs_with(monkeypatch) -> list[int]:
    """The population size of every gradient evaluation of the RNN runs that follow."""
    sizes = []
    real = rnn.RNNWorkload.loss_and_grads

    def counted(self, params, step):
        sizes.append(params[0].shape[0])
        return real(self, params, step)

    monkeypatch.setattr(rnn.RNNWorkload, "loss_and_grads", counted)
    return sizes


# --- per-member optimizer and final phase ---------------------------------------------------


@pytest.mark.parametrize("cfg", [
    # one seed and lr: the optimizer is all that differs between the members
    {**CURVES, "updates": 8, "optimizer": ["sgd", "cm", "nag"], "lr": 0.01, "seed": 0},
    # different seeds (padded minibatches), lrs and radii
    {**RNN, "updates": 30, "optimizer": ["nag", "sgd", "cm"], "lr": [1e-3, 3e-3, 3e-4], "seed": [3, 4, 5],
     "spectral_radius": [1.1, 1.0, 1.2]},
], ids=["curves", "addition"])
def test_mixed_optimizer_members_reproduce_their_solo_runs(cfg):
    pop = Recorder()
    train(cfg, pop)
    config = parse_config(cfg)
    for k in range(3):
        solo_cfg = config.member(k)
        assert solo_cfg.optimizer == cfg["optimizer"][k]
        solo = Recorder()
        train(solo_cfg, solo)
        assert len(solo.reports) == len(pop.reports)
        for a, b in zip(pop.reports, solo.reports):
            assert a.members[k].member == k
            _close(a.members[k], b.members[0])
    last = [m.loss for m in pop.reports[-1].members]
    assert len(set(last)) == 3, "the members must differ (the optimizer is applied per member)"


def test_mixed_optimizer_is_used_only_where_members_differ():
    params = [torch.zeros(3, 2, dtype=torch.float64)]
    lr = torch.ones(3, dtype=torch.float64)
    assert type(make_optimizer(parse_config({"task": "curves", "optimizer": ["nag"] * 3}).optimizer, params, lr)) is NAG
    assert type(make_optimizer(["sgd", "nag", "sgd"], params, lr)) is MixedMomentum


def test_members_with_their_own_final_phase_reproduce_their_solo_runs():
    cfg = {**RNN, "updates": 30, "optimizer": "nag", "lr": [1e-3, 3e-3, 2e-3], "seed": 2,
           "final_momentum_updates": [0, 10, 25], "final_momentum": [0.5, 0.5, 0.3]}
    pop = Recorder()
    train(cfg, pop)
    # the RNN schedule is 0.9 for 1000 updates; the final phase caps it for the last N updates
    assert [[m.mu for m in r.members] for r in pop.reports] == [[0.9, 0.9, 0.3], [0.9, 0.9, 0.3], [0.9, 0.5, 0.3]]
    config = parse_config(cfg)
    for k in range(3):
        solo = Recorder()
        train(config.member(k), solo)
        for a, b in zip(pop.reports, solo.reports):
            _close(a.members[k], b.members[0])


def test_final_phase_length_per_member_with_the_task_default_for_none():
    cfg = parse_config({"task": "curves", "updates": 40, "final_momentum_updates": [None, 7], "final_momentum": 0.5,
                        "momentum_schedule": "constant", "mu_max": 0.99})
    assert [default_final_updates(cfg, k) for k in range(2)] == [4, 7]  # default: a tenth of 40
    with pytest.raises(ValueError, match="differs by member"):
        default_final_updates(cfg)
    assert default_final_updates(cfg.select([0, 0])) == 4
    assert [[s(t) for t in (32, 33, 35, 36)] for s in member_schedules(cfg)] == [[0.99, 0.99, 0.99, 0.5],
                                                                                  [0.99, 0.5, 0.5, 0.5]]
    with pytest.raises(ConfigError, match=r"final_momentum_updates=\[None, 41\] is not allowed \(member 1: 41\)"):
        train({"task": "curves", "updates": 40, "final_momentum_updates": [None, 41], "train_cases": 10})


@pytest.mark.parametrize("raw, words", [
    ({"optimizer": ["nag", "adam"]}, ["optimizer=['nag', 'adam'] is not allowed", "'sgd', 'cm', 'nag'"]),
    ({"optimizer": ["nag", "lbfgs"]}, ["optimizer='lbfgs' is not allowed", "rmsprop"]),
    ({"optimizer": ["nag", "cm"], "lr": [0.1, 0.2, 0.3]}, ["optimizer has 2", "lr has 3"]),
    ({"final_momentum": [0.9, 1.0]}, ["final_momentum=1.0 is not allowed", "[0, 1)"]),
    ({"final_momentum_updates": [10, -1]}, ["final_momentum_updates=-1 is not allowed", ">= 0"]),
])
def test_bad_population_values_are_refused_with_key_value_and_rule(raw, words):
    with pytest.raises(ConfigError) as err:
        parse_config({"task": "curves", **raw})
    for w in words:
        assert w in str(err.value)


def test_one_adaptive_method_for_every_member_is_allowed():
    assert parse_config({"task": "curves", "optimizer": ["adam", "adam"]}).population_size == 2


def test_select_gives_the_sub_population():
    cfg = parse_config({"task": "addition", "optimizer": ["sgd", "cm", "nag"], "lr": [0.1, 0.2, 0.3], "seed": 4,
                        "final_momentum": [0.5, 0.6, 0.7]})
    sub = cfg.select([2, 0])
    assert (sub.optimizer, sub.lr, sub.final_momentum, sub.seed, sub.population_size) == (
        ["nag", "sgd"], [0.3, 0.1], [0.7, 0.5], 4, 2)
    one = cfg.select([1])
    assert (one.optimizer, one.lr, one.seed, one.population_size) == (["cm"], [0.2], 4, 1)
    assert cfg.select([0, 1, 2]) == cfg and isinstance(one, TaskConfig)
    for bad in ([], [3], [-1], [True]):
        with pytest.raises(ConfigError, match="ids=.* is not allowed"):
            cfg.select(bad)


# --- members leaving the computation ---------------------------------------------------------


def test_stopped_member_leaves_the_computation_and_the_others_run_as_a_population_without_it(monkeypatch):
    sizes = _runs_with(monkeypatch)
    cfg = {**RNN, "updates": 40, "optimizer": ["nag", "cm", "nag", "sgd"], "lr": [1e-3, 3e-3, 2e-3, 5e-4],
           "seed": [0, 1, 2, 3], "polyak_decay": 0.9}
    pop = Recorder(stop={1: [1]}, state_at=2)
    out = train(cfg, pop)
    # after the first report the updates run with three members, and so does the evaluation
    assert sizes == [4] * 10 + [3] * 30
    assert pop.state["members"] == [0, 2, 3]
    assert [p.shape[0] for p in (*pop.state["params"], *pop.state["averages"], pop.state["lr"])] == [3] * 11
    # every report lists all four; member 1 keeps the figures of the report it was stopped at
    stopped = pop.reports[0].members[1]
    assert stopped.status == "running"
    for r in pop.reports[1:]:
        assert [m.member for m in r.members] == [0, 1, 2, 3]
        assert r.members[1] == replace(stopped, status="pruned")
    assert [m.status for m in out] == ["completed", "pruned", "completed", "completed"]

    sizes.clear()
    without = Recorder()
    train(parse_config(cfg).select([0, 2, 3]), without)
    assert set(sizes) == {3}
    for a, b in zip(pop.reports, without.reports):
        for k, m in zip((0, 2, 3), b.members):
            _close(a.members[k], m)


def test_stopped_autoencoder_member_runs_on_with_the_others_as_without_it():
    cfg = {**CURVES, "updates": 12, "batch_size": 2, "optimizer": ["nag", "sgd", "cm"], "lr": [0.01, 0.02, 0.005],
           "seed": [0, 1, 2], "init_scale": [1.0, 1.2, 0.8]}
    # 25 minibatches per epoch: the stop falls inside an epoch whose orders are cached for three
    pop = Recorder(stop={1: [0]}, state_at=2)
    train(cfg, pop)
    assert pop.state["members"] == [1, 2] and pop.state["params"][0].shape[0] == 2
    without = Recorder()
    train(parse_config(cfg).select([1, 2]), without)
    for a, b in zip(pop.reports, without.reports):
        for k, m in zip((1, 2), b.members):
            _close(a.members[k], m)


def test_diverged_member_leaves_the_computation_with_its_last_good_figures(monkeypatch):
    sizes = _runs_with(monkeypatch)
    # lr 10 on seed 1: the loss overflows at update 46 (float64), after four good reports
    cfg = {**RNN, "updates": 60, "lr": [1e-3, 10.0, 3e-4], "seed": [0, 1, 2]}
    pop = Recorder(state_at=5)
    out = train(cfg, pop)
    assert [m.status for m in out] == ["completed", "diverged", "completed"]
    assert sizes == [3] * 50 + [2] * 10
    assert pop.state["members"] == [0, 2] and pop.state["params"][1].shape[0] == 2
    good, bad = pop.reports[3].members[1], pop.reports[4].members[1]
    assert good.status == "running" and bad.status == "diverged" and 40 < bad.diverged_at <= 50
    assert (bad.error, bad.loss, bad.mu, bad.lr) == (good.error, good.loss, good.mu, good.lr)
    assert all(r.members[1] == bad for r in pop.reports[4:])
    # member 1 alone diverges at the same update with the same last figures
    alone = Recorder()
    train(parse_config(cfg).member(1), alone)
    _close(bad, alone.reports[-1].members[0])
    # and the others compute what a population without member 1 computes
    without = Recorder()
    train(parse_config(cfg).select([0, 2]), without)
    for a, b in zip(pop.reports, without.reports):
        for k, m in zip((0, 2), b.members):
            _close(a.members[k], m)


def test_stopping_every_member_ends_the_run_without_another_report():
    cfg = {**RNN, "updates": 50, "lr": [1e-3, 3e-3, 2e-3], "seed": [0, 1, 2]}
    pop = Recorder(stop={1: [0, 2], 2: (k for k in [1, 0])})  # any iterable; member 0 has ended already
    out = train(cfg, pop)
    assert [r.step for r in pop.reports] == [10, 20] and not pop.reports[-1].final
    assert [m.status for m in out] == ["pruned"] * 3
    first, second = pop.reports[0].members, pop.reports[1].members
    assert out == [replace(first[0], status="pruned"), replace(second[1], status="pruned"),
                   replace(first[2], status="pruned")]
    assert second[0] == out[0] and second[2] == out[2]

    at_once = Recorder(stop={1: [0, 1, 2]})
    assert [m.status for m in train(cfg, at_once)] == ["pruned"] * 3 and len(at_once.reports) == 1


def test_stop_at_the_final_report_is_ignored_and_bad_stops_are_refused():
    cfg = {**RNN, "updates": 10, "report_every": 5, "lr": [1e-3, 3e-3], "seed": [0, 1]}
    out = train(cfg, Recorder(stop={2: [0]}))
    assert [m.status for m in out] == ["completed", "completed"]
    for bad in ([2], [-1], ["0"], [0.0], 1, "0"):
        with pytest.raises(ValueError, match="reporter returned .* not allowed"):
            train(cfg, Recorder(stop={1: bad}))


@pytest.mark.parametrize("cfg", [
    {**RNN, "updates": 60, "optimizer": ["nag", "cm", "sgd"], "lr": [1e-3, 3e-3, 2e-3], "seed": [0, 1, 2],
     "polyak_decay": 0.9},
    {**CURVES, "updates": 16, "batch_size": 2, "optimizer": "adam", "lr": [1e-3, 3e-3, 2e-3],
     "seed": [0, 1, 2]},
], ids=["addition-mixed-polyak", "curves-adam"])
def test_resume_after_a_member_was_stopped_equals_the_uninterrupted_run_exactly(cfg):
    full = Recorder(stop={2: [1]}, state_at=3)
    train(cfg, full)
    assert full.state["members"] == [0, 2]
    buf = io.BytesIO()
    torch.save(full.state, buf)
    buf.seek(0)
    resumed = Recorder()
    train(cfg, resumed, resume_from=torch.load(buf, weights_only=False, map_location="cpu"))
    assert [r.step for r in resumed.reports] == [r.step for r in full.reports[3:]]
    for a, b in zip(full.reports[3:], resumed.reports):
        assert a.members == b.members  # bit for bit, the pruned member's frozen figures included
    assert resumed.reports[-1].members[1].status == "pruned"


def test_version_1_checkpoint_resumes_without_its_diverged_member():
    # Before members left the computation a checkpoint held all K, a diverged one zeroed.
    cfg = {**RNN, "updates": 60, "lr": [1e-3, 10.0, 3e-4], "seed": [0, 1, 2]}
    full = Recorder(state_at=5)
    train(cfg, full)
    state = dict(full.state, version=1)
    del state["members"]
    for name in ("params", "lr", "loss_sum", "loss_count"):
        state[name] = _widen(state[name], 1)
    state["optimizer"] = dict(state["optimizer"], lr=_widen(state["optimizer"]["lr"], 1),
                              mu=_widen(state["optimizer"]["mu"], 1),
                              state={n: _widen(ts, 1) for n, ts in state["optimizer"]["state"].items()})
    resumed = Recorder()
    train(cfg, resumed, resume_from=state)
    assert resumed.reports[-1].members == full.reports[-1].members


def _widen(x, k: int):
    """``x`` (a tensor or a list of them) with a slice of zeros inserted at member position k."""
    if isinstance(x, list):
        return [_widen(t, k) for t in x]
    return torch.cat([x[:k], torch.zeros_like(x[:1]), x[k:]])
