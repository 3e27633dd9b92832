"""Records every configuration in the results DB and in MLflow, from the typed records the study's
Tune callback (study/run/feed.py) hands it: a configuration's start, its reports
(``outcome.ConfigurationReport``) and its end (``outcome.ConfigurationEnd``).

A Ray trial trains a population of configurations (study/plan/population.py); what is recorded is per
configuration: one results-DB trial row (keyed by its configuration id) with its seeds as
members, one MLflow child run, and the population (the Ray trial) as a column and a tag on it.
Every write is idempotent (keyed by study and configuration id) and goes through a WriteQueue per
store (study/record/journal.py) as a small typed write (``StartRow``, ``LogMetrics``...): a store
that fails is retried, then journaled, and the study goes on. What a configuration ends as comes
from study/record/outcome.py, the rule the searcher and the progress display use too. The driver creates each trial's MLflow child run (the trial process only attaches
MLflow's system-metrics monitor to it), so a trial needs no MLflow credentials of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from study.record import results, tracking
from study.record.journal import Journal, WriteQueue, scrub
from study.record.outcome import ConfigurationEnd, ConfigurationReport
from study.locations import Locations
from study.spec.model import StudySpec
from trainables.tasks import resolved_config

if TYPE_CHECKING:
    from study.plan.population import Configuration


class RunIds(dict[str, str]):
    """Configuration id -> its MLflow child run: noted by the recorder as it creates (or finds) the
    runs, read by the searcher's Optuna reports for the trial's ``mlflow_run_id`` user attribute
    (optuna-dashboard links a trial to its run with it). The runner hands one to both."""


# --- the writes: one small record each, journaled as {"kind": ..., its fields} ----------------------
# The journal (study/record/journal.py) keeps a write that has not landed as plain JSON; the field
# names are those earlier versions wrote, so a journal they left replays here.


@dataclass(frozen=True)
class _Write:
    kind: ClassVar[str]
    trial_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def apply(self, rec: "Recorder") -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class AdoptRow(_Write):
    """The results-DB row of an Optuna trial a new Tune trial took over after a hard kill, re-keyed."""

    kind: ClassVar[str] = "adopt"
    optuna: int

    def apply(self, rec: "Recorder") -> None:
        results.adopt_trial(rec.db_url, rec.study_id, self.optuna, self.trial_id)


@dataclass(frozen=True)
class StartRow(_Write):
    kind: ClassVar[str] = "start"
    started_at: dt.datetime
    values: dict[str, Any]

    def apply(self, rec: "Recorder") -> None:
        results.start_trial(rec.db_url, rec.study_id, self.trial_id, self.started_at, **self.values)


@dataclass(frozen=True)
class UpdateRow(_Write):
    kind: ClassVar[str] = "trial"
    values: dict[str, Any]

    def apply(self, rec: "Recorder") -> None:
        results.upsert_trial(rec.db_url, rec.study_id, self.trial_id, **self.values)


@dataclass(frozen=True)
class PointsRows(_Write):
    """Every member's figures at one step."""

    kind: ClassVar[str] = "points"
    step: int
    members: list[dict[str, Any]]

    def apply(self, rec: "Recorder") -> None:
        results.record_trial_points(rec.db_url, rec.study_id, self.trial_id, self.step, self.members)


@dataclass(frozen=True)
class ReportRow(_Write):
    kind: ClassVar[str] = "report"
    values: dict[str, Any]

    def apply(self, rec: "Recorder") -> None:
        results.report_trial(rec.db_url, rec.study_id, self.trial_id, rec.spec.mode, **self.values)


@dataclass(frozen=True)
class FinishRow(_Write):
    kind: ClassVar[str] = "finish"
    state: str
    ended_at: dt.datetime
    error: str | None = None

    def apply(self, rec: "Recorder") -> None:
        results.finish_trial(rec.db_url, rec.study_id, self.trial_id, self.state, self.ended_at, self.error)


@dataclass(frozen=True)
class StudyState(_Write):
    """The study's own state and reason (``trial_id`` is empty: the write is the study's)."""

    kind: ClassVar[str] = "study"
    state: str
    reason: str | None = None

    def apply(self, rec: "Recorder") -> None:
        results.set_study_state(rec.db_url, rec.spec.name, self.state, state_reason=self.reason)


@dataclass(frozen=True)
class AdoptRun(_Write):
    kind: ClassVar[str] = "adopt"
    optuna: int

    def apply(self, rec: "Recorder") -> None:
        tracking.adopt_trial_run(rec.mlflow_uri, rec.experiment_id, self.optuna, self.trial_id)


@dataclass(frozen=True)
class CreateRun(_Write):
    """The configuration's MLflow child run; when it started travels with it (a journaled write
    lands later)."""

    kind: ClassVar[str] = "run"
    optuna: int
    config: dict[str, Any]
    sampled: dict[str, Any]
    population: str | None = None
    started_ms: int | None = None

    def apply(self, rec: "Recorder") -> None:
        run_id = tracking.ensure_trial_run(
            rec.mlflow_uri, rec.experiment_id, rec.parent_run_id, rec.spec.name, self.trial_id, self.optuna,
            self.config, self.sampled, self.started_ms, self.population,
        )
        rec.run_ids[self.trial_id] = run_id
        rec.db.write(UpdateRow(self.trial_id, {"mlflow_run_id": run_id}).to_dict())


@dataclass(frozen=True)
class LogMetrics(_Write):
    kind: ClassVar[str] = "metrics"
    step: int
    metrics: dict[str, float]
    timestamp: int

    def apply(self, rec: "Recorder") -> None:
        rec.metrics.log(rec.run_id(self.trial_id), self.step, self.metrics, self.timestamp)


@dataclass(frozen=True)
class FinishRun(_Write):
    kind: ClassVar[str] = "finish"
    state: str
    tags: dict[str, str]
    ended_ms: int | None = None

    def apply(self, rec: "Recorder") -> None:
        tracking.finish_trial(rec.mlflow_uri, rec.run_id(self.trial_id), self.state, self.tags, self.ended_ms)


DB_WRITES = {w.kind: w for w in (AdoptRow, StartRow, UpdateRow, PointsRows, ReportRow, FinishRow, StudyState)}
MLFLOW_WRITES = {w.kind: w for w in (AdoptRun, CreateRun, LogMetrics, FinishRun)}


def decode(writes: dict[str, type[_Write]], entry: dict[str, Any]) -> _Write:
    """A journaled write back as its record (fields an earlier version did not write take their defaults)."""
    cls = writes[entry["kind"]]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in entry.items() if k in names})


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


class Recorder:
    """Records each configuration's start, reports and end (handed to it as typed records by the
    study's Tune callback, study/run/feed.py) in the results DB and in MLflow."""

    def __init__(self, spec: StudySpec, loc: Locations, study_id: int, experiment_id: str, parent_run_id: str,
                 journal: Journal, run_ids: RunIds | None = None):
        self.spec = spec
        self.study_id = study_id
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.db_url, self.mlflow_uri = loc.results_db, loc.mlflow_uri
        self.run_ids = run_ids if run_ids is not None else RunIds()
        # Each configuration's target for time to target: the spec's for its task (None: none).
        self.targets: dict[str, float | None] = {}
        self.metrics = tracking.MetricLog(loc.mlflow_uri, spec.metric, spec.mode)
        self.db = WriteQueue("results-db", lambda w: decode(DB_WRITES, w).apply(self), journal)
        self.mlflow = WriteQueue("mlflow", lambda w: decode(MLFLOW_WRITES, w).apply(self), journal)
        # The driver's bookkeeping (these calls, the writes in them) against the trials' compute
        # (Tune's time_this_iter_s summed): logged on the parent run at the end.
        self.busy_s = 0.0
        self.trial_s = 0.0
        # Per trial: its set-up before the first update, and the gap since the previous trial in
        # the same worker process (study/run/trial.py, _Overhead).
        self.setup_s: list[float] = []
        self.gap_s: list[float] = []

    def _db(self, write: _Write) -> bool:
        return self.db.write(write.to_dict())

    def _mlflow(self, write: _Write) -> bool:
        return self.mlflow.write(write.to_dict())

    # --- what happens to a configuration ---------------------------------------------------------

    @_timed
    def started(self, population: str, table: "list[Configuration]") -> None:
        from study.plan.population import solo_config

        for c in table:
            cfg = solo_config(self.spec, c.params)
            dumped = resolved_config(cfg)  # every task default filled: what the run trains with
            cid = c.config_id
            self._db(AdoptRow(cid, c.number))
            self._mlflow(AdoptRun(cid, c.number))
            self.targets[cid] = self.spec.target_for(cfg.task)
            values = dict(params=c.params, config=dumped, members=cfg.population_size, optuna_trial_number=c.number,
                          population=population, target=self.targets[cid])
            # When the run started and ended travel with the writes: a journaled write lands later.
            self._db(StartRow(cid, _now(), values))
            self._mlflow(CreateRun(cid, c.number, dumped, c.params, population, _now_ms()))

    @_timed
    def recovered(self, config_ids: list[str], error: str | None) -> None:
        """Tune retries the trial: its configurations that had not ended run again."""
        for cid in config_ids:
            self._db(UpdateRow(cid, {"state": "running", "error_message": error}))

    @_timed
    def reported(self, reports: list[ConfigurationReport], result: dict[str, Any]) -> None:
        """One Tune result of a population: the reports of its configurations that had not ended
        before it, and where and how long it ran (``result``: Tune's own keys and trial.py's)."""
        self.trial_s += float(result.get("time_this_iter_s") or 0.0)
        for key, into in (("setup_s", self.setup_s), ("since_previous_s", self.gap_s)):
            if result.get(key) is not None:
                into.append(float(result[key]))
        stamp = int(result.get("timestamp", time.time()) * 1000)
        for r in reports:
            self._db(PointsRows(r.config_id, r.step, [dataclasses.asdict(m) for m in r.members]))
            target = self.targets.get(r.config_id, self.spec.target_for(None))
            values = dict(
                last_step=r.step,
                # The step, where this report reached the target; the row keeps the earliest.
                updates_to_target=r.step if r.reached(target, self.spec.mode) else None,
                metric_value=r.metric_value,
                objective=r.objective,
                members_diverged=r.members_diverged,
                # Where the population ran: Tune fills in hostname, node_ip and pid; ray_node_id
                # comes from trial.py.
                hostname=result.get("hostname"),
                node_ip=result.get("node_ip"),
                ray_node_id=result.get("ray_node_id"),
                worker_pid=result.get("pid"),
            )
            self._db(ReportRow(r.config_id, values))
            metrics = tracking.metrics_at_step(r, self.spec.metric, target, self.spec.mode)
            self._mlflow(LogMetrics(r.config_id, r.step, metrics, stamp))

    @_timed
    def ended(self, end: ConfigurationEnd) -> None:
        last = end.last
        if end.state != "failed" and last is not None and any(m.status == "running" for m in last.members):
            # Stopped with its Ray trial (Ray Tune's scheduler): its seeds still running at the last
            # report were pruned there; a seed that had ended keeps its end.
            members = [dataclasses.asdict(dataclasses.replace(m, status="pruned") if m.status == "running" else m)
                       for m in last.members]
            self._db(PointsRows(end.config_id, last.step, members))
        self._db(FinishRow(end.config_id, end.state, _now(), end.error))
        tags = {"objective": str(end.objective)}
        if end.error:
            tags["error"] = end.error[-5000:]
        self._mlflow(FinishRun(end.config_id, end.state, tags, _now_ms()))

    def study_state(self, state: str, reason: str | None) -> bool:
        """The study's state, through the results DB's queue (journaled while it is down); True if it landed."""
        return self._db(StudyState("", state, reason))

    # --- MLflow run ids ---------------------------------------------------------------------------

    def run_id(self, cid: str) -> str:
        if cid not in self.run_ids:
            found = tracking.find_trial_run(self.mlflow_uri, self.experiment_id, cid)
            if found is None:
                raise RuntimeError(f"no MLflow run for trial {cid} yet")
            self.run_ids[cid] = found
        return self.run_ids[cid]

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


def error_text(trial: Any) -> str | None:
    """The end of a failed Tune trial's error file, passwords scrubbed."""
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

