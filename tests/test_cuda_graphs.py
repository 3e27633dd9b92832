"""The updates between two reports as captured CUDA graphs (trainables/graphs.py).

Without a GPU: ``graphs.EMULATE`` runs the graph path on the CPU, through the same static
buffers (the minibatch, the step's momentum and the update counter copied in before every update),
with the captured function called where CUDA would replay it. In float64 that path must compute
exactly what the eager loop computes: for RNN tasks whose minibatch length varies with the step
(several graphs) or not, for an autoencoder, for every optimizer, with members leaving mid-run
(the graphs are dropped and captured again) and when resuming from a checkpoint. With CUDA, graph
and eager runs are compared in float64 on the GPU.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from test_device import DeviceAudit

from trainables import ConfigError, graphs, train
from trainables.config import parse_config
from trainables.tasks import task_for

training = importlib.import_module("trainables.train")  # the module (trainables.train is also the function)

# A final low-momentum phase that starts between two reports: mu changes from one update to the
# next (the schedules are otherwise constant over runs this short).
ADDITION = {"task": "addition", "seq_length": 30, "batch_size": 10, "eval_cases": 30, "updates": 48, "report_every": 12,
            "final_momentum_updates": 17, "final_momentum": 0.25}
MEM5 = {"task": "mem5", "seq_length": 24, "batch_size": 10, "eval_cases": 30, "updates": 36, "report_every": 12}
CURVES = {"task": "curves", "train_cases": 60, "eval_cases": 60, "batch_size": 10, "updates": 36, "report_every": 12}

SCENARIOS = [
    (ADDITION, {"optimizer": "nag", "lr": [1e-3, 3e-4, 1e-4], "seed": [1, 2, 3], "mu_0": [0.9, 0.99, 0.5]}),
    (MEM5, {"optimizer": "nag", "lr": [1e-3, 3e-4], "seed": [1, 2], "spectral_radius": [1.1, 1.3],
            "final_momentum_updates": [5, 20], "final_momentum": [0.3, 0.6]}),
    (CURVES, {"optimizer": "nag", "lr": [0.01, 0.005], "seed": [0, 1], "polyak_decay": 0.9}),
    (CURVES, {"optimizer": "adam", "lr": 0.001, "seed": 4}),
]
SCENARIO_IDS = ["addition-nag-3", "mem5-nag-2", "curves-nag-2-polyak", "curves-adam-1"]


class Recorder:
    """Keeps every report's figures and checkpoint; stops ``stop`` (members) at report ``at``."""

    def __init__(self, stop: tuple[int, ...] = (), at: int = 1, runners: list | None = None):
        self.reports, self.states, self.captures = [], [], []
        self.stop, self.at, self.runners = stop, at, runners

    def __call__(self, report):
        self.reports.append([(m.member, m.error, m.loss, m.mu, m.lr, m.status, m.diverged_at, m.extra)
                             for m in report.members])
        self.states.append(report.checkpoint())
        if self.runners:
            self.captures.append(self.runners[-1].captures)
        return self.stop if len(self.reports) == self.at else None


@pytest.fixture
def emulated(monkeypatch):
    """The graph path on the CPU; the runners train() made, in order."""
    runners: list = []
    real = training.update_graphs

    def spy(*args, **kwargs):
        runner = real(*args, **kwargs)
        runners.append(runner)
        return runner

    monkeypatch.setattr(graphs, "EMULATE", True)
    monkeypatch.setattr(training, "update_graphs", spy)
    return runners


def _assert_same_run(eager: Recorder, graphed: Recorder) -> None:
    # Exact: float64, the same operations on the same numbers (nan == nan for a loss not yet seen).
    assert repr(graphed.reports) == repr(eager.reports)
    for a, b in zip(eager.states, graphed.states):
        assert a["step"] == b["step"] and a["members"] == b["members"]
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert len(flat_a) == len(flat_b) > 0
        for x, y in zip(flat_a, flat_b):
            assert x.dtype == y.dtype and torch.equal(x, y)


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x, key=str) for t in _tensors(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


@pytest.mark.parametrize("base, population", SCENARIOS, ids=SCENARIO_IDS)
def test_graph_path_equals_the_eager_loop_bit_for_bit_in_float64(emulated, base, population):
    cfg = {**base, **population, "dtype": "float64", "device": "cpu"}
    K = parse_config(cfg).population_size
    stop = (1,) if K > 1 else ()  # a member leaves after the first report: graphs are captured again
    eager, graphed = Recorder(stop), Recorder(stop, runners=emulated)
    train({**cfg, "cuda_graphs": False}, eager)
    assert emulated == [None]  # graphs off: the eager loop ran
    train(cfg, graphed)
    runner = emulated[-1]
    assert runner is not None and runner.replays > 0
    _assert_same_run(eager, graphed)
    # One graph per minibatch shape the run meets, and again for the survivors once a member left.
    n, every = cfg["updates"], cfg["report_every"]
    expected = _shapes(cfg, range(K), range(every))
    if stop:
        expected += _shapes(cfg, [k for k in range(K) if k not in stop], range(every, n))
    assert graphed.captures[-1] == runner.captures == expected
    assert runner.replays == n - expected
    if base is ADDITION:
        assert expected > 2  # lengths vary with the step


def _shapes(cfg: dict, members: list[int], steps: range) -> int:
    """How many different minibatch shapes the members draw over ``steps``."""
    c = parse_config(cfg)
    workload = task_for(c.task).build(c, torch.device("cpu"), torch.float64)
    workload.select(list(members))
    batches = [workload.batch(s) for s in steps]
    return len({tuple(t.shape) for t in (b if isinstance(b, torch.Tensor) else b.inputs for b in batches)})


@pytest.mark.parametrize("optimizer", ["cm", "sgd", "adagrad", "rmsprop", "rmsprop_nesterov", "adam",
                                       ["sgd", "cm", "nag"]], ids=str)
def test_every_optimizer_through_the_graph_path_equals_the_eager_loop(emulated, optimizer):
    cfg = {**ADDITION, "updates": 24, "optimizer": optimizer, "lr": [1e-3, 3e-4, 1e-4], "seed": [5, 6, 7],
           "mu_0": [0.9, 0.99, 0.5], "dtype": "float64", "device": "cpu"}
    eager, graphed = Recorder(), Recorder(runners=emulated)
    train({**cfg, "cuda_graphs": False}, eager)
    train(cfg, graphed)
    _assert_same_run(eager, graphed)


def test_resume_through_the_graph_path_equals_the_uninterrupted_eager_run(emulated):
    cfg = {**ADDITION, "optimizer": "adam", "lr": [1e-3, 3e-4, 1e-4], "seed": [1, 2, 3],
           "dtype": "float64", "device": "cpu"}
    eager = Recorder(stop=(0,), at=1)
    train({**cfg, "cuda_graphs": False}, eager)
    resumed = Recorder(runners=emulated)
    # From the second report: member 0 left at the first, so the checkpoint holds members 1 and 2.
    train(cfg, resumed, resume_from=eager.states[1])
    assert eager.states[1]["members"] == [1, 2]
    tail = Recorder()
    tail.reports, tail.states = eager.reports[2:], eager.states[2:]
    _assert_same_run(tail, resumed)


def test_diverging_member_through_the_graph_path_is_noted_at_the_same_update(emulated):
    # lr 1.7e308: the first update takes member 1's weights to inf, the loss of the second is NaN,
    # in the middle of the first report interval (read from the graph path's device counter).
    cfg = {**ADDITION, "updates": 24, "lr": [1e-3, 1.7e308], "seed": [1, 2], "dtype": "float64", "device": "cpu"}
    eager, graphed = Recorder(), Recorder(runners=emulated)
    train({**cfg, "cuda_graphs": False}, eager)
    train(cfg, graphed)
    assert eager.reports[-1][1][5:7] == ("diverged", 2)
    _assert_same_run(eager, graphed)


def test_graph_path_makes_no_call_that_waits_on_the_device_between_reports(emulated, monkeypatch):
    audits = []
    real = training.run_updates

    def audited(*args, **kwargs):
        with DeviceAudit() as audit:
            out = real(*args, **kwargs)
        audits.append(audit)
        return out

    monkeypatch.setattr(training, "run_updates", audited)
    cfg = {**ADDITION, "updates": 24, "lr": [1e-3, 3e-4], "seed": [1, 2], "optimizer": "adam",
           "polyak_decay": 0.9, "device": "cpu"}
    train(cfg, Recorder(stop=(1,), runners=emulated))
    assert emulated[-1] is not None and emulated[-1].replays > 0
    assert len(audits) == 2 and [a.syncs for a in audits] == [[], []]


def test_graphs_stay_off_on_the_cpu_and_when_turned_off():
    cfg = parse_config({**ADDITION, "device": "cpu"})
    workload = task_for(cfg.task).build(cfg, torch.device("cpu"), torch.float32)
    from trainables.optim import make_optimizer

    opt = make_optimizer("nag", workload.init_params(), torch.tensor([1e-3], dtype=torch.float64))
    assert cfg.cuda_graphs is True
    assert graphs.update_graphs(workload, opt, None, torch.device("cpu"), True) is None
    assert graphs.update_graphs(workload, opt, None, torch.device("meta"), True) is None
    with pytest.raises(ConfigError, match="cuda_graphs"):
        parse_config({**ADDITION, "cuda_graphs": "sometimes"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("base, population", SCENARIOS[:3], ids=SCENARIO_IDS[:3])
def test_cuda_graphs_equal_the_eager_loop_on_a_gpu_in_float64(monkeypatch, base, population):
    runners: list = []
    real = training.update_graphs
    monkeypatch.setattr(training, "update_graphs", lambda *a, **k: runners.append(real(*a, **k)) or runners[-1])
    cfg = {**base, **population, "dtype": "float64", "device": "cuda"}
    K = parse_config(cfg).population_size
    stop = (1,) if K > 1 else ()
    eager, graphed = Recorder(stop), Recorder(stop, runners=runners)
    train({**cfg, "cuda_graphs": False}, eager)
    train(cfg, graphed)
    assert runners[-1] is not None and runners[-1].replays > 0 and not runners[-1].emulate
    # The same kernels replayed; only a library choosing another algorithm under capture could
    # change the order of a sum, so: equal to float64 rounding, amplified over a few dozen updates.
    for a, b in zip(eager.reports, graphed.reports):
        for ma, mb in zip(a, b):
            assert ma[5:7] == mb[5:7]
            for x, y in ((ma[1], mb[1]), (ma[2], mb[2])):
                assert x == pytest.approx(y, rel=1e-9, abs=1e-12, nan_ok=True)
    for a, b in zip(eager.states, graphed.states):
        for x, y in zip(_tensors(a), _tensors(b)):
            torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_graphs_are_captured_again_when_a_tensor_they_read_moves():
    # A graph reads fixed addresses: when one of its tensors is replaced (here lr, as loading a
    # checkpoint does), the runner must capture again rather than replay against the old one.
    # Emulated, a replay would read the new attribute anyway; the capture count shows the check.
    from trainables.optim import make_optimizer

    # mem5: one minibatch shape, so one graph, and a capture is a re-capture.
    cfg = parse_config({**MEM5, "lr": [1e-3, 3e-4], "seed": [1, 2], "final_momentum_updates": 9, "final_momentum": 0.3,
                        "dtype": "float64", "device": "cpu"})
    schedules = training.member_schedules(cfg)
    results = []
    for emulate in (False, True):
        workload = task_for(cfg.task).build(cfg, torch.device("cpu"), torch.float64)
        opt = make_optimizer("nag", workload.init_params(), torch.tensor(cfg.member_values("lr"), dtype=torch.float64))
        runner = graphs.UpdateGraphs(workload, opt, None, emulate=True) if emulate else None
        books = [torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.int64),
                 torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
        points, captures = None, []
        for start in (0, 6, 12):
            mu = torch.tensor([[s(t) for s in schedules] for t in range(start, start + 6)], dtype=torch.float64)
            points = training.run_updates(workload, opt, opt.params, None, None, mu, start, points, *books,
                                          graphs=runner)
            if start == 6:
                opt.lr = opt.lr * 0.5  # a new tensor at a new address
            captures.append(runner.captures if runner else 0)
        results.append([*opt.params, *opt.state["velocity"], *books])
        if emulate:
            assert captures == [1, 1, 2]  # captured, replayed, captured again once lr moved
    for a, b in zip(*results):
        assert torch.equal(a, b)
