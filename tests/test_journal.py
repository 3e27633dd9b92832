"""The write journal (study/record/journal.py) without Ray: a real SQLite store that goes down
(another connection holds its write lock), a real journal file, and a driver that dies and is
resumed (a new queue on the same file, as `study resume` builds one): writes land once, in the
order they were made, whatever happened in between."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from study.record.journal import JOURNAL_FILE, Journal, WriteQueue


class Store:
    """An SQLite database with an ordered log of the writes that landed; ``down()`` takes its write
    lock from another connection, so every write fails with "database is locked" until ``up()``."""

    def __init__(self, path: Path):
        self.path = path
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT NOT NULL, v TEXT NOT NULL)")
        self._blocker: sqlite3.Connection | None = None

    def apply(self, entry: dict) -> None:
        con = sqlite3.connect(self.path, timeout=0)
        try:
            with con:
                con.execute("INSERT INTO log (k, v) VALUES (?, ?)", (entry["k"], json.dumps(entry.get("v"), default=_iso)))
        finally:
            con.close()

    def down(self) -> None:
        self._blocker = sqlite3.connect(self.path, isolation_level=None)
        self._blocker.execute("BEGIN IMMEDIATE")  # writers wait for it; readers do not

    def up(self) -> None:
        if self._blocker is not None:
            self._blocker.execute("ROLLBACK")
            self._blocker.close()
            self._blocker = None

    def landed(self) -> list[str]:
        with sqlite3.connect(self.path) as con:
            return [k for (k,) in con.execute("SELECT k FROM log ORDER BY seq")]

    def values(self) -> dict[str, object]:
        with sqlite3.connect(self.path) as con:
            return {k: json.loads(v) for k, v in con.execute("SELECT k, v FROM log")}


def _iso(value: dt.datetime) -> str:
    return value.isoformat()  # only a datetime is not JSON already


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.db")
    yield s
    s.up()


def _queue(store: Store, path: Path, name: str = "results-db", **kw) -> WriteQueue:
    # No back-off: the store's state changes only when the test says so.
    kw = {"attempts": 2, "backoff_s": 0.0, **kw}
    return WriteQueue(name, store.apply, Journal(path), **kw)


def _journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_writes_made_while_the_store_is_down_are_journaled_in_order_and_a_resumed_driver_lands_them(store, tmp_path):
    path = tmp_path / JOURNAL_FILE
    queue = _queue(store, path, retry_every_s=3600.0)
    assert queue.write({"k": "w1"})
    store.down()
    when = dt.datetime(2026, 12, 4, 23, 59, 30, 123456)
    for k, v in (("w2", {"at": when}), ("w3", float("nan")), ("w4", [1, 2])):
        assert queue.write({"k": k, "v": v}) is False
    assert "database is locked" in queue.error
    # On disk, flushed, in the order made, each naming its store.
    assert [(e["store"], e["write"]["k"]) for e in _journal_lines(path)] == [("results-db", f"w{i}") for i in (2, 3, 4)]
    assert Journal(path).pending() == 3
    assert store.landed() == ["w1"]

    # The driver dies (nothing but the file survives it); the store comes back; a resumed driver
    # builds its queue on the same file, lands the backlog first and in order, then goes on.
    del queue
    store.up()
    resumed = _queue(store, path)
    assert [e["k"] for e in resumed.backlog] == ["w2", "w3", "w4"]
    assert resumed.drain() is True
    assert resumed.write({"k": "w5"})
    assert store.landed() == ["w1", "w2", "w3", "w4", "w5"]
    assert not path.exists() and Journal(path).pending() == 0
    # What the file kept comes back as it was written: a datetime as a datetime (as JSON here, in
    # the store), NaN (not JSON) as None.
    assert store.values()["w2"] == {"at": when.isoformat()}
    assert store.values()["w3"] is None


def test_a_later_write_never_overtakes_the_backlog(store, tmp_path):
    path = tmp_path / JOURNAL_FILE
    queue = _queue(store, path, retry_every_s=0.0)
    store.down()
    assert queue.write({"k": "a"}) is False
    store.up()
    # The store is back: the next write lands the backlog first, then itself.
    assert queue.write({"k": "b"}) is True
    assert store.landed() == ["a", "b"] and not path.exists()

    store.down()
    assert queue.write({"k": "c"}) is False
    assert queue.write({"k": "d"}) is False
    store.up()
    queue.retry_every_s = 3600.0  # not time to retry the backlog yet: "e" waits behind it
    assert queue.write({"k": "e"}) is False
    assert store.landed() == ["a", "b"]
    assert [e["write"]["k"] for e in _journal_lines(path)] == ["c", "d", "e"]
    assert queue.drain() and store.landed() == ["a", "b", "c", "d", "e"]


def test_a_write_that_fails_stops_the_replay_there_and_keeps_the_rest_in_order(store, tmp_path):
    path = tmp_path / JOURNAL_FILE
    queue = _queue(store, path, retry_every_s=3600.0)
    store.down()
    for k in ("x", None, "z"):  # None: the store refuses it (k NOT NULL) however often it is tried
        queue.write({"k": k})
    store.up()
    assert queue.drain() is False
    assert "IntegrityError" in queue.error
    assert store.landed() == ["x"]
    assert [e["write"]["k"] for e in _journal_lines(path)] == [None, "z"]


def test_the_two_stores_share_the_journal_file_without_touching_each_others_writes(store, tmp_path):
    path = tmp_path / JOURNAL_FILE
    other = Store(tmp_path / "other.db")
    db = _queue(store, path, "results-db", retry_every_s=3600.0)
    mlflow = _queue(other, path, "mlflow", retry_every_s=3600.0)
    store.down()
    other.down()
    db.write({"k": "d1"})
    mlflow.write({"k": "m1"})
    db.write({"k": "d2"})
    # Order is kept per store (each store's writes depend only on that store's earlier ones).
    assert Journal(path).load("results-db") == [{"k": "d1"}, {"k": "d2"}]
    assert Journal(path).load("mlflow") == [{"k": "m1"}] and Journal(path).pending() == 3
    store.up()
    assert db.drain()
    # The results DB's writes landed and left the file; MLflow's stay for its store.
    assert store.landed() == ["d1", "d2"]
    assert [(e["store"], e["write"]["k"]) for e in _journal_lines(path)] == [("mlflow", "m1")]
    assert Journal(path).load("mlflow") == [{"k": "m1"}] and Journal(path).load("results-db") == []
    other.up()
    assert _queue(other, path, "mlflow").drain() and other.landed() == ["m1"] and not path.exists()


def test_a_store_down_for_a_moment_is_retried_and_nothing_is_journaled(store, tmp_path):
    path = tmp_path / JOURNAL_FILE
    tries = []

    def apply(entry):
        tries.append(entry["k"])
        try:
            store.apply(entry)
        except sqlite3.OperationalError:
            store.up()  # the store comes back before the retry
            raise

    queue = WriteQueue("results-db", apply, Journal(path), attempts=3, backoff_s=0.0)
    store.down()
    assert queue.write({"k": "once"}) is True
    assert tries == ["once", "once"] and store.landed() == ["once"]
    assert queue.error is None and not path.exists()


def test_a_stored_error_has_no_password(tmp_path):
    def apply(entry):
        raise ConnectionError("could not connect to postgresql://study:s3cret@db.example:5432/results")

    queue = WriteQueue("results-db", apply, Journal(tmp_path / JOURNAL_FILE), attempts=1)
    assert queue.write({"k": "a"}) is False
    assert "s3cret" not in queue.error and "postgresql://study:***@db.example" in queue.error
    assert "s3cret" not in (tmp_path / JOURNAL_FILE).read_text()


def test_nan_is_journaled_as_null_so_the_file_stays_json(tmp_path):
    journal = Journal(tmp_path / JOURNAL_FILE)
    journal.save("results-db", [{"k": "a", "v": [float("nan"), 1.5, 2.0]}])
    assert json.loads((tmp_path / JOURNAL_FILE).read_text())["write"]["v"] == [None, 1.5, 2.0]
    assert journal.load("results-db") == [{"k": "a", "v": [None, 1.5, 2.0]}]


def test_an_infinite_value_is_journaled_and_read_back_as_itself(tmp_path):
    """A diverged configuration's objective is inf: its write must be journaled (JSON has no inf)
    and replayed with the same value, not crash the recorder."""
    journal = Journal(tmp_path / JOURNAL_FILE)
    journal.save("results", [{"k": "a", "v": [float("inf"), float("-inf"), 1.5]}])
    json.loads(journal.path.read_text().splitlines()[0])  # still one JSON object a line
    assert journal.load("results") == [{"k": "a", "v": [float("inf"), float("-inf"), 1.5]}]
