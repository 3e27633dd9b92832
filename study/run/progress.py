"""Live progress of a running study on the driver, fed typed records by the study's Tune callback
(study/run/feed.py).

On a terminal: a rich Live table, one row per configuration (a Ray trial trains several at once:
study/plan/population.py; "trial" is a configuration here, as in the results database) with its
searched values under the names the spec gives them, under a title that is the line below. Without
one (``study run ... > log``, nohup, CI, a cluster job read with ``study logs -f``): plain lines, one
at each trial's end and one every ``MOMENTUM_STUDY_PROGRESS_EVERY`` seconds (default 30), each with
the finished and running counts, the elapsed time, an estimate of the time left and the best so far:

    study quick: 3/6 finished, 2 running | elapsed 0:01:05 | ETA 0:01:30 | best error 0.0712 (trial 3f2a_00002-1)

The best follows docs/study-specs.md, "States and objectives", as the verdict does: a
configuration's result is the study metric at its last report (the mean over its seeds) once it
has completed, and the best is the completed configuration with the best result; a configuration
still running, diverged, pruned or failed has none ("none finished yet" until one completes). It is
rebuilt from Tune's trials on `study resume`, so a resumed study shows the best it had.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from study.record.outcome import ConfigurationEnd, ConfigurationReport, better, ended_state, reports_in

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
    """Per configuration: state, step, metric at its last report and searched values; the study's
    best result; redrawn (terminal) or summed up in a line (no terminal) as results come."""

    def __init__(self, name: str, total: int, mode: str, console: Console | None = None):
        self.name, self.total, self.mode = name, total, mode
        self._console = console
        self._rows: dict[str, dict[str, Any]] = {}
        # Every configuration that has ended (in this run or before it): its state and result.
        self._results: dict[str, tuple[str, float | None]] = {}
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
            # Drawn at each refresh (elapsed time and ETA move between results), from Live's thread:
            # _table reads snapshots of what the callbacks change.
            self._live = Live(console=console, refresh_per_second=2, transient=False, get_renderable=self._table)
            self._live.__enter__()
        else:
            self._plain = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
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
        finished = {cid for cid, r in list(self._rows.items()) if r.get("ended")} | self._finished_before
        running = {cid for t in self._trials if t.status == "RUNNING" for cid in _config_ids(t)}
        return len(finished), len(running - finished)

    def _best(self) -> tuple[float | None, str | None]:
        """The study's best so far: the best result of the configurations that completed."""
        best, where = None, None
        for cid, (state, value) in list(self._results.items()):
            if state == "completed" and value is not None and math.isfinite(value) and better(value, best, self.mode):
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
        best_text = "none finished yet" if best is None else f"{_fmt(best)} (trial {where})"
        return (
            f"study {self.name}: {finished}/{self.total} finished, {running} running | "
            f"elapsed {_clock(elapsed)} | ETA {eta} | best {self._metric} {best_text}"
        )

    def _print_line(self, prefix: str = "") -> None:
        if self._console is None:
            return
        self._last_line = time.monotonic()
        self._console.print(prefix + self._line(), highlight=False, markup=False, soft_wrap=True)

    def _table(self) -> Group:
        """The live view: the line above a table of the configurations, each with its state, the
        step and study metric (mean over seeds) of its last report, and its searched values."""
        rows = list(self._rows.items())
        searched = list(dict.fromkeys(k for _, r in rows for k in r.get("params", {})))
        table = Table(expand=False)
        for col in ("trial", "state", "step", self._metric, *searched):
            table.add_column(col, justify="left" if col in ("trial", "state") else "right", no_wrap=True)
        for cid, r in rows:
            params = r.get("params", {})
            table.add_row(cid, r["state"], str(r.get("step", "")), _fmt(r.get("value")),
                          *(_fmt(params.get(k)) for k in searched))
        return Group(Text(self._line()), table)

    def _update(self, cid: str, **values: Any) -> None:
        row = self._rows.setdefault(cid, {"state": "running"})
        row.update(values)

    def _end(self, cid: str, state: str, value: float | None) -> None:
        if self._rows.get(cid, {}).get("ended"):
            return
        self._results[cid] = (state, value)
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
            before = {cid: end for t in trials for cid, end in _ended_before(t).items()}
            self._finished_before = set(before)
            for cid, end in before.items():
                self._results.setdefault(cid, end)
                if not self._rows.get(cid, {}).get("ended"):
                    self._rows.pop(cid, None)  # started again with its population, ended before
            self._work_at_start = self._work()
        if self._plain and time.monotonic() - self._last_line >= self._every:
            self._print_line()

    def started(self, trials: list, table: "list[Any]") -> None:
        """A population starts: its configurations (``Configuration``s, or their ids)."""
        self._trials = trials
        for c in table:
            cid = c if isinstance(c, str) else c.config_id
            if cid not in self._finished_before:
                self._update(cid, state="running", **({} if isinstance(c, str) else {"params": shown_values(c.params)}))

    def reported(self, trials: list, reports: list[ConfigurationReport]) -> None:
        """The reports of configurations that had not ended before this result."""
        self._trials = trials
        for c in reports:
            cid = c.config_id
            if cid in self._finished_before:
                continue
            # A seed diverged: the configuration will end diverged (outcome.ended_state), whatever
            # stops the others; the table says so at once.
            diverged = bool(self._rows.get(cid, {}).get("diverged") or c.members_diverged)
            self._update(cid, state="diverged" if diverged else "running", step=c.step, value=c.metric_value,
                         diverged=diverged)

    def ended(self, trials: list, end: ConfigurationEnd) -> None:
        self._trials = trials
        if end.config_id not in self._finished_before:
            self._end(end.config_id, end.state, None if end.last is None else end.last.metric_value)


def _config_ids(trial: Any) -> list[str]:
    from study.plan.population import member_table

    return [c.config_id for c in member_table(getattr(trial, "config", None) or {})]


def _ended_before(trial: Any) -> dict[str, tuple[str, float | None]]:
    """Configurations that had ended when this run started, with their state and result: a
    finished trial's (by the rule the feed ended them with, outcome.ended_state), and those a
    resumed population had ended."""
    last = reports_in(trial.last_result)
    if trial.status in FINISHED_STATUSES:
        return {cid: (ended_state(last.get(cid), trial.status == "ERROR"),
                      None if cid not in last else last[cid].metric_value) for cid in _config_ids(trial)}
    return {cid: (c.state, c.metric_value) for cid, c in last.items() if c.ended}


def shown_values(params: dict[str, Any]) -> dict[str, Any]:
    """A configuration's sampled values under the names the spec gives its fields: a field searched
    with ``transform: one_minus`` is sampled as ``one_minus_<field>`` and trains with 1 - that
    value, which is what is shown, as ``<field>`` (study/spec/params.py, field_value)."""
    from study.spec.params import field_value

    return dict(field_value(k, v) for k, v in params.items())


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
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)  # a categorical choice (momentum "nag")
    return f"{x:.4g}"
