"""The quick paper specs (issue #22): each must be able to show its table's effect within about 10
minutes on 2 cores. What can be checked without training: the momentum a spec searches takes
effect within its run (the RNN schedule's 1,000-update warm-up is over, Eq. 5 has raised mu past
the smaller caps), and the plan's CPU estimate for 2 cores stays within the budget. What the runs
then show was measured with trainables.train and is written in each spec's header."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.plan import population
from study.plan import sizing
from study.spec.expand import grid_points
from study.spec.model import load_spec
from trainables.train import member_schedules

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
QUICK = sorted(p.stem for p in SPECS.glob("*_quick.yaml"))
MOMENTUM = ("mu_max", "mu_0")


def test_the_quick_specs_are_the_ones_that_can_show_their_table():
    # MNIST and Faces have no quick spec: their data files cannot be fetched here to measure one.
    assert QUICK == ["table1_curves_quick", "table3_curves_quick", "table5_rnn_quick"]


@pytest.mark.parametrize("name", QUICK)
def test_the_searched_momentum_takes_effect_within_the_run(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    searched = [f for f in MOMENTUM if f in spec.search]
    for field in searched:
        runs = {}
        for point in grid_points(spec):
            cfg = population.solo_config(spec, point).member(0)
            schedule = member_schedules(cfg)[0]
            runs.setdefault(point[field], set()).add(tuple(schedule(t) for t in range(cfg.updates)))
        # Each momentum value runs a schedule of its own: none of them is hidden by a warm-up or
        # by Eq. 5's ramp for the whole run.
        distinct = {next(iter(s)) for s in runs.values() if len(s) == 1}
        assert len(distinct) == len(runs), (name, field)
    if not searched:  # Table 3: the SI scale is searched; mu must have left Eq. 5's first 0.5.
        cfg = population.solo_config(spec, grid_points(spec)[0]).member(0)
        assert member_schedules(cfg)[0](cfg.updates - 1) >= 0.9


@pytest.mark.parametrize("name", QUICK)
def test_the_plan_of_a_quick_spec_fits_10_minutes_on_2_cores(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    plan = sizing.make_plan(spec, sizing.Machine("test", 2.0, 0.0, 16 << 30, None))
    assert plan.wall_seconds <= 10 * 60, (name, plan.wall_seconds)
    assert plan.warnings == []  # e.g. a resolution too coarse for the table's values
