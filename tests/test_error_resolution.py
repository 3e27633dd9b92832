"""The RNN error's resolution against the paper's smallest values (issue #22): a seed's error is a
count over the evaluated sequences divided by their number, so it moves in steps of 1 / that
number; Table 5's paper spec evaluates enough sequences to resolve mem20's 0.00005, and a study
that cannot resolve its task's smallest published value is warned at plan/run time and noted in
its report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from study.plan import resolution
from study.plan import sizing
from study.spec.expand import task_config_dict
from study.spec.model import StudySpec, load_spec
from trainables.config import TaskConfig, parse_config
from trainables.tasks import task_for
from trainables.tasks.rnn import EVAL_KEPT_CASES, evaluated_sequences
from trainables.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task, length", [("mem20", 30), ("addition", 20)])
def test_a_seeds_error_is_a_count_over_the_evaluated_sequences(task, length):
    """eval_cases 150 at minibatch 100 scores 200 sequences: every error is k / 200, and the task
    says so; 1,200 sequences (more than are kept) give the same first 200's counts plus the rest."""
    torch.set_num_threads(1)
    base = {"task": task, "seq_length": length, "updates": 2, "report_every": 2, "batch_size": 100,
            "seed": [0, 1], "device": "cpu", "lr": 1e-3, "dtype": "float64"}
    cfg = parse_config({**base, "eval_cases": 150})
    assert evaluated_sequences(cfg) == 200 and task_for(task).error_resolution(cfg) == 1 / 200
    errors = [m.error for m in train(cfg)]
    for e in errors:
        assert abs(e * 200 - round(e * 200)) < 1e-9
    # Past the sequences kept for the run, the rest are drawn again: the same ones each report.
    big = parse_config({**base, "eval_cases": EVAL_KEPT_CASES + 200})
    w = task_for(task).build(big, torch.device("cpu"), torch.float64)
    params = [p.to(torch.float64) for p in w.init_params()]
    first, again = w.error(params), w.error(params)
    assert torch.equal(first, again)
    assert len(w._eval_batches) == EVAL_KEPT_CASES // 100  # memory does not grow with eval_cases
    for e in first.tolist():
        assert abs(e * (EVAL_KEPT_CASES + 200) - round(e * (EVAL_KEPT_CASES + 200))) < 1e-9


def test_autoencoder_errors_are_continuous():
    assert task_for("curves").error_resolution(TaskConfig(task="curves")) is None
    assert resolution.coarse(TaskConfig(task="curves")) is None


def test_the_table5_paper_spec_resolves_every_published_value():
    spec = load_spec(REPO / "search_spaces" / "table5_rnn.yaml")
    for task in spec.search["task"].values:
        cfg = parse_config(task_config_dict(spec, {"task": task, "mu_0": 0.9, "optimizer": "nag", "lr": 1e-3}))
        table, smallest = resolution.smallest_published(task)
        assert table == "table5"
        assert task_for(task).error_resolution(cfg) < smallest, task
    assert resolution.smallest_published("mem20") == ("table5", 0.00005)
    assert resolution.spec_warnings(spec) == []


def spec_of(task: str, **config) -> StudySpec:
    return StudySpec.model_validate({"name": "r", "task": task, "config": {"updates": 2000, **config},
                                     "search": {"lr": {"type": "grid", "values": [1e-3]}}, "sampler": "grid"})


def test_plan_warns_where_the_resolution_is_coarser_than_the_smallest_published_value():
    machine = sizing.Machine("test", 2.0, 0.0, 16 << 30, None)
    coarse = sizing.make_plan(spec_of("mem20"), machine).warnings
    assert len(coarse) == 1 and "mem20" in coarse[0] and "0.001" in coarse[0] and "5e-05" in coarse[0]
    assert "eval_cases above 20,000" in coarse[0]
    assert sizing.make_plan(spec_of("mem20", eval_cases=25000), machine).warnings == []
    assert sizing.make_plan(spec_of("mem5"), machine).warnings == []  # 0.63: 1,000 sequences resolve it
    # A search over tasks is checked task by task.
    spec = StudySpec.model_validate({"name": "r", "task": "mem5", "config": {"updates": 2000, "eval_cases": 5000},
                                     "search": {"task": {"type": "grid", "values": ["mem5", "addition", "mem20"]}},
                                     "sampler": "grid"})
    found = resolution.spec_warnings(spec)
    assert len(found) == 1 and found[0].startswith("task mem20")


def test_report_notes_a_coarse_resolution():
    members = pd.DataFrame({"task": ["mem20", "mem20"], "eval_cases": [None, None], "batch_size": [100, 100]})
    note = resolution.report_note(members)
    assert "too coarse" in note and "mem20" in note
    assert resolution.report_note(members.assign(eval_cases=25000)) == ""
