"""Opening one new results database from several processes at once (a driver creating its study
while `study results` or `study status` reads it): every opener ends with the schema at head."""

from __future__ import annotations

import subprocess
import sys
import time

import sqlalchemy

from study.record import results

# Each opener imports first, says it is ready, then waits for "go": the race is between finding
# no schema and creating it, so they must open at the same instant.
OPENER = """
import os, sys, time
from study.record import results
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
results.engine_for(sys.argv[1])
"""


def test_processes_opening_one_new_sqlite_database_at_once_all_succeed(tmp_path):
    failed = []
    for i in range(5):  # before the fix: 9 of 40 openers failed ("table ms_studies already exists")
        url = f"sqlite:///{tmp_path}/r{i}/results.db"
        go = tmp_path / f"go{i}"
        ready = [tmp_path / f"ready{i}-{j}" for j in range(4)]
        openers = [subprocess.Popen([sys.executable, "-c", OPENER, url, str(r), str(go)], stderr=subprocess.PIPE,
                                    text=True) for r in ready]
        while not all(r.exists() for r in ready) and all(p.poll() is None for p in openers):
            time.sleep(0.01)
        go.touch()
        for p in openers:
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                failed.append(err.strip().splitlines()[-1])
        assert {"ms_studies", "ms_trials"} <= set(sqlalchemy.inspect(results.engine_for(url)).get_table_names())
        results.forget_engine(url)
    assert failed == []
