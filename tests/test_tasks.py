"""Every task answers for itself through one typed interface (trainables/tasks/protocol.py).

Checked against the trainer and independent references: the resolved config trains exactly as the
config it resolves (float64), the warm-up and the final phase are those of the schedules the
trainer builds, the autoencoders' bias-only level is the data's variance computed here with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables import train
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.tasks import TASKS, Task, Workload, resolved_config, task_for
from trainables.tasks.memory import MemoryEstimate
from trainables.train import default_final_updates, member_schedules

# A small run of each task, with the data every machine has (noise stands in for MNIST and Faces).
SMALL = {
    "curves": {"train_cases": 60, "eval_cases": 40, "batch_size": 20},
    "mnist": {"dataset": "noise", "train_cases": 60, "batch_size": 20},
    "faces": {"dataset": "noise", "train_cases": 60, "batch_size": 20},
    **{name: {"seq_length": 20, "batch_size": 4, "eval_cases": 8}
       for name in ("addition", "multiplication", "mem5", "mem20", "xor")},
}
# The fields whose None means "the task's default".
FILLED = ("init", "init_scale", "momentum_schedule", "final_momentum_updates", "batch_size", "eval_cases")


def small(task: str, **extra) -> TaskConfig:
    # Memorization needs room for its symbols, a trigger and the answers (mem20: T >= 21).
    length = {"seq_length": 30} if task.startswith("mem") else {}
    return parse_config({"task": task, "updates": 6, "report_every": 3, **SMALL[task], **length, **extra})


def test_the_registry_holds_the_configs_tasks():
    assert set(TASKS) == set(TaskConfig.model_fields["task"].annotation.__args__)
    with pytest.raises(ValueError, match=r"task='lstm' is not allowed: must be one of \['curves'"):
        task_for("lstm")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_implements_the_protocol(name):
    task = task_for(name)
    assert isinstance(task, Task) and task.name == name
    assert task.family in ("autoencoder", "rnn") and task.error_name and task.bias_only_prediction
    assert task.default_metric == "error" and set(task.paper_params) <= set(TaskConfig.model_fields)
    cfg = small(name)
    task.validate(cfg)
    assert isinstance(task.memory_estimate(cfg), MemoryEstimate) and task.memory_estimate(cfg).member_bytes > 0
    level, how = task.bias_only_error(cfg)
    assert level > 0 and how
    assert task.final_phase_updates(20_000) >= 0 and task.warmup_updates(cfg) >= 0
    resolved = task.resolve(cfg)
    assert all(getattr(resolved, f) is not None for f in FILLED)
    workload = task.build(cfg, torch.device("cpu"), torch.float32)
    assert isinstance(workload, Workload)
    params = workload.init_params()
    loss, grads = workload.loss_and_grads(params, 0)
    assert loss.shape == (1,) and [g.shape for g in grads] == [p.shape for p in params]
    assert workload.error(params).shape == (1,)


def test_a_class_without_a_method_is_not_a_task():
    class Partial:
        name, family, error_name, default_metric = "x", "rnn", "zero-one error", "error"
        paper_params, bias_only_prediction = ("lr",), "nothing"

    assert not isinstance(Partial(), Task)


@pytest.mark.parametrize("name", ["curves", "addition"])
def test_the_resolved_config_trains_exactly_as_the_config(name):
    # A population of two that leaves init, init scale, schedule and T to the task, and the final
    # phase of one member of two (a None in a list is that member's task default).
    cfg = small(name, dtype="float64", seed=[0, 1], final_momentum_updates=[None, 2])
    resolved = task_for(name).resolve(cfg)
    assert resolved.final_momentum_updates[1] == 2 and resolved.batch_size == cfg.batch_size  # given values stay
    assert None not in resolved.final_momentum_updates and resolved.init_scale is not None
    assert task_for(name).resolve(resolved) == resolved
    runs = [train(c) for c in (cfg, resolved)]
    assert [m.error for m in runs[0]] == [m.error for m in runs[1]]
    assert [m.loss for m in runs[0]] == [m.loss for m in runs[1]]


def test_resolved_config_is_what_the_trainer_used():
    stored = resolved_config({"task": "addition", "updates": 50})
    assert (stored["init"], stored["init_scale"], stored["momentum_schedule"]) == ("esn", 0.001, "rnn")
    assert (stored["final_momentum_updates"], stored["batch_size"], stored["seq_length"]) == (0, 100, 80)
    stored = resolved_config({"task": "curves", "updates": 5000, "train_cases": 300})
    assert (stored["init"], stored["init_scale"], stored["momentum_schedule"]) == ("sparse", 1.0, "eq5")
    assert (stored["final_momentum_updates"], stored["batch_size"], stored["eval_cases"]) == (500, 200, 300)
    assert parse_config(stored) == task_for("curves").resolve(parse_config({"task": "curves", "updates": 5000,
                                                                            "train_cases": 300}))


@pytest.mark.parametrize("name,schedule", [("addition", None), ("curves", "rnn"), ("curves", None),
                                           ("mem20", "constant")])
def test_the_warmup_is_the_trainers(name, schedule):
    # Count the updates at mu = 0.9 before the configured momentum (0.5) first applies.
    cfg = small(name, updates=3000, mu_0=0.5, mu_max=0.5, final_momentum_updates=0, momentum_schedule=schedule)
    mu = member_schedules(cfg)[0]
    first = next(t for t in range(cfg.updates) if mu(t) == 0.5)
    assert task_for(name).warmup_updates(cfg) == first


@pytest.mark.parametrize("updates", [40, 5000, 20_000])
def test_the_final_phase_default_is_the_trainers(updates):
    assert task_for("mnist").final_phase_updates(updates) == min(1000, updates // 10)  # sec. 3, shortened
    assert task_for("addition").final_phase_updates(updates) == 0
    for name in ("curves", "xor"):
        cfg = small(name, updates=updates)
        assert default_final_updates(cfg) == task_for(name).final_phase_updates(updates)
        assert task_for(name).resolve(cfg).final_momentum_updates == default_final_updates(cfg)


def test_the_autoencoder_bias_only_level_is_the_datas_variance():
    cfg = parse_config({"task": "faces", "dataset": "noise", "train_cases": 300, "eval_cases": 120})
    x = np.random.default_rng(0).random((300, 625), dtype=np.float32)[:120].astype(np.float64)
    expected = np.sum((x - x.mean(axis=0)) ** 2) / 120
    level, how = task_for("faces").bias_only_error(cfg)
    assert how == "mean image" and level == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name,init", [("curves", "esn"), ("addition", "sparse")])
def test_each_task_refuses_the_other_familys_init(name, init):
    with pytest.raises(ConfigError, match=rf"init='{init}' is not allowed for task '{name}': allowed"):
        task_for(name).validate(small(name, init=init))


def test_an_rnn_problem_refuses_a_data_set_and_a_short_sequence():
    with pytest.raises(ConfigError, match=r"dataset='noise' is not allowed for task 'addition'"):
        task_for("addition").validate(small("addition", dataset="noise"))
    with pytest.raises(ConfigError, match=r"seq_length=5 is not allowed for task 'addition'"):
        task_for("addition").validate(small("addition", seq_length=5))
