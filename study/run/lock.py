"""One command at a time on a study: `study run` and `study resume` hold the study's lock while
they run, so a second run of the same name, or a resume of a running study, is refused at once
instead of racing the first (two drivers migrating one MLflow store, one Optuna study asked twice).

The lock is an OS file lock (``filelock``) on ``<study dir>/.lock``: the kernel drops it when the
holder dies, kill -9 included, so a crashed driver never leaves a study locked. It guards drivers
on one machine; drivers on different machines sharing a PostgreSQL results database are kept
apart by a PostgreSQL advisory lock on the study's name as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from study.errors import LocationError

LOCK_FILE = ".lock"


class StudyBusyError(LocationError):
    """Another process runs or resumes this study."""


class StudyLock:
    def __init__(self, study_dir: Path, name: str, results_db: str):
        self.path = Path(study_dir) / LOCK_FILE
        self.name, self.results_db = name, results_db
        self._file: FileLock | None = None
        self._pg: Any = None

    def __enter__(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = FileLock(self.path, timeout=0)
        try:
            self._file.acquire()
        except Timeout:
            raise self._busy() from None
        (self.path.parent / (LOCK_FILE + ".pid")).write_text(str(os.getpid()))
        if self.results_db.startswith("postgresql"):
            self._pg_lock()
        return self

    def refuse_if_held(self) -> None:
        """Raises StudyBusyError at once when another process holds the lock: for `study resume`,
        before it opens the study's databases (a running driver may hold their write lock)."""
        if is_locked(self.path.parent):
            raise self._busy()

    def _busy(self) -> StudyBusyError:
        return StudyBusyError(
            f"study {self.name!r} is being run or resumed by another process{self._holder()}; "
            "wait for it to end (or stop it) before `study run` or `study resume`"
        )

    def _holder(self) -> str:
        try:
            return f" (pid {(self.path.parent / (LOCK_FILE + '.pid')).read_text().strip()})"
        except OSError:
            return ""

    def _pg_lock(self) -> None:
        from study.record.results import advisory_lock

        conn = advisory_lock(self.results_db, self.name)
        if conn is None:
            self.__exit__()
            raise StudyBusyError(
                f"study {self.name!r} is being run or resumed by another driver on its results database; "
                "wait for it to end before `study run` or `study resume`"
            )
        self._pg = conn

    def __exit__(self, *exc: Any) -> None:
        if self._pg is not None:
            self._pg.close()  # a session's advisory locks end with it
            self._pg = None
        if self._file is not None:
            self._file.release()
            self._file = None
        (self.path.parent / (LOCK_FILE + ".pid")).unlink(missing_ok=True)


def is_locked(study_dir: Path) -> bool:
    """Whether a driver holds the study's lock now (for `study status`)."""
    path = Path(study_dir) / LOCK_FILE
    if not path.exists():
        return False
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False
