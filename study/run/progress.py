"""Live progress of a running study on the driver, fed typed records by the study's Tune callback
(study/run/feed.py).

On a terminal: a rich Live table, one row per configuration (a Ray trial trains several at once:
study/plan/population.py; "trial" is a configuration here, as in the results database). Without one (``study run ... > log``, nohup,
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

from rich.console import Console
from rich.live import Live
from rich.table import Table

from study.record.outcome import ConfigurationEnd, ConfigurationReport, better, reports_in

PROGRESS_EVERY_ENV = "MOMENTUM_STUDY_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0
FINISHED_STATUSES = ("TERMINATED", "ERROR")


class _DropRestoreHint(logging.Filter):
    """Ray Tune logs "Resume experiment with: Tuner.restore(path=..., trainable=...)" when a run is
    interrupted; a study is continued with `study resume NAME`, which the command line prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_DropRestoreHint())


class Progress:
    """Per configuration: state, step, current metric and best so far; redrawn (terminal) or summed
    up in a line (no terminal) as results come."""

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
    # Rows are configurations (study/plan/population.py): a Ray trial trains several at once.

    def _finished_and_running(self) -> tuple[int, int]:
        # Finished: what ended in this run (Tune's callbacks), and what had ended before it (a
        # resumed study). Tune's status alone would count the configurations an interrupt stopped.
        finished = {cid for cid, r in self._rows.items() if r.get("ended")} | self._finished_before
        running = {cid for t in self._trials if t.status == "RUNNING" for cid in _config_ids(t)}
        return len(finished), len(running - finished)

    def _best(self) -> tuple[float | None, str | None]:
        """The study's best so far: the best of the configurations' bests (a diverged one has none)."""
        bests: dict[str, float | None] = {}
        for t in self._trials:  # trials restored by `study resume` report nothing in this run
            for c in reports_in(t.last_result).values():
                value = c.metric_value
                ok = not c.members_diverged and isinstance(value, (int, float)) and math.isfinite(value)
                bests[c.config_id] = value if ok else None
        for cid, r in self._rows.items():
            bests[cid] = None if r.get("diverged") else r.get("best")
        best, where = None, None
        for cid, value in bests.items():
            if value is not None and better(value, best, self.mode):
                best, where = value, cid
        return best, where

    def _work(self) -> float:
        """Configurations' worth of work done: 1 per finished one, the fraction of its updates per
        running one."""
        done = 0.0
        for t in self._trials:
            updates = _updates(t)
            last = reports_in(t.last_result)
            for cid in _config_ids(t):
                if cid in self._finished_before or self._rows.get(cid, {}).get("ended"):
                    done += 1.0
                elif updates and cid in last and last[cid].step:
                    done += min(float(last[cid].step) / updates, 1.0)
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
        for cid, r in self._rows.items():
            table.add_row(cid, r["state"], str(r.get("step", "")), _fmt(r.get("value")), _fmt(r.get("best")))
        return table

    def _update(self, cid: str, **values: Any) -> None:
        row = self._rows.setdefault(cid, {"state": "running"})
        row.update(values)
        if self._live is not None:
            self._live.update(self._table())

    def _end(self, cid: str, state: str) -> None:
        if self._rows.get(cid, {}).get("ended"):
            return
        self._update(cid, state=state, ended=True)
        if self._plain:
            self._print_line(f"trial {cid} {state}; ")

    # --- what the study's Tune callback hands on (study/run/feed.py) ----------------------------

    def step(self, trials: list) -> None:
        """Tune's trials after each step of its loop (restored ones report nothing in this run)."""
        self._trials = trials
        if trials and self._metric == "metric":
            self._metric = _metric_name(trials[0]) or "metric"
        if self._work_at_start is None and trials:
            self._finished_before = {cid for t in trials for cid in _ended_before(t)}
            self._work_at_start = self._work()
        if self._plain and time.monotonic() - self._last_line >= self._every:
            self._print_line()

    def started(self, trials: list, config_ids: list[str]) -> None:
        self._trials = trials
        for cid in config_ids:
            if cid not in self._finished_before:
                self._update(cid, state="running")

    def reported(self, trials: list, reports: list[ConfigurationReport]) -> None:
        """The reports of configurations that had not ended before this result."""
        self._trials = trials
        for c in reports:
            cid = c.config_id
            if cid in self._finished_before:
                continue
            value = c.metric_value
            row = self._rows.get(cid, {})
            best, diverged = row.get("best"), bool(row.get("diverged") or c.members_diverged)
            if diverged:
                best = None  # a diverged configuration has no best (study/record/outcome.py)
            elif value is not None and math.isfinite(value) and better(value, best, self.mode):
                best = value
            self._update(cid, state="diverged" if diverged else "running", step=c.step, value=value,
                         best=best, diverged=diverged)

    def ended(self, trials: list, end: ConfigurationEnd) -> None:
        self._trials = trials
        if end.config_id not in self._finished_before:
            self._end(end.config_id, end.state)


def _config_ids(trial: Any) -> list[str]:
    from study.plan.population import member_table

    return [c.config_id for c in member_table(getattr(trial, "config", None) or {})]


def _ended_before(trial: Any) -> list[str]:
    """Configurations that had ended when this run started: a finished trial's, and those a
    resumed population had stopped."""
    if trial.status in FINISHED_STATUSES:
        return _config_ids(trial)
    return [cid for cid, c in reports_in(trial.last_result).items() if c.ended]


def _every() -> float:
    try:
        every = float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return every if every > 0 else DEFAULT_EVERY_S


def _context(trial: Any) -> dict[str, Any]:
    from study.run.trial import CONTEXT_KEY

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
