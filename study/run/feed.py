"""The study's one Ray Tune callback: it reads each Tune event once, as typed records (study/record/
outcome.py), and hands them to the recorder (results DB and MLflow), to Optuna (study/run/
optuna_reports.py) and to the live progress, in that order.

``Endings`` decides, once for all three, which configurations have ended and how: at the report
where none of a configuration's seeds runs any more, or with its Ray trial (completed, stopped by
a scheduler, failed). Tune tells its searcher of a trial's end just before its callbacks, in the same
step of its loop, so Optuna still hears of an end before the searcher is asked for the next
population.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from study.plan.population import member_table
from study.record.outcome import Endings, reports_in
from study.record.recorder import Recorder, error_text
from study.run.optuna_reports import OptunaReports
from study.run.progress import Progress


class StudyFeed(tune.Callback):
    def __init__(self, recorder: Recorder, optuna: OptunaReports, progress: Progress):
        self.recorder, self.optuna, self.progress = recorder, optuna, progress
        self.endings = Endings()

    # Tune pickles its callbacks into the experiment directory: nothing of a run travels (the
    # stores' URLs may hold passwords); `study resume` hands the restored run a fresh feed.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.step(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        table = member_table(trial.config)
        self.recorder.started(trial.trial_id, table)
        self.progress.started(trials, table)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        running = [c.config_id for c in member_table(trial.config) if self.endings.get(c.config_id) is None]
        self.recorder.recovered(running, error_text(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        reports = self.endings.running(reports_in(result).values())
        ends = self.endings.at_report(trial.trial_id, reports)
        self.optuna.reported(reports)
        self.recorder.reported(reports, result)
        self.progress.reported(trials, reports)
        for end in ends:
            self.optuna.ended(end)
            self.recorder.ended(end)
            self.progress.ended(trials, end)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trials, trial, None, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trials, trial, error_text(trial), errored=True)

    def _trial_ended(self, trials: list, trial: Any, error: str | None, errored: bool) -> None:
        ends = self.endings.at_trial_end(trial.trial_id, member_table(trial.config), reports_in(trial.last_result),
                                         error, errored)
        for end in ends:
            self.optuna.ended(end)
            self.recorder.ended(end)
            self.progress.ended(trials, end)
