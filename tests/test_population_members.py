"""Members of one population that differ in their optimizer and final phase, and sub-populations.

Every comparison of a member with another run of the same member is in float64, within 1e-12
relative: a population of another size may take another kernel path (tests/test_training.py).
"""

import pytest
import torch

from trainables import ConfigError, TaskConfig, parse_config, train
from trainables.optim import NAG, MixedMomentum, make_optimizer
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
