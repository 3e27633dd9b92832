"""An RNN population's update is a fixed number of batched operations, whatever K is.

Counted on the CPU as ATen calls (every kernel launch on a GPU is one of them, views included)
by a TorchDispatchMode around the workload's own calls: loss_and_grads (one update's minibatch,
forward, BPTT and gradients) and error (the evaluation). A loop over members anywhere would make
the K = 64 count grow by about 64 times the loop body.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.config import parse_config
from trainables.data.counter_rng import MemberKeys
from trainables.tasks.rnn import RNNWorkload

# What K = 1 and K = 64 may differ by: a copy that is a no-op for one member (hs[:, start:] is
# already contiguous) and similar bookkeeping, never anything per member or per time step.
SLACK = 4


class AtenCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _workload(task: str, seeds: list[int], length: int) -> RNNWorkload:
    cfg = parse_config({"task": task, "seed": seeds, "lr": [1e-3] * len(seeds), "seq_length": length,
                        "batch_size": 5, "eval_cases": 5})
    return RNNWorkload(cfg, torch.device("cpu"), torch.float32)


def _calls(workload: RNNWorkload, what: str, step: int = 3) -> int:
    # One member's initial weights repeated K times: the count depends on shapes, not on values,
    # and 64 echo-state initializations (an eigenvalue problem each) would dominate the test.
    K = len(workload.seeds)
    one = _workload(workload.problem.name, workload.seeds[:1], workload.length).init_params()
    params = [p.expand(K, *p.shape[1:]).contiguous() for p in one]
    run = (lambda: workload.loss_and_grads(params, step)) if what == "update" else (lambda: workload.error(params))
    run()  # first call: workspaces and cached index tensors
    with AtenCalls() as calls:
        run()
    return calls.count


@pytest.mark.parametrize("what", ["update", "error"])
@pytest.mark.parametrize("task, length", [("addition", 15), ("multiplication", 15), ("mem5", 30)])
def test_operations_per_update_do_not_grow_with_the_population(task, length, what):
    # Lengths where every minibatch has the same number of steps (marked pairs at T = 15 draw L
    # from [15, 16)), so K = 1 and K = 64 run the same number of time steps.
    one, many = _calls(_workload(task, [7], length), what), _calls(_workload(task, list(range(64)), length), what)
    assert abs(many - one) <= SLACK, f"{task} {what}: {one} ATen calls at K = 1, {many} at K = 64"


@pytest.mark.parametrize("what, stream", [("update", 1), ("error", 2)])
def test_padded_population_runs_the_operations_of_its_longest_member(what, stream):
    # T = 80: addition minibatches have 80 to 87 steps, so 64 members are padded to the longest.
    # Alone, the member that has that longest minibatch runs as many steps without padding.
    seeds = list(range(64))
    index = 3 if what == "update" else 0
    lengths = _workload("addition", seeds, 80).problem.lengths(MemberKeys(seeds), stream, index, 80)
    assert len(set(lengths)) > 1, "test needs members of different lengths"
    longest = seeds[lengths.index(max(lengths))]
    one = _calls(_workload("addition", [longest], 80), what, index)
    many = _calls(_workload("addition", seeds, 80), what, index)
    assert abs(many - one) <= SLACK, f"{what}: {one} ATen calls at K = 1, {many} at K = 64 (padded)"


@pytest.mark.parametrize("what, per_step", [("update", 5), ("error", 3)])
@pytest.mark.parametrize("task, short, long", [("addition", 15, 19), ("mem5", 30, 40)])
def test_each_time_step_is_a_few_fused_operations(task, short, long, what, per_step):
    # Forward: the recurrent matmul with the input term added (baddbmm), sigmoid_, one add
    # (tanh = 1 - 2 sigmoid(-2a)); backward: tanh_backward and one (b)addbmm. Differencing two
    # lengths leaves what each extra step costs.
    seeds = [0, 1, 2]
    extra = _calls(_workload(task, seeds, long), what) - _calls(_workload(task, seeds, short), what)
    assert extra == per_step * (long - short)
