"""A sampler that learns from results sees results (issue 21): the searcher asks TPE, GP and
CMA-ES in rounds (study/plan/pacing.py), the plan shows the populations that makes, and a spec that
leaves such a sampler blind is warned about before anything runs.

The searcher is driven as Tune drives it (suggest, on_trial_result, on_trial_complete) on a real
Optuna study in a real SQLite results database, its results told by the study's own rule
(optuna_study.tell_ended); the end-to-end test runs a small TPE study on the session's Ray and
reads from Optuna's storage what each suggestion could have seen."""

from __future__ import annotations

import os

import pytest
from ray.tune.search import Searcher

from conftest import quick_spec, study_in_process
from study.plan import pacing
from study.run import optuna_study, searcher as search
from study.spec.model import load_spec


def _spec(name="paced", **overrides):
    return load_spec(quick_spec(name, **overrides))


def test_the_start_up_and_the_window_come_from_the_sampler_and_the_study_size():
    tpe = optuna_study.study_pacing(_spec(num_samples=30), per_trial=4)
    assert (tpe.startup, tpe.window) == (10, 5)  # TPE's n_startup_trials; ceil(20 / 4 rounds)
    own = optuna_study.study_pacing(_spec(num_samples=30, sampler={"type": "tpe", "options": {"n_startup_trials": 2}}))
    assert (own.startup, own.window) == (2, 7)
    gp = optuna_study.study_pacing(_spec(num_samples=14, sampler={"type": "gp"}))
    assert (gp.startup, gp.window) == (10, 1)
    cma = optuna_study.study_pacing(_spec(num_samples=30, sampler={"type": "cmaes"}), per_trial=6)
    assert (cma.startup, cma.window) == (6, 6)  # one generation of the batch's popsize at a time
    for free in ("random", "qmc"):
        assert optuna_study.study_pacing(_spec(sampler={"type": free})) is None
    grid = load_spec({**quick_spec("g"), "num_samples": None, "sampler": {"type": "grid"}, "search": {"lr": {"type": "grid", "values": [1e-3]}}})
    assert optuna_study.study_pacing(grid) is None


def test_populations_take_the_start_up_then_one_window_at_a_time():
    pace = pacing.pacing("tpe", 30, startup=10)
    assert pace.allowed(asked=0, pending=0) == 10
    assert pace.allowed(asked=8, pending=8) == 2  # start-up suggestions need no results
    assert pace.allowed(asked=10, pending=10) == 0
    assert pace.allowed(asked=10, pending=2) == 3
    # Two trials at once share the start-up and the window: each population its half, rounded up.
    shared = pacing.pacing("tpe", 30, startup=10, slots=2)
    assert shared.allowed(asked=0, pending=0) == 5 and shared.allowed(asked=5, pending=5) == 5
    assert shared.allowed(asked=10, pending=0) == 3 and shared.allowed(asked=13, pending=3) == 2

    def sizes(pace, per_trial, slots=1):
        return [h.configs for h in pacing.schedule(pace, [30], per_trial, slots, slots, lambda _, n: float(n))]

    # One trial at a time: each population is asked once the one before has ended (nothing pending).
    assert sizes(pace, 4) == [4, 4, 2, 4, 4, 4, 4, 4]  # window 5 > 4
    assert sizes(pace, 8) == [8, 2, 5, 5, 5, 5]
    assert sizes(None, 8) == [8, 8, 8, 6]
    # Two at a time: both slots get a population from the start, and share each window.
    both = sizes(shared, 8, slots=2)
    assert both[:4] == [5, 5, 3, 2] and max(both[4:]) == 3 and sum(both) == 30
    assert sizes(None, 8, slots=2) == [8, 8, 8, 6]


def test_the_plan_schedules_the_populations_the_searcher_hands_out(tmp_path):
    """`study plan`'s populations and their rounds are the searcher's: the real searcher, driven
    as Tune drives it (a free slot asks; a population's configurations are told when it ends, at
    the time the plan's schedule says), hands out the same populations at the same times."""
    spec = _spec(num_samples=17, sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}})
    per_trial, slots = 3, 2
    s, study = _driven(tmp_path, spec, per_trial, slots)
    assert (s._pace.startup, s._pace.window, s._pace.slots) == (3, 4, 2)
    planned = pacing.schedule(s._pace, [spec.trials], per_trial, slots, slots, lambda _, n: float(n))

    driven, training, now = [], {}, 0.0  # training: Ray trial id -> (end, table)
    while True:
        while len(training) < slots:
            tid = f"t{len(driven)}"
            got = s.suggest(tid)
            if got is None or got == Searcher.FINISHED:
                break
            table = got["population"]
            driven.append((len(table), now))
            training[tid] = (now + len(table), table)  # the plan's time: one second per configuration
        if not training:
            break
        now = min(end for end, _ in training.values())
        for tid in [t for t, (end, _) in training.items() if end == now]:
            _finish(study, training.pop(tid)[1])
            s.on_trial_complete(tid)
    assert driven == [(h.configs, h.start) for h in planned]
    assert driven[:2] == [(2, 0.0), (1, 0.0)]  # both trial slots start at once, sharing the start-up of 3
    assert sum(n for n, _ in driven) == 17
    assert len({start for _, start in driven}) >= 4  # the study waits for results, round after round


def test_the_plan_s_wall_time_counts_the_rounds_a_learning_sampler_waits_for():
    """Two trials at once on four cores (both at full speed): random search fills two populations
    of 15 at once; TPE's two slots share its 10 start-up suggestions, then each window of 5, every
    later population waiting for one before it to end. The plan's wall time is that schedule's,
    longer than the training time spread over the two slots."""
    from study.plan import sizing

    machine = sizing.Machine("four cores", 4.0, 0.0, 8 << 30)
    paced = sizing.make_plan(_spec(num_samples=30, max_concurrent_trials=2), machine)
    free = sizing.make_plan(_spec(num_samples=30, max_concurrent_trials=2, sampler={"type": "random"}), machine)
    assert paced.configs_per_trial == free.configs_per_trial == 15 and paced.parallel == free.parallel == 2
    assert [(h.configs, h.start) for h in free.schedule] == [(15, 0.0), (15, 0.0)]
    assert [(h.configs, h.start) for h in paced.schedule[:2]] == [(5, 0.0), (5, 0.0)]  # the start-up, shared
    assert {h.configs for h in paced.schedule[2:]} == {2, 3} and sum(h.configs for h in paced.schedule) == 30
    ends = {h.end for h in paced.schedule}
    assert all(h.start in ends for h in paced.schedule[2:])  # each asked once results came in
    assert paced.wall_seconds == max(ends) == paced.schedule[-1].end
    spread = sum(r.seconds * r.count for r in paced.rows) / paced.parallel
    assert paced.wall_seconds > spread


def test_a_spec_that_leaves_a_learning_sampler_blind_is_warned_about():
    blind = pacing.blind_warnings(optuna_study.study_pacing(_spec(num_samples=8)), 8, "sampler.options.n_startup_trials")
    assert len(blind) == 1 and "num_samples=8" in blind[0] and "n_startup_trials=10" in blind[0]
    assert "raise num_samples above 10" in blind[0]
    assert pacing.blind_warnings(optuna_study.study_pacing(_spec(num_samples=30)), 30, "x") == []
    assert pacing.blind_warnings(None, 3, "x") == []  # random search learns nothing: nothing to warn


def test_study_plan_warns_before_anything_runs_and_shows_the_paced_populations(tmp_path):
    spec = tmp_path / "tpe.yaml"
    spec.write_text("name: tpe8\ntask: addition\nsearch:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "num_samples: 8\nconfig: {updates: 40, report_every: 10, seq_length: 20}\n")
    done = study_in_process("plan", str(spec))
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stdout and "num_samples=8" in done.stdout and "n_startup_trials=10" in done.stdout
    spec.write_text(spec.read_text().replace("num_samples: 8", "num_samples: 30") + "sampler: {type: tpe, options: {n_startup_trials: 4}}\n")
    import json

    done = study_in_process("plan", str(spec), "--format", "json")
    run = json.loads(done.stdout)["run"]
    assert not [w for w in run["warnings"] if "sampler.type" in w]  # no blind-sampler warning
    sizes = [p["configurations"] for p in run["populations"] for _ in range(p["count"])]
    assert sum(sizes) == 30 and sizes[0] <= 4 and max(sizes[1:]) <= 7  # start-up 4, then windows of ceil(26/4)


def _driven(tmp_path, spec, per_trial, slots=1):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    s = search.searcher(spec, url, per_trial, optuna_study.batch_sampler(spec, per_trial), slots)
    return s, optuna_study.OptunaStudy.load(url, spec.name)


def _finish(study, table, value=0.5):
    for c in table:
        ot_id = next(t._trial_id for t in study.trials() if t.number == c["number"])
        optuna_study.tell_ended(study, ot_id, "completed", value)


def test_the_searcher_waits_for_results_and_never_when_nothing_runs(tmp_path):
    spec = _spec(num_samples=12, sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}})
    s, study = _driven(tmp_path, spec, per_trial=4)
    pace = s._pace
    assert (pace.startup, pace.window) == (3, 3)  # ceil(9 / 4 rounds)
    first = s.suggest("a")["population"]
    assert len(first) == 3  # the start-up only, though a population could take 4
    # Population "a" is running and none of its three has a result: the window is full.
    s.on_trial_result("a", {})
    assert s.suggest("b") is None
    _finish(study, first[:1])  # one result: one new suggestion is allowed
    second = s.suggest("b")["population"]
    assert len(second) == 1
    assert s.suggest("c") is None
    # Population "a" ends in Tune with two of its configurations never told (a driver that lost
    # them): they do not hold the study, since nothing can bring their results.
    s.on_trial_complete("a")
    third = s.suggest("c")["population"]
    assert len(third) == 2  # window 3 less second's one pending
    s.on_trial_complete("b")
    s.on_trial_complete("c")
    handed = len(first) + len(second) + len(third)
    while True:
        tid = f"p{handed}"
        got = s.suggest(tid)
        assert got is not None  # nothing live: never a wait
        if got == Searcher.FINISHED:
            break
        handed += len(got["population"])
        s.on_trial_complete(tid)
    assert handed == 12


@pytest.mark.parametrize("kind", ["random", "qmc"])
def test_samplers_that_do_not_learn_fill_populations_freely(tmp_path, kind):
    s, _ = _driven(tmp_path, _spec(num_samples=12, sampler={"type": kind}), per_trial=5)
    assert [len(s.suggest(t)["population"]) for t in "abc"] == [5, 5, 2]
    assert s.suggest("d") == Searcher.FINISHED


def test_a_tpe_study_asks_each_suggestion_after_the_start_up_with_results_in(ray_session, study_env):
    """A real fused TPE study: every configuration asked after the start-up had all but at most a
    window of the earlier ones finished in Optuna when it was asked, and the populations are no
    larger than the pacing allows."""
    import optuna

    from study import api
    from study.locations import resolve
    from study.run import runner

    raw = quick_spec("paced-tpe", num_samples=4, repeats=1, max_concurrent_trials=2,
                     sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 2}})
    raw["config"].update(updates=20, report_every=10)
    spec = load_spec(raw)
    loc = resolve(spec.name)
    assert runner.run(spec, loc) == "completed"
    window = optuna_study.study_pacing(spec).window
    assert window == 1
    trials = optuna.load_study(study_name=spec.name, storage=loc.results_db).trials
    assert len(trials) == 4
    for t in trials[2:]:
        earlier = [u for u in trials if u.number < t.number]
        unfinished = [u for u in earlier if u.datetime_complete is None or u.datetime_complete > t.datetime_start]
        assert len(unfinished) <= window, (t.number, [u.number for u in unfinished])
    sizes = api.trials(spec.name).groupby("population").size()
    assert sorted(sizes) == [1, 1, 1, 1]  # the start-up's two shared by the two trial slots, then one at a time


def test_a_population_whose_configurations_all_ended_holds_nothing_back(tmp_path):
    """A restored population Tune does not report complete to the searcher (its ConcurrencyLimiter
    passes that on only for trials it started): its last result, every configuration ended, is enough."""
    spec = _spec(num_samples=6, sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 2}})
    s, _ = _driven(tmp_path, spec, per_trial=2)
    first = s.suggest("a")["population"]
    s.on_trial_result("a", {"configs": [{"ended": False}, {"ended": True}]})
    assert s.suggest("b") is None  # window 1, two configurations without a result, "a" live
    s.on_trial_result("a", {"configs": [{"ended": True}] * len(first)})
    assert len(s.suggest("b")["population"]) == 1


def test_study_run_warns_of_a_blind_sampler_before_it_refuses_a_bad_location(tmp_path):
    """The warning is printed before the checks that may refuse the run: a spec with a blind TPE
    (8 configurations, 10 start-up suggestions) and a studies directory under a file is warned
    about, then refused, and nothing is created."""
    spec = tmp_path / "tpe.yaml"
    spec.write_text("name: tpe8\ntask: addition\nsearch:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "num_samples: 8\nconfig: {updates: 40, report_every: 10, seq_length: 20}\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = study_in_process("run", str(spec), "--dir", str(blocker / "studies"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if line.startswith("warning:") and "num_samples=8" in line]
    refused = [i for i, line in enumerate(lines) if line.startswith("error:") and "is a file, not a directory" in line]
    assert warned and refused and warned[0] < refused[0], done.stderr
    assert not (blocker.parent / "studies").exists() and blocker.read_text() == ""


def test_a_run_stopped_at_the_blind_sampler_warning_has_written_nothing(study_env):
    """A user who stops `study run` (Ctrl-C) as the warning appears: the study directory did not
    exist when it was printed, and does not after."""
    from rich.console import Console

    from study.locations import resolve
    from study.run import runner

    spec = _spec("blind-stopped", num_samples=8)
    loc = resolve(spec.name)
    seen: list[tuple[str, bool]] = []

    class StopsAtTheWarning(Console):
        def print(self, *objects, **kwargs):
            seen.append((str(objects[0]), loc.study_dir.exists()))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(spec, loc, StopsAtTheWarning(file=open(os.devnull, "w")))
    assert len(seen) == 1 and "num_samples=8" in seen[0][0] and seen[0][1] is False, seen
    assert not loc.study_dir.exists() and not study_env.exists()
