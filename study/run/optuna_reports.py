"""What Optuna hears of each configuration while a study runs: an intermediate value at each of its
reports, and at its end the state and value of the study's rule (``optuna_study.tell_ended``).

The study's Tune callback (study/run/feed.py) hands it the typed records (``ConfigurationReport``,
``ConfigurationEnd``, study/record/outcome.py) that the recorder and the progress display get too, so
Optuna, the results DB and MLflow hear of the same ends. Telling is best effort: with the storage
(the results DB) down, a failed report or tell is logged and the study goes on; at its end the runner
tells Optuna what the results DB holds for every configuration still RUNNING there. Configurations
Optuna already finished (a resumed study) are not told again (Optuna would raise
UpdateFinishedTrialError).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from study.record.journal import scrub
from study.record.outcome import ConfigurationEnd, ConfigurationReport
from study.run.optuna_study import OptunaStudy, tell_ended

log = logging.getLogger(__name__)


class OptunaReports:
    """Reports and tells the study's Optuna study (in the results DB at ``url``); ``run_ids`` maps a
    configuration to its MLflow run (study/record/recorder.py, ``RunIds``), for the trial's
    ``mlflow_run_id`` user attribute."""

    def __init__(self, url: str, study_name: str, run_ids: Mapping[str, str]):
        self._url, self._name, self._run_ids = url, study_name, run_ids
        self._study: OptunaStudy | None = None
        self._ids: dict[int, int] = {}  # Optuna trial number -> its id in the storage

    def reported(self, reports: Iterable[ConfigurationReport]) -> None:
        """Intermediate values of the configurations still running at this report."""
        for r in reports:
            if r.ended or r.optuna_number is None:
                continue  # an ended one is told by ``ended``
            try:
                ot_id = self._open_trial(r.optuna_number)
                if ot_id is not None:
                    self._study.report(ot_id, r.objective, r.step)  # type: ignore[union-attr]
            except Exception as exc:
                log.warning("Optuna report for configuration %s failed: %s", r.config_id, scrub(str(exc))[:300])

    def ended(self, end: ConfigurationEnd) -> None:
        if end.optuna_number is None:
            return
        try:
            ot_id = self._open_trial(end.optuna_number)
            if ot_id is None:
                return
            attrs: dict[str, Any] = {"ray_trial_id": end.population, "trial_id": end.config_id}
            if end.config_id in self._run_ids:
                attrs["mlflow_run_id"] = self._run_ids[end.config_id]
            step = None if end.last is None else end.last.step
            tell_ended(self._study, ot_id, end.state, end.objective, step, **attrs)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("Optuna tell for configuration %s failed: %s", end.config_id, scrub(str(exc))[:300])

    def _open_trial(self, number: int) -> int | None:
        """The storage id of Optuna trial ``number`` while it is unfinished, else None."""
        if self._study is None:
            self._study = OptunaStudy.load(self._url, self._name)
        if number not in self._ids:
            self._ids = {t.number: t._trial_id for t in self._study.trials()}
        ot_id = self._ids.get(number)
        return None if ot_id is None or self._study.finished(ot_id) else ot_id
