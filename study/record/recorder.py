"""The driver's Tune callback that records every configuration in the results DB and in MLflow.

A Ray trial trains a population of configurations (study/plan/population.py); what is recorded is per
configuration: one results-DB trial row (keyed by its configuration id) with its seeds as
members, one MLflow child run, and the population (the Ray trial) as a column and a tag on it.
Every write is idempotent (keyed by study and configuration id) and goes through a WriteQueue per
store (study/record/journal.py): a store that fails is retried, then journaled, and the study goes on;
what a trial ends as comes from study/record/outcome.py, the rule the searcher and the progress display
use too. The driver creates each trial's MLflow child run (the trial process only attaches
MLflow's system-metrics monitor to it), so a trial needs no MLflow credentials of its own.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from ray import tune

from study.record import outcome
from study.plan import population
from study.record import results
from study.run import searcher as search
from study.record import tracking
from study.record.journal import Journal, WriteQueue, scrub
from study.locations import Locations
from study.spec.model import StudySpec


def _timed(method: Any) -> Any:
    import functools

    @functools.wraps(method)
    def timed(self: "Recorder", *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - start

    return timed


class Recorder(tune.Callback):
    def __init__(self, spec: StudySpec, loc: Locations, study_id: int, experiment_id: str, parent_run_id: str,
                 journal: Journal):
        self.spec_dict = spec.model_dump(mode="json")
        self.study_id = study_id
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._open(spec, loc, journal)

    def _open(self, spec: StudySpec, loc: Locations, journal: Journal) -> None:
        self._spec = spec
        self._db_url, self._mlflow_uri = loc.results_db, loc.mlflow_uri
        self.db = WriteQueue("results-db", self._apply_db, journal)
        self.mlflow = WriteQueue("mlflow", self._apply_mlflow, journal)
        self._runs: dict[str, str] = {}
        self._metrics = tracking.MetricLog(loc.mlflow_uri, spec.metric, spec.mode)
        self.finished: dict[str, str] = {}
        # The driver's bookkeeping (these callbacks, the writes in them) against the trials'
        # compute (Tune's time_this_iter_s summed): logged on the parent run at the end.
        self.busy_s = 0.0
        self.trial_s = 0.0
        # Per trial: its set-up before the first update, and the gap since the previous trial in
        # the same worker process (study/run/trial.py, _Overhead).
        self.setup_s: list[float] = []
        self.gap_s: list[float] = []

    # Tune pickles its callbacks into the experiment directory: only settings without a secret
    # travel; `study resume` hands the restored run fresh recorders.
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("spec_dict", "study_id", "experiment_id", "parent_run_id")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- Tune's callbacks ------------------------------------------------------------------------

    @_timed
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from study.plan.population import member_table, solo_config

        for c in member_table(trial.config):
            cfg = solo_config(self._spec, c.params)
            dumped = cfg.model_dump(mode="json")
            cid = c.config_id
            self.db.write({"kind": "adopt", "trial_id": cid, "optuna": c.number})
            self.mlflow.write({"kind": "adopt", "trial_id": cid, "optuna": c.number})
            values = dict(params=c.params, config=dumped, members=cfg.population_size, optuna_trial_number=c.number,
                          population=trial.trial_id)
            self.db.write({"kind": "start", "trial_id": cid, "started_at": _now(), "values": values})
            # When the run started and ended travel with the writes: a journaled write lands later.
            self.mlflow.write({"kind": "run", "trial_id": cid, "optuna": c.number, "config": _shown(dumped),
                               "sampled": c.params, "population": trial.trial_id, "started_ms": _now_ms()})

    def _unfinished(self, trial: Any) -> list[str]:
        from study.plan.population import member_table

        return [c.config_id for c in member_table(trial.config) if c.config_id not in self.finished]

    @_timed
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for cid in self._unfinished(trial):
            self.db.write({"kind": "trial", "trial_id": cid,
                           "values": {"state": "running", "error_message": _error_text(trial)}})

    @_timed
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.trial_s += float(result.get("time_this_iter_s") or 0.0)
        for key, into in (("setup_s", self.setup_s), ("since_previous_s", self.gap_s)):
            if result.get(key) is not None:
                into.append(float(result[key]))
        stamp = int(result.get("timestamp", time.time()) * 1000)
        for c in population.reported(result).values():
            cid, step = c["config_id"], int(c["step"])
            if cid in self.finished:
                continue  # ended at an earlier report: its figures are frozen there
            self.db.write({"kind": "points", "trial_id": cid, "step": step, "members": c.get("members", [])})
            values = dict(
                last_step=step,
                metric_value=c.get("metric_value"),
                objective=c.get("objective"),
                members_diverged=int(c.get("members_diverged", 0)),
                # Where the population ran: Tune fills in hostname, node_ip and pid; ray_node_id
                # comes from trial.py.
                hostname=result.get("hostname"),
                node_ip=result.get("node_ip"),
                ray_node_id=result.get("ray_node_id"),
                worker_pid=result.get("pid"),
            )
            self.db.write({"kind": "report", "trial_id": cid, "values": values})
            self.mlflow.write({"kind": "metrics", "trial_id": cid, "step": step,
                               "metrics": tracking.metrics_at_step(c, self._spec.metric), "timestamp": stamp})
            if c.get("ended"):
                self._finish(cid, outcome.trial_state(c), c)

    @_timed
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = population.reported(trial.last_result)
        for cid in self._unfinished(trial):
            self._finish(cid, outcome.trial_state(last.get(cid)), last.get(cid))

    @_timed
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        last = population.reported(trial.last_result)
        for cid in self._unfinished(trial):
            self._finish(cid, "failed", last.get(cid), error)

    def _finish(self, cid: str, state: str, last: dict | None, error: str | None = None) -> None:
        self.finished[cid] = state
        self.db.write({"kind": "finish", "trial_id": cid, "state": state, "ended_at": _now(), "error": error})
        tags = {"objective": str((last or {}).get("objective"))}
        if error:
            tags["error"] = error[-5000:]
        self.mlflow.write({"kind": "finish", "trial_id": cid, "state": state, "tags": tags, "ended_ms": _now_ms()})

    # --- the writes ------------------------------------------------------------------------------

    def _apply_db(self, w: dict[str, Any]) -> None:
        url, sid, tid, kind = self._db_url, self.study_id, w["trial_id"], w["kind"]
        if kind == "adopt":
            results.adopt_trial(url, sid, w["optuna"], tid)
        elif kind == "start":
            results.start_trial(url, sid, tid, w["started_at"], **w["values"])
        elif kind == "trial":
            results.upsert_trial(url, sid, tid, **w["values"])
        elif kind == "points":
            results.record_trial_points(url, sid, tid, w["step"], w["members"])
        elif kind == "report":
            results.report_trial(url, sid, tid, self._spec.mode, **w["values"])
        elif kind == "finish":
            results.finish_trial(url, sid, tid, w["state"], w["ended_at"], w.get("error"))
        elif kind == "study":
            results.set_study_state(url, self._spec.name, w["state"], state_reason=w.get("reason"))

    def _run_id(self, tid: str) -> str | None:
        if tid not in self._runs:
            found = tracking.find_trial_run(self._mlflow_uri, self.experiment_id, tid)
            if found is None:
                return None
            self._runs[tid] = found
        return self._runs[tid]

    def _apply_mlflow(self, w: dict[str, Any]) -> None:
        uri, tid, kind = self._mlflow_uri, w["trial_id"], w["kind"]
        if kind == "adopt":
            tracking.adopt_trial_run(uri, self.experiment_id, w["optuna"], tid)
        elif kind == "run":
            self._runs[tid] = tracking.ensure_trial_run(
                uri, self.experiment_id, self.parent_run_id, self._spec.name, tid, w["optuna"], w["config"], w["sampled"],
                w.get("started_ms"), w.get("population"),
            )
            search.note_mlflow_run(tid, self._runs[tid])  # the Optuna trial's user attribute
            self.db.write({"kind": "trial", "trial_id": tid, "values": {"mlflow_run_id": self._runs[tid]}})
        elif kind in ("metrics", "finish"):
            run_id = self._run_id(tid)
            if run_id is None:
                raise RuntimeError(f"no MLflow run for trial {tid} yet")
            if kind == "metrics":
                self._metrics.log(run_id, w["step"], w["metrics"], w["timestamp"])
            else:
                tracking.finish_trial(uri, run_id, w["state"], w["tags"], w.get("ended_ms"))

    def cost(self) -> dict[str, float]:
        """This run's overheads, for the parent run (docs/benchmarks.md, "Study throughput")."""
        out = {"driver_bookkeeping_s": self.busy_s, "trial_compute_s": self.trial_s}
        if self.setup_s:
            out.update(trial_setup_s_mean=sum(self.setup_s) / len(self.setup_s), trial_setup_s_max=max(self.setup_s))
        if self.gap_s:
            out.update(trial_gap_s_mean=sum(self.gap_s) / len(self.gap_s), trial_gap_s_max=max(self.gap_s))
        return out

    # --- the end ---------------------------------------------------------------------------------

    def drain(self) -> str | None:
        """Lands what is journaled; the reason if a store is still down, else None."""
        problems = []
        for queue, what in ((self.db, "results database"), (self.mlflow, "MLflow tracking store")):
            if not queue.drain():
                problems.append(f"{what} unreachable ({queue.error}); {len(queue.backlog)} write(s) kept")
        return "; ".join(problems) or None


def _error_text(trial: Any) -> str | None:
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            with open(path) as f:
                return scrub(f.read()[-4000:])
    except Exception:
        pass
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _shown(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as the MLflow runs table shows it: an ``init_scale`` left to the task's default
    (None) shown as the value training uses (the RNN problem's input scale, SI's multiplier 1)."""
    if cfg.get("init_scale") is not None:
        return cfg
    from trainables.data.rnn_problems import PROBLEMS

    problem = PROBLEMS.get(cfg.get("task"))
    return {**cfg, "init_scale": problem.input_scale if problem is not None else 1.0}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

