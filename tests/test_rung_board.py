"""ASHA across populations (issue 21): a fused study's rungs decide as Ray Tune's ASHAScheduler
decides, comparing a configuration with every configuration of the study that reached the rung.

The reference is Ray Tune's own scheduler, fed through its public on_trial_add/on_trial_result
with real (unstarted) ``ray.tune.experiment.Trial`` objects, one per configuration; the same
sequence of (configuration, report, value) goes to the study's populations (``MemberRungs``), each
population one call per report with its running configurations, sharing one record."""

from __future__ import annotations

import json
import random

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from study.plan.population import AshaRule, MemberRungs


def _sequence(seed: int, populations: int, sizes: tuple[int, int], reports: int):
    """Reports of ``populations`` populations interleaved at random: (population, report) in the
    order they arrive, and each configuration's value at each report (with ties and NaN-free)."""
    rng = random.Random(seed)
    tables = [[f"p{p}-{j}" for j in range(rng.randint(*sizes))] for p in range(populations)]
    values = {c: [round(rng.uniform(0, 1), 2) for _ in range(reports)] for t in tables for c in t}
    # Each population's reports in order; populations interleave (some start later).
    queues = {p: [(p, r) for r in range(1, reports + 1)] for p in range(populations)}
    order = []
    while queues:
        p = rng.choice(sorted(queues))
        order.append(queues[p].pop(0))
        if not queues[p]:
            del queues[p]
    return tables, values, order


def _ray_decisions(tables, values, order, grace, rf, max_t, mode):
    sched = ASHAScheduler(time_attr="training_iteration", metric="scheduler_objective", mode=mode,
                          max_t=max_t, grace_period=grace, reduction_factor=rf)
    trials = {c: Trial("population", config={}, trial_id=c, stub=True) for t in tables for c in t}
    for t in trials.values():
        sched.on_trial_add(None, t)
    stopped: dict[str, int] = {}
    for p, report in order:
        for c in tables[p]:
            if c in stopped:
                continue
            result = {"training_iteration": report, "scheduler_objective": values[c][report - 1]}
            if sched.on_trial_result(None, trials[c], result) == TrialScheduler.STOP:
                stopped[c] = report
    return stopped


def _study_decisions(tables, values, order, grace, rf, max_t, mode, reports, board):
    rungs = [MemberRungs(grace, rf, max_t, mode, config_ids=t, last_report=reports, board=board) for t in tables]
    stopped: dict[str, int] = {}
    for p, report in order:
        running = {j: values[c][report - 1] for j, c in enumerate(tables[p]) if c not in stopped}
        for j in rungs[p].stop(report, running):
            stopped[tables[p][j]] = report
    return stopped


CASES = [(mode, grace, rf, max_t) for mode in ("min", "max")
         for grace, rf, max_t in ((1, 2, 12), (1, 3, 12), (2, 2, 12), (1, 4, 12), (1, 2.5, 12), (1, 3, 7))]


@pytest.mark.parametrize("mode,grace,rf,max_t", CASES)
def test_rungs_across_populations_decide_as_ray_tunes_asha(mode, grace, rf, max_t):
    reports = 12  # max_t 7: Ray stops everything at report 7, as the study's rungs do
    for seed in range(8):
        tables, values, order = _sequence(seed, populations=4, sizes=(1, 5), reports=reports)
        # Ray stops every trial at max_t (its last report here); the study's populations end there on their own.
        ray = {c: r for c, r in _ray_decisions(tables, values, order, grace, rf, max_t, mode).items() if r < reports}
        ours = _study_decisions(tables, values, order, grace, rf, max_t, mode, reports,
                                board=AshaRule(grace, rf, max_t, mode))
        assert ours == ray, (seed, ours, ray)
        assert ray, "the sequence must stop something, or the comparison says little"


def test_each_population_judged_alone_would_decide_otherwise():
    """What the shared record changes: populations judged only among themselves (the rule before
    issue 21) keep configurations that the study's ASHA stops, and stop others it keeps."""
    tables, values, order = _sequence(3, populations=4, sizes=(2, 4), reports=12)
    ray = _ray_decisions(tables, values, order, 1, 3, 12, "min")
    alone: dict[str, int] = {}
    for t in tables:  # each population with a record of its own
        sub = {c: values[c] for c in t}
        alone.update(_study_decisions([t], sub, [(0, r) for r in range(1, 13)], 1, 3, 12, "min", 12,
                                      board=AshaRule(1, 3, 12, "min")))
    assert {c: r for c, r in ray.items() if r < 12} != alone


def test_the_board_actor_is_shared_by_populations_and_kept_across_a_resume(ray_session, tmp_path):
    """Through the study's actor, as trials reach it: the same decisions as Ray's scheduler; a
    board started again from the study directory's record (a resumed study) goes on deciding as an
    uninterrupted Ray scheduler does."""
    from study.run.rung_board import RUNGS_FILE, RungBoard, _Remote

    tables, values, order = _sequence(5, populations=3, sizes=(2, 4), reports=9)
    expected = {c: r for c, r in _ray_decisions(tables, values, order, 1, 2, 9, "min").items() if r < 9}
    half = len(order) // 2
    path = str(tmp_path / RUNGS_FILE)
    first = RungBoard.remote(1, 2, 9, "min", path)
    got = _study_decisions(tables, values, order[:half], 1, 2, 9, "min", 9, board=_Remote(first))
    import ray

    ray.kill(first)
    saved = json.loads((tmp_path / RUNGS_FILE).read_text())
    assert sum(len(r) for r in saved["recorded"]) > 0 and sorted(saved["stopped"]) == sorted(got)
    second = _Remote(RungBoard.remote(1, 2, 9, "min", path))
    # The populations go on from where they were: those stopped stay stopped, and a population that
    # is asked again about a configuration stopped before the interruption hears "stop" again.
    rungs = [MemberRungs(1, 2, 9, "min", config_ids=t, last_report=9, board=second) for t in tables]
    for p, report in order[half:]:
        running = {j: values[c][report - 1] for j, c in enumerate(tables[p]) if c not in got}
        for j in rungs[p].stop(report, running):
            got[tables[p][j]] = report
    assert got == expected
    if got:
        c = next(iter(got))
        p = next(i for i, t in enumerate(tables) if c in t)
        assert rungs[p].stop(got[c], {tables[p].index(c): 0.0}) == [tables[p].index(c)]


def test_a_run_s_board_is_found_by_its_trials_and_a_resumed_run_starts_from_its_record(ray_session, tmp_path):
    """The driver's board (runner: one per run of a fused ASHA study) is what a trial's
    population_rungs finds by the study's name; the next run of the study (`study resume`) starts
    from the record the first left in the study directory."""
    from conftest import quick_spec

    from study.run import rung_board
    from study.spec.model import load_spec

    spec = load_spec(quick_spec("board", scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}))
    with rung_board.board(spec, tmp_path, reports=4) as actor:
        assert actor is not None
        a = rung_board.population_rungs(spec, ["a-0", "a-1"], reports=4)
        b = rung_board.population_rungs(spec, ["b-0"], reports=4)
        assert a.stop(1, {0: 0.5, 1: 0.4}) == []
        assert b.stop(1, {0: 0.9}) == [0]  # judged against population a's configurations
    with rung_board.board(spec, tmp_path, reports=4):
        c = rung_board.population_rungs(spec, ["c-0"], reports=4)
        assert c.stop(1, {0: 0.95}) == [0]  # the first run's record: worse than 0.5, 0.4 and 0.9's cutoff
        assert rung_board.population_rungs(spec, ["b-0"], reports=4).stop(2, {0: 0.0}) == [0]  # stopped stays stopped
    off = load_spec(quick_spec("board-off", fuse="off", scheduler={"type": "asha"}))
    with rung_board.board(off, tmp_path, reports=4) as none:
        assert none is None and rung_board.population_rungs(off, ["x-0"], 4) is None  # Ray's ASHAScheduler's
