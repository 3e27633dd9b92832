"""Live progress of a running study on the driver, fed by a Tune callback.

On a terminal: a rich Live table, one row per trial. Without one (``study run ... > log``, nohup,
CI, a cluster job read with ``study logs -f``): plain lines, one at each trial's end and one every
``MOMENTUM_STUDY_PROGRESS_EVERY`` seconds (default 30), each with the finished and running
counts, the elapsed time, an estimate of the time left and the best so far:

    study quick: 3/6 finished, 2 running | elapsed 0:01:05 | ETA 0:01:30 | best error 0.0712 (trial 3f2a_00002)

The best follows docs/study-specs.md, "States and objectives": a trial's best over its reports
while none of its members had diverged; the study's best over its trials' bests.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from study.outcome import better, trial_state

PROGRESS_EVERY_ENV = "MOMENTUM_STUDY_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0
FINISHED_STATUSES = ("TERMINATED", "ERROR")


class _DropRestoreHint(logging.Filter):
    """Ray Tune logs "Resume experiment with: Tuner.restore(path=..., trainable=...)" when a run is
    interrupted; a study is continued with `study resume NAME`, which the command line prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_DropRestoreHint())


class Progress(tune.Callback):
    """Per trial: state, step, current metric and best so far; redrawn (terminal) or summed up in a
    line (no terminal) as results come."""

    def __init__(self, name: str, total: int, mode: str, console: Console | None = None):
        self.name, self.total, self.mode = name, total, mode
        self._console = console
        self._rows: dict[str, dict[str, Any]] = {}
        self._live: Live | None = None
        self._plain = False
        self._trials: list = []
        self._metric = "metric"
        self._started = time.monotonic()
        self._work_at_start: float | None = None
        self._finished_before: set[str] = set()
        self._last_line = 0.0
        self._every = _every()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["total"], state["mode"])  # type: ignore[misc]

    def __enter__(self) -> "Progress":
        console = self._console or Console(stderr=True)
        self._console = console
        self._started = time.monotonic()
        self._last_line = self._started
        if console.is_terminal:
            self._live = Live(self._table(), console=console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        else:
            self._plain = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None
        elif self._plain:
            self._print_line()
            self._plain = False

    # --- what is known -----------------------------------------------------------------------

    def _finished_and_running(self) -> tuple[int, int]:
        # Finished: what ended in this run (Tune's callbacks), and what had ended before it (a
        # resumed study). Tune's status alone would count the trials an interrupt stopped.
        finished = {tid for tid, r in self._rows.items() if r.get("ended")} | self._finished_before
        running = {t.trial_id for t in self._trials if t.status == "RUNNING"}
        return len(finished), len(running - finished)

    def _best(self) -> tuple[float | None, str | None]:
        """The study's best so far: the best of the trials' bests (a diverged trial has none)."""
        bests: dict[str, float | None] = {}
        for t in self._trials:  # trials restored by `study resume` report nothing in this run
            last = t.last_result or {}
            if last.get("members_diverged"):
                bests[t.trial_id] = None
                continue
            analysis = (t.metric_analysis or {}).get("metric_value") or {}
            value = analysis.get(self.mode)
            bests[t.trial_id] = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        for tid, r in self._rows.items():
            bests[tid] = None if r.get("diverged") else r.get("best")
        best, where = None, None
        for tid, value in bests.items():
            if value is not None and better(value, best, self.mode):
                best, where = value, tid
        return best, where

    def _work(self) -> float:
        """Trials' worth of work done: 1 per finished trial, the fraction of its updates per running one."""
        done = 0.0
        for t in self._trials:
            if t.trial_id in self._finished_before or self._rows.get(t.trial_id, {}).get("ended"):
                done += 1.0
            else:
                updates = _updates(t)
                step = (t.last_result or {}).get("step")
                if updates and step:
                    done += min(float(step) / updates, 1.0)
        return done

    def _line(self) -> str:
        finished, running = self._finished_and_running()
        elapsed = time.monotonic() - self._started
        work = self._work()
        done_here = work - (self._work_at_start or 0.0) if self._work_at_start is not None else 0.0
        eta = "unknown"
        if finished >= self.total:
            eta = "0:00:00"
        elif done_here > 0 and elapsed > 0:
            eta = _clock(elapsed * max(self.total - work, 0.0) / done_here)
        best, where = self._best()
        best_text = "none yet" if best is None else f"{_fmt(best)} (trial {where})"
        return (
            f"study {self.name}: {finished}/{self.total} finished, {running} running | "
            f"elapsed {_clock(elapsed)} | ETA {eta} | best {self._metric} {best_text}"
        )

    def _print_line(self, prefix: str = "") -> None:
        if self._console is None:
            return
        self._last_line = time.monotonic()
        self._console.print(prefix + self._line(), highlight=False, markup=False, soft_wrap=True)

    def _table(self) -> Table:
        finished, _ = self._finished_and_running()
        table = Table(title=f"study {self.name}: {finished}/{self.total} trials finished", expand=False)
        for col in ("trial", "state", "step", self._metric, "best"):
            table.add_column(col, justify="right" if col in ("step", self._metric, "best") else "left")
        for tid, r in self._rows.items():
            table.add_row(tid, r["state"], str(r.get("step", "")), _fmt(r.get("value")), _fmt(r.get("best")))
        return table

    def _update(self, trial: Any, **values: Any) -> None:
        row = self._rows.setdefault(trial.trial_id, {"state": "running"})
        row.update(values)
        if self._live is not None:
            self._live.update(self._table())

    # --- Tune's callback hooks -----------------------------------------------------------------

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials
        if trials and self._metric == "metric":
            self._metric = _metric_name(trials[0]) or "metric"
        if self._work_at_start is None and trials:
            self._finished_before = {t.trial_id for t in trials if t.status in FINISHED_STATUSES}
            self._work_at_start = self._work()
        if self._plain and time.monotonic() - self._last_line >= self._every:
            self._print_line()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trials = trials
        self._update(trial, state="running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._trials = trials
        value = result.get("metric_value")
        row = self._rows.get(trial.trial_id, {})
        best, diverged = row.get("best"), bool(row.get("diverged") or result.get("members_diverged"))
        if diverged:
            best = None  # a diverged configuration has no best (study/outcome.py)
        elif value is not None and math.isfinite(value) and better(value, best, self.mode):
            best = value
        state = "diverged" if diverged else "running"
        self._update(trial, state=state, step=result.get("step"), value=value, best=best, diverged=diverged)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trials = trials
        state = trial_state(trial.last_result)
        self._update(trial, state=state, ended=True)
        if self._plain:
            self._print_line(f"trial {trial.trial_id} {state}; ")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trials = trials
        self._update(trial, state="failed", ended=True)
        if self._plain:
            self._print_line(f"trial {trial.trial_id} failed; ")


def _every() -> float:
    try:
        every = float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return every if every > 0 else DEFAULT_EVERY_S


def _context(trial: Any) -> dict[str, Any]:
    from study.trial import CONTEXT_KEY

    config = getattr(trial, "config", None) or {}
    return config.get(CONTEXT_KEY) or {}


def _metric_name(trial: Any) -> str | None:
    return (_context(trial).get("spec") or {}).get("metric")


def _updates(trial: Any) -> float | None:
    """A trial's updates: sampled, else the spec's fixed config (None: unknown)."""
    config = getattr(trial, "config", None) or {}
    updates = config.get("updates") or ((_context(trial).get("spec") or {}).get("config") or {}).get("updates")
    return float(updates) if isinstance(updates, (int, float)) and updates > 0 else None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    return f"{x:.4g}"
