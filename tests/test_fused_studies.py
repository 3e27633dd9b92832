"""Fused studies: configurations that share a computation's shape train as one population per Ray
trial, and every record stays per configuration (docs/study-specs.md, "Fused studies").

Real Ray, MLflow and SQLite with tiny float64 budgets. The reference for a fused configuration is
the same configuration run with ``fuse: off`` (one configuration per Ray trial): the per-step
metrics must agree to float64 rounding (a population of another size may take another kernel path,
so bit equality across sizes is not promised; see tests/test_training.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from conftest import QUICK_ADDITION
from study import api
from study.plan import population
from study.run import runner
from study.locations import resolve
from study.spec.expand import check_configs
from study.spec.model import load_spec

LRS = [1e-3, 3e-3, 1e-2, 1e8]  # the last one diverges at updates 16 and 17 (seeds 0 and 1)
BAD = LRS[-1]
STEPS = [10, 20, 30, 40, 50, 60]
CONFIG = {k: v for k, v in QUICK_ADDITION.items() if k not in ("task", "lr")} | {
    "dtype": "float64", "batch_size": 20, "updates": 60}


def _grid(name: str, **overrides):
    spec = {
        "name": name,
        "task": "addition",
        "config": dict(CONFIG),
        "search": {"lr": {"type": "grid", "values": LRS}},
        "sampler": {"type": "grid", "seed": 0},
        "repeats": 2,
        "max_concurrent_trials": 1,
    }
    spec.update(overrides)
    return load_spec(spec)


def _run(spec, root):
    loc = resolve(spec.name, root, None, None, None)
    assert runner.run(spec, loc) == "completed"
    return loc


@pytest.fixture(scope="module")
def grid_runs(ray_session, tmp_path_factory):
    """The same grid fused (FIFO), with fuse: off, and fused with member-level ASHA rungs."""
    root = tmp_path_factory.mktemp("fused")
    fused = _run(_grid("grid-fused"), root)
    solo = _run(_grid("grid-solo", fuse="off"), root)
    asha = _run(_grid("grid-asha", scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2}), root)
    return root, fused, solo, asha


def _points(loc):
    m = api.metrics(loc.name, results_db=loc.results_db)
    t = api.trials(loc.name, results_db=loc.results_db)[["trial_id", "lr"]].rename(columns={"lr": "config_lr"})
    return m.merge(t, on="trial_id").set_index(["config_lr", "step", "member"]).sort_index()


def test_a_fused_grid_trains_its_configurations_in_one_trial_and_records_each_as_if_alone(grid_runs):
    root, fused, solo, _ = grid_runs
    f = api.trials(fused.name, results_db=fused.results_db).set_index("lr").sort_index()
    s = api.trials(solo.name, results_db=solo.results_db).set_index("lr").sort_index()
    # One population of four configurations (two seeds each) against four trials of one.
    assert f["population"].nunique() == 1 and s["population"].nunique() == 4
    assert set(f["members"]) == set(s["members"]) == {2}
    assert list(f["state"]) == list(s["state"]) == ["completed"] * 3 + ["diverged"]
    assert all(tid.startswith(pop) for tid, pop in zip(f["trial_id"], f["population"]))
    assert f["worker_pid"].nunique() == 1 and f["hostname"].notna().all()
    np.testing.assert_allclose(f["metric_value"], s["metric_value"], rtol=1e-12)
    assert math.isinf(f.loc[BAD, "objective"]) and math.isinf(s.loc[BAD, "objective"])

    pf, ps = _points(fused), _points(solo)
    assert list(pf.index) == list(ps.index)  # the same configurations, steps and members
    for col in ("error", "loss", "mu", "lr", "seed"):
        np.testing.assert_allclose(pf[col].astype(float), ps[col].astype(float), rtol=1e-12)
    assert list(pf["status"]) == list(ps["status"])

    for loc in (fused, solo):
        ot = optuna.load_study(study_name=loc.name, storage=loc.results_db)
        by_lr = {t.params["lr"]: t for t in ot.trials}
        assert sorted(by_lr) == sorted(LRS) and len(ot.trials) == 4
        assert all(by_lr[lr].state == optuna.trial.TrialState.COMPLETE for lr in LRS)
        assert math.isinf(by_lr[BAD].value) and by_lr[BAD].user_attrs["state"] == "diverged"
        trials = api.trials(loc.name, results_db=loc.results_db).set_index("lr")
        for lr, t in by_lr.items():
            assert t.user_attrs["trial_id"] == trials.loc[lr, "trial_id"]
            assert t.user_attrs["ray_trial_id"] == trials.loc[lr, "population"]
            assert t.number == trials.loc[lr, "optuna_trial_number"]
            if lr != BAD:
                assert t.value == pytest.approx(trials.loc[lr, "metric_value"], rel=1e-12)

        c = MlflowClient(loc.mlflow_uri)
        exp = c.get_experiment_by_name(loc.name)
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
        assert sorted(float(r.data.params["lr"]) for r in runs) == sorted(LRS)
        for r in runs:
            row = trials[trials["trial_id"] == r.data.tags["trial_id"]].iloc[0]
            assert r.data.tags["population"] == row["population"]
            assert r.data.tags["state"] == row["state"]
            steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "error"))
            assert steps == (STEPS[:2] if row.name == BAD else STEPS)


def test_member_rungs_prune_inside_the_population_and_the_survivors_run_on_unchanged(grid_runs):
    _, _, solo, asha = grid_runs
    a = api.trials(asha.name, results_db=asha.results_db).set_index("lr").sort_index()
    assert a["population"].nunique() == 1
    # Rungs at reports 2 and 4: they stop what Ray
    # Tune's ASHAScheduler stops when it is given the same reports in the same order (each report's
    # configurations in table order; the diverged one only while it ran).
    assert a.loc[BAD, "state"] == "diverged"
    assert sorted(a["state"]) == ["completed", "diverged", "pruned", "pruned"]
    pruned = a[a["state"] == "pruned"]
    assert dict(zip(pruned["trial_id"], pruned["last_step"])) == _ray_asha_stops(asha, grace_period=2, rf=2)
    # The study's record, where `study resume` takes it up (study/run/rung_board.py).
    record = json.loads((asha.study_dir / "rungs.json").read_text())
    assert sorted(record["stopped"]) == sorted(pruned["trial_id"])
    survivor = a[a["state"] == "completed"].index[0]
    assert a.loc[survivor, "last_step"] == 60

    # What each configuration recorded up to where it stopped equals its run alone (fuse: off, FIFO).
    pa, ps = _points(asha), _points(solo)
    ps = ps.loc[pa.index]
    np.testing.assert_allclose(pa["error"], ps["error"], rtol=1e-12)
    np.testing.assert_allclose(pa["loss"], ps["loss"], rtol=1e-12)
    last = pa.groupby(level=0)["status"].last()
    assert set(last[pruned.index]) == {"pruned"}

    ot = optuna.load_study(study_name=asha.name, storage=asha.results_db)
    for t in ot.trials:
        lr = t.params["lr"]
        want = {"completed": "COMPLETE", "diverged": "COMPLETE", "pruned": "PRUNED"}[a.loc[lr, "state"]]
        assert t.state.name == want and t.user_attrs["state"] == a.loc[lr, "state"]
        if want == "PRUNED":  # Optuna's value of a pruned trial: its last intermediate value
            assert t.value is not None and t.value == pytest.approx(a.loc[lr, "metric_value"])
            assert max(t.intermediate_values) == a.loc[lr, "last_step"]
    assert api.trials(asha.name, results_db=asha.results_db)["state"].isin(["pruned"]).sum() == 2


def test_a_tpe_study_asks_in_batches_and_records_what_unfused_records(ray_session, tmp_path):
    """TPE's first suggestions are its seeded random start-up draws, so fused (batches of two,
    constant liar) and unfused studies try the same configurations."""
    base = {
        "task": "addition",
        "config": dict(CONFIG),
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"type": "tpe", "seed": 3},
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "repeats": 2,
    }
    fused = _run(load_spec({**base, "name": "tpe-fused"}), tmp_path)
    solo = _run(load_spec({**base, "name": "tpe-solo", "fuse": "off"}), tmp_path)
    f = api.trials(fused.name, results_db=fused.results_db).set_index("lr").sort_index()
    s = api.trials(solo.name, results_db=solo.results_db).set_index("lr").sort_index()
    assert f["population"].nunique() == 2 and s["population"].nunique() == 4
    np.testing.assert_allclose(f.index, s.index, rtol=1e-15)
    np.testing.assert_allclose(f["metric_value"], s["metric_value"], rtol=1e-12)
    pf, ps = _points(fused), _points(solo)
    np.testing.assert_allclose(pf["error"], ps["error"].values, rtol=1e-12)
    ot = optuna.load_study(study_name=fused.name, storage=fused.results_db)
    assert sorted(t.number for t in ot.trials) == sorted(f["optuna_trial_number"]) == [0, 1, 2, 3]
    assert {t.state.name for t in ot.trials} == {"COMPLETE"}


def test_a_cmaes_study_trains_one_cma_generation_per_population(ray_session, tmp_path):
    """CMA-ES asked for a population at once gets popsize = the population's configurations, so
    after its start-up batch (asked before anything completed: Optuna samples it independently)
    every population is exactly one CMA-ES generation, told to the optimizer as a whole."""
    spec = load_spec({
        "name": "cma-fused",
        "task": "addition",
        "config": {**CONFIG, "updates": 20},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "spectral_radius": {"type": "float", "low": 0.8, "high": 1.2}},
        "sampler": {"type": "cmaes", "seed": 0},
        "num_samples": 12,
        "max_members": 4,
        "max_concurrent_trials": 1,
    })
    loc = _run(spec, tmp_path)
    t = api.trials(spec.name, results_db=loc.results_db).set_index("optuna_trial_number").sort_index()
    assert list(t.index) == list(range(12)) and set(t["state"]) == {"completed"}
    ot = optuna.load_study(study_name=spec.name, storage=loc.results_db)
    generation = {tr.number: tr.system_attrs.get("cma:generation") for tr in ot.trials}
    by_population = t.groupby("population", sort=False).apply(lambda g: sorted(g.index))
    assert sorted(map(tuple, by_population)) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    assert [generation[n] for n in range(12)] == [None] * 4 + [0] * 4 + [1] * 4
    assert {tr.state.name for tr in ot.trials} == {"COMPLETE"}
    for tr in ot.trials:  # each configuration's own value, at its own steps
        assert tr.value == pytest.approx(t.loc[tr.number, "metric_value"], rel=1e-12)
        assert tr.params["lr"] == pytest.approx(t.loc[tr.number, "lr"], rel=1e-15)


def test_configurations_of_different_shapes_never_share_a_population(ray_session, tmp_path):
    spec = load_spec({
        "name": "shapes",
        "task": "addition",
        "config": {k: v for k, v in CONFIG.items() if k != "batch_size"},
        "search": {"batch_size": {"type": "grid", "values": [10, 20]}, "lr": {"type": "grid", "values": [1e-3, 1e-2]},
                   "task": {"type": "grid", "values": ["addition", "mem5"]}},
        "sampler": "grid",
        "max_concurrent_trials": 1,
    })
    loc = _run(spec, tmp_path)
    t = api.trials(spec.name, results_db=loc.results_db)
    assert len(t) == 8
    shapes = t.groupby("population").apply(lambda g: g[["task", "batch_size"]].drop_duplicates().shape[0])
    assert set(shapes) == {1}  # one shape per population
    assert t["population"].nunique() == 4  # each shape's two learning rates together


def test_sgd_cm_and_nag_share_a_shape_and_other_optimizers_do_not():
    spec = _grid("opt", search={"optimizer": {"type": "grid", "values": ["sgd", "cm", "nag", "adam", "rmsprop"]}})
    shapes = {o: population.shape_key(spec, {"optimizer": o}) for o in ("sgd", "cm", "nag", "adam", "rmsprop")}
    assert shapes["sgd"] == shapes["cm"] == shapes["nag"]
    assert len({shapes["nag"], shapes["adam"], shapes["rmsprop"]}) == 3
    table = [population.Configuration(f"t-{j}", j, {"optimizer": o}) for j, o in enumerate(("sgd", "cm", "nag"))]
    cfg = population.training_config(spec, table)
    assert cfg.member_values("optimizer") == ["sgd", "sgd", "cm", "cm", "nag", "nag"]  # two seeds each
    assert cfg.member_values("seed") == [0, 1] * 3
    with pytest.raises(ValueError, match="different shapes"):
        population.training_config(spec, [table[0], population.Configuration("t-3", 3, {"optimizer": "adam"})])


def test_members_per_trial_follow_max_members_repeats_and_the_trials_that_can_run_at_once():
    spec = _grid("count", max_members=4)
    cfg = check_configs(spec)
    assert population.configs_per_trial(spec, cfg, slots=1) == 2  # 4 members / 2 seeds
    assert population.configs_per_trial(spec, cfg, slots=4) == 1  # four configurations, four slots
    assert population.configs_per_trial(_grid("off", fuse="off"), cfg, slots=1) == 1
    big = _grid("big", repeats=1)
    assert population.configs_per_trial(big, cfg, slots=1) == 4  # the whole grid: below the default cap
    # As even as whole rounds of the slots allow: 25 configurations at up to 8 a trial on 2 slots
    # train as 7, 7, 7, 4 (two rounds as long as a population of 7), not 8, 8, 8, 1 (the second
    # round as long as 8, beside a population of 1).
    lrs25 = {"lr": {"type": "grid", "values": [round(1e-4 * (k + 1), 6) for k in range(25)]}}
    wide = _grid("wide", search=lrs25, max_members=16)
    assert wide.trials == 25 and population.configs_per_trial(wide, cfg, slots=2) == 7
    assert population.configs_per_trial(wide, cfg, slots=1) == 7  # one slot: the same 4 trials, evened out
    # The task's memory estimate bounds the default: a member of mem5 (T = 200) with minibatches of
    # 1000 in float64 keeps 4 x 200 x 1000 x 100 x 8 bytes = 640 MB of BPTT activations, and with
    # its minibatch and evaluation set about 720 MB: 2 fit 2 GiB (tests/test_memory_limits.py).
    heavy = check_configs(load_spec({**_grid("heavy").model_dump(mode="json"), "task": "mem5",
                                            "config": {"dtype": "float64", "batch_size": 1000}}))
    assert 640e6 < population.member_bytes(heavy) < 800e6
    assert population.default_max_members(heavy) == 2


def _ray_asha_stops(loc, grace_period, rf):
    """The configurations Ray Tune's ASHAScheduler stops (id -> step) given a study's recorded
    reports: each configuration's mean error over its seeds at each step it ran at."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler

    m = api.metrics(loc.name, results_db=loc.results_db)
    sched = ASHAScheduler(time_attr="training_iteration", metric="v", mode="min", max_t=len(STEPS),
                          grace_period=grace_period, reduction_factor=rf)
    ids = sorted(m["trial_id"].unique(), key=lambda c: int(c.rsplit("-", 1)[1]))  # table order
    trials = {c: Trial("population", config={}, trial_id=c, stub=True) for c in ids}
    for t in trials.values():
        sched.on_trial_add(None, t)
    stopped = {}
    for report, step in enumerate(STEPS[:-1], 1):
        for c in ids:
            rows = m[(m["trial_id"] == c) & (m["step"] == step)]
            if c in stopped or rows.empty or (rows["status"] == "diverged").any():
                continue
            if sched.on_trial_result(None, trials[c], {"training_iteration": report, "v": rows["error"].mean()}) == "STOP":
                stopped[c] = step
    return stopped


def test_member_rungs_judge_each_configuration_against_the_whole_study_at_its_rung():
    """Ray Tune's ASHA rule (tests/test_rung_board.py checks it against Ray's own scheduler): at a
    rung, a configuration stops when it is worse than the (1 - 1/rf) percentile of every value
    recorded there before it, in any population; the first arrival goes on."""
    study = population.AshaRule(grace_period=1, reduction_factor=3, max_t=10, mode="min")
    assert study.milestones == [9, 3, 1]
    first = population.MemberRungs(1, 3, 10, "min", config_ids=["a-0", "a-1"], board=study)
    assert first.stop(1, {0: 0.9, 1: 0.5}) == []  # a-0 first; a-1 better than the cutoff, 0.9
    assert first.stop(2, {0: 0.9, 1: 0.5}) == []  # not a rung
    second = population.MemberRungs(1, 3, 10, "min", config_ids=["b-0"], board=study)
    # A population of one is judged too: 0.7 is worse than the cutoff of [0.9, 0.5] (0.633 by nanpercentile).
    assert second.stop(1, {0: 0.7}) == [0]
    assert population.MemberRungs(1, 2, 10, "max", board=population.AshaRule(1, 2, 10, "max")).stop(
        1, {0: 0.5, 1: 0.1}) == [1]


def test_batched_asks_get_a_constant_liar_for_tpe_and_a_popsize_for_cmaes_unless_the_spec_sets_them():
    from study.run import optuna_study

    def spec(kind, **options):
        return load_spec({"name": "s", "task": "addition", "sampler": {"type": kind, "options": options},
                          "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})

    assert optuna_study.batch_sampler(spec("tpe"), per_trial=4)._constant_liar is True
    assert optuna_study.batch_sampler(spec("tpe", constant_liar=False), per_trial=4)._constant_liar is False
    assert optuna_study.batch_sampler(spec("cmaes"), per_trial=6)._popsize == 6
    assert optuna_study.batch_sampler(spec("cmaes", popsize=10), per_trial=6)._popsize == 10


def test_a_resumed_population_stops_again_what_it_had_stopped_at_the_checkpointed_report(tmp_path):
    """A checkpoint holds the members as they were before the stops of its own report: resumed from
    it (saved and loaded as a trial does), the trial returns those members again so the trainer
    drops them (it ignores ended ones), and what ended before stays frozen where it ended."""
    import torch
    from ray import tune

    from trainables.api import MemberMetrics, Report

    from study.run.trial import CHECKPOINT_FILE, PopulationReporter, _load_checkpoint

    spec = _grid("resumed", scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    table = [population.Configuration(f"t-{j}", j, {"lr": lr}) for j, lr in enumerate(LRS[:3])]
    # The study's record (study/run/rung_board.py), where another population reached rung 2 first.
    study = population.AshaRule(1, 2, max_t=6, mode="min")
    study.decide("q-0", 2, 0.2)
    reporter = PopulationReporter(spec, table, seeds=[0, 1] * 3,
                                  rungs=population.MemberRungs(1, 2, 6, "min", [c.config_id for c in table], board=study))

    def report(step, errors, status=("running",) * 6):
        members = tuple(MemberMetrics(k, e, e, 0.9, 1e-3, s) for k, (e, s) in enumerate(zip(errors, status)))
        return Report(step=step, members=members, final=False, checkpoint=dict)

    # Rungs fall at reports 1, 2 and 4.
    result, stop = reporter.result(report(10, [0.5, 0.5, 0.1, 0.1, 0.9, 0.9]))
    assert stop == [4, 5]  # rung 1: 0.5 first, 0.1 better than it; 0.9 worse than their median stops
    assert [c["ended"] for c in result["configs"]] == [False, False, True]
    assert result["configs"][2]["members"][0]["status"] == "pruned"
    pruned = ("running",) * 4 + ("pruned",) * 2  # the trainer dropped config 2's members
    second = report(20, [0.5, 0.5, 0.1, 0.1, 0.9, 0.9], pruned)
    _, stop = reporter.result(second)
    assert stop == [0, 1]  # rung 2: config 0 (0.5) is worse than q-0's 0.2 and stops; config 1 goes on
    # The checkpoint of report 2, as run_trial writes it, and read back by the trial's loader.
    saved = tmp_path / "checkpoint_000001"
    saved.mkdir()
    torch.save({**second.checkpoint(), **reporter.checkpoint_state()}, saved / CHECKPOINT_FILE)
    resumed = PopulationReporter(spec, table, seeds=[0, 1] * 3,
                                 rungs=population.MemberRungs(1, 2, 6, "min", [c.config_id for c in table], board=study))
    resumed.resume(_load_checkpoint(tune.Checkpoint.from_directory(str(saved))))
    # The trainer restored config 0's members as they were before report 2's stop: running. The
    # next report, 3, is no rung: nothing new stops, but config 0 is stopped again.
    _, again = resumed.result(report(30, [0.4, 0.4, 0.1, 0.1, 0.9, 0.9], pruned))
    assert again == [0, 1]
    ended = {c.config_id: c for c in resumed.configs(report(40, [0.0] * 6, pruned))}
    assert (ended["t-0"].step, ended["t-0"].ended) == (20, True)
    assert (ended["t-2"].step, ended["t-2"].ended) == (10, True)
    assert ended["t-1"].step == 40 and not ended["t-1"].ended
