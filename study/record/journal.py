"""Writes to a store that may be down: applied in order, retried, and kept on disk until they land.

The driver records every trial in two stores (the results DB and MLflow). A store that fails
for a moment (a locked SQLite file, a restarting server) must not abort the study, and one that
stays down must not lose what the study computed. So each store's writes go through a
``WriteQueue``: a write is tried a few times with a short back-off; if it still fails it is
appended to the study's journal file (JSON lines, flushed to disk) together with every later
write to that store, so their order is kept. Each later write first tries to drain the backlog.
``study resume`` replays a journal left by an earlier run before it continues. Every write is
idempotent (an upsert keyed by study and trial), so replaying one that had landed is harmless.

Hand-written because no library in the stack queues writes to two different stores with a
durable, ordered backlog; tenacity-style retrying alone would block the study indefinitely.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

JOURNAL_FILE = "pending-writes.jsonl"
_DATETIME = "__datetime__"
# JSON has no inf: a diverged objective (inf) is kept as {"__float__": "inf"} and read back as float.
_FLOAT = "__float__"
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@", re.I)


def scrub(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (for errors we store)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {_FLOAT: repr(value)}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_DATETIME}:
            return dt.datetime.fromisoformat(value[_DATETIME])
        if set(value) == {_FLOAT}:
            return float(value[_FLOAT])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class Journal:
    """The study's file of writes that have not landed: one JSON object a line, with its store."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self, store: str) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("store") == store:
                    entries.append(decode(entry["write"]))
        return entries

    def save(self, store: str, entries: list[dict[str, Any]]) -> None:
        """Replaces ``store``'s entries (others' are kept); removes the file when it is empty."""
        others = []
        if self.path.exists():
            others = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("store") != store]
        lines = others + [json.dumps({"store": store, "write": _encode(e)}, allow_nan=False) for e in entries]
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def pending(self) -> int:
        if not self.path.exists():
            return 0
        return sum(1 for ln in self.path.read_text().splitlines() if ln.strip())


class WriteQueue:
    """One store's writes (see the module docstring). ``apply(write)`` performs one write."""

    def __init__(
        self,
        store: str,
        apply: Callable[[dict[str, Any]], None],
        journal: Journal,
        attempts: int = 3,
        backoff_s: float = 0.5,
        retry_every_s: float = 5.0,
    ):
        self.store, self.apply, self.journal = store, apply, journal
        self.attempts, self.backoff_s, self.retry_every_s = attempts, backoff_s, retry_every_s
        self.backlog: list[dict[str, Any]] = journal.load(store)
        self.error: str | None = None
        self._last_try = 0.0

    def write(self, entry: dict[str, Any]) -> bool:
        """Applies ``entry`` (after any backlog); True if it landed, False if it was journaled."""
        if self.backlog:
            if time.monotonic() - self._last_try >= self.retry_every_s:
                self.drain(attempts=1)
            if self.backlog:
                self.backlog.append(entry)
                self._save()
                return False
        if self._try(entry, self.attempts):
            return True
        self.backlog.append(entry)
        self._save()
        return False

    def drain(self, attempts: int | None = None) -> bool:
        """Applies the backlog in order until one fails; True when nothing is left."""
        attempts = attempts or self.attempts
        done = 0
        for entry in self.backlog:
            if not self._try(entry, attempts):
                break
            done += 1
        if done:
            self.backlog = self.backlog[done:]
            self._save()
        return not self.backlog

    def _try(self, entry: dict[str, Any], attempts: int) -> bool:
        self._last_try = time.monotonic()
        for i in range(attempts):
            try:
                self.apply(entry)
                self.error = None
                return True
            except Exception as exc:  # any failure of the store: retried, then journaled
                first = str(exc).splitlines()[0] if str(exc) else ""
                self.error = scrub(f"{type(exc).__name__}: {first}")[:500]
                if i + 1 < attempts:
                    time.sleep(self.backoff_s * (2**i))
        log.warning("%s write failed, kept in %s: %s", self.store, self.journal.path, self.error)
        return False

    def _save(self) -> None:
        self.journal.save(self.store, self.backlog)
