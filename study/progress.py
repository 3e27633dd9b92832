"""Live progress of a running study on the driver (rich), fed by a Tune callback."""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from study.outcome import better, trial_state


class Progress(tune.Callback):
    """One line per trial: state, step, current metric and best so far; redrawn as results come."""

    def __init__(self, name: str, total: int, mode: str, console: Console | None = None):
        self.name, self.total, self.mode = name, total, mode
        self._console = console
        self._rows: dict[str, dict[str, Any]] = {}
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["total"], state["mode"])  # type: ignore[misc]

    def __enter__(self) -> "Progress":
        console = self._console or Console(stderr=True)
        self._live = Live(self._table(), console=console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def _table(self) -> Table:
        done = sum(r["state"] not in ("running", "pending") for r in self._rows.values())
        table = Table(title=f"study {self.name}: {done}/{self.total} trials finished", expand=False)
        for col in ("trial", "state", "step", "error", "best"):
            table.add_column(col, justify="right" if col in ("step", "error", "best") else "left")
        for tid, r in self._rows.items():
            table.add_row(tid, r["state"], str(r.get("step", "")), _fmt(r.get("value")), _fmt(r.get("best")))
        return table

    def _update(self, trial: Any, **values: Any) -> None:
        row = self._rows.setdefault(trial.trial_id, {"state": "running"})
        row.update(values)
        if self._live is not None:
            self._live.update(self._table())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, state="running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get("metric_value")
        best = self._rows.get(trial.trial_id, {}).get("best")
        if result.get("members_diverged"):
            best = None  # a diverged configuration has no best (study/outcome.py)
        elif value is not None and math.isfinite(value) and better(value, best, self.mode):
            best = value
        state = "diverged" if result.get("members_diverged") else "running"
        self._update(trial, state=state, step=result.get("step"), value=value, best=best)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, state=trial_state(trial.last_result))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, state="failed")


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    return f"{x:.4g}"
