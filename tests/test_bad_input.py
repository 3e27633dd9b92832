"""Bad input is refused before any work: exit code 2, one message naming the field or option, the
value and what is allowed, and nothing written (no study directory, results.db, mlflow.db or Tune
directory). Real files, real SQLite and real closed ports on 127.0.0.1; no mocks.

docs/reliability.md ("Bad input") quotes the figures of this file: every row of CASES is one
malformed spec or command line.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import STUDY_BIN, quick_spec
from study import api
from study.plan import preflight
from study.cli import main
from study.spec.model import SpecError, load_spec


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory of its own (so a stray write in cwd is seen too) and no
    locations leaking in from the environment."""
    for var in ("MOMENTUM_STUDY_DIR", "MOMENTUM_STUDY_RESULTS_DB", "MLFLOW_TRACKING_URI", "RAY_ADDRESS",
                "MOMENTUM_STUDY_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _spec_text(change: dict) -> str:
    raw = quick_spec("bad")
    if "config" in change:
        raw["config"] = {**raw["config"], **change.pop("config")}
    raw.update(change)
    return yaml.safe_dump(raw)


GOOD = _spec_text({})
# A Curves study on the authors' file (dataset: original); {data_dir} is filled in per case.
CURVES_ORIGINAL = (
    "name: bad\ntask: curves\n"
    "config: {{dataset: original, data_dir: '{data_dir}', updates: 8, report_every: 4, train_cases: 20, eval_cases: 20}}\n"
    "search: {{lr: {{type: grid, values: [0.001, 0.002]}}}}\nsampler: grid\n"
)


def _grid(values: dict[str, int]) -> str:
    """A grid spec over init_scale, spectral_radius, lr, ... with the given number of values each."""
    search = {field: {"type": "grid", "values": list(range(1, n + 1))} for field, n in values.items()}
    raw = quick_spec("bad", search=search, sampler={"type": "grid", "seed": 0}, num_samples=None)
    return yaml.safe_dump(raw, default_flow_style=True, width=10**9, sort_keys=False)
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def spec(change: dict | None = None, text: str | None = None, data: bytes | None = None) -> dict:
    if data is not None:
        return {"data": data}
    return {"data": (text if text is not None else _spec_text(dict(change or {}))).encode("utf-8")}


# (id, spec file, extra command-line arguments, pieces the message must hold). "{port}" is a
# closed port on 127.0.0.1, "{file}" a regular file (so a directory below it cannot be created).
CASES = [
    # --- top-level fields
    ("unknown-field", spec({"samplr": "tpe"}), [], ["samplr", "allowed fields"]),
    ("averaged-error-without-polyak", spec({"metric": "averaged_error"}), [], ["metric='averaged_error'", "polyak_decay"]),
    ("num-samples-1e30", spec({"num_samples": 1e30}), [], ["num_samples=1e+30", "at most 100,000"]),
    ("num-samples-0", spec({"num_samples": 0}), [], ["num_samples=0", "greater than or equal to 1"]),
    ("repeats-huge", spec({"repeats": 5000}), [], ["repeats=5000", "at most"]),
    ("retries-negative", spec({"retries": -1}), [], ["retries=-1"]),
    ("fuse-unknown", spec({"fuse": "yes"}), [], ["fuse='yes'", "'auto'", "'off'"]),
    ("max-members-zero", spec({"max_members": 0}), [], ["max_members=0", "greater than or equal to 1"]),
    ("max-members-huge", spec({"max_members": 10**6}), [], ["max_members=1000000", "less than or equal to 4096"]),
    ("max-members-without-fusion", spec({"fuse": "off", "max_members": 4}), [], ["max_members=4", "fuse: 'off'"]),
    ("max-members-below-repeats", spec({"repeats": 4, "max_members": 2}), [],
     ["max_members=2 is not allowed with repeats=4", "never split", "max_members >= 4"]),
    ("metric-unknown", spec({"metric": "accuracy"}), [], ["metric", "'accuracy'", "'error'"]),
    ("name-trailing-newline", spec({"name": "bad\n"}), [], ["name='bad\\n'", "letters, digits"]),
    ("name-slash", spec({"name": "a/../../etc"}), [], ["name='a/../../etc'", "path separators"]),
    ("name-backslash", spec({"name": "a\\b"}), [], ["name=", "path separators"]),
    ("name-dotdot", spec({"name": ".."}), [], ["name='..'", "letters, digits"]),
    ("name-not-a-string", spec({"name": ["a"]}), [], ["name=['a']"]),
    # --- search
    ("search-empty", spec({"search": {}}), [], ["search={}", "at least one field"]),
    ("float-step-larger-than-range", spec({"search": {"lr": {"type": "float", "low": 0.001, "high": 0.002, "step": 0.5}}}), [],
     ["search.lr.step=0.5", "high - low"]),
    ("float-step-zero", spec({"search": {"lr": {"type": "float", "low": 0.001, "high": 0.002, "step": 0}}}), [],
     ["search.lr.step=0.0", "step > 0"]),
    ("float-step-negative", spec({"search": {"lr": {"type": "float", "low": 0.001, "high": 0.002, "step": -0.001}}}), [],
     ["search.lr.step=-0.001", "step > 0"]),
    ("int-step-zero", spec({"search": {"init_scale": {"type": "int", "low": 1, "high": 4, "step": 0}}}), [],
     ["search.init_scale.step=0", ">= 1"]),
    ("float-nan", spec(text=GOOD.replace("low: 0.0001", "low: .nan")), [], ["search.lr", "nan"]),
    ("categorical-list-value", spec({"search": {"lr": {"type": "categorical", "values": [[0.01, 0.02]]}}}), [],
     ["search.lr.values[0]=[0.01, 0.02]", "one number, string"]),
    ("categorical-dict-value", spec({"search": {"optimizer": {"type": "categorical", "values": [{"a": 1}]}}}), [],
     ["search.optimizer.values[0]={'a': 1}"]),
    ("categorical-duplicate", spec({"search": {"optimizer": {"type": "categorical", "values": ["nag", "nag"]}}}), [],
     ["search.optimizer.values[1]='nag'", "twice"]),
    ("search-unknown-field", spec({"search": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}}), [],
     ["search.learning_rate", "allowed"]),
    ("categorical-1001-values", spec({"search": {"init_scale": {"type": "categorical", "values": list(range(1, 1002))}}}), [],
     ["search.init_scale.values=<a list of 1,001 values>", "at most 1,000"]),
    # --- sampler, scheduler
    ("sampler-option-misspelt", spec({"sampler": {"type": "tpe", "options": {"n_startup_trals": 3}}}), [],
     ["sampler.options.n_startup_trals=3", "n_startup_trials"]),
    ("sampler-option-wrong-type", spec({"sampler": {"type": "tpe", "options": {"n_startup_trials": "ten"}}}), [],
     ["sampler.options.n_startup_trials='ten'", "TPESampler takes n_startup_trials as int"]),
    ("sampler-option-not-callable", spec({"sampler": {"type": "tpe", "options": {"gamma": "0.1"}}}), [],
     ["sampler.options.gamma='0.1'", "callable"]),
    ("sampler-option-seed", spec({"sampler": {"type": "random", "options": {"seed": 3}}}), [], ["sampler.options.seed", "sampler.seed"]),
    ("sampler-seed-negative", spec({"sampler": {"type": "tpe", "seed": -1}}), [], ["sampler.seed=-1"]),
    ("sampler-option-infinite", spec(text=GOOD.replace("sampler:\n", "sampler:\n  options: {prior_weight: .inf}\n")), [],
     ["sampler.options.prior_weight=inf", "not a finite number"]),
    ("asha-grace-beyond-max-t", spec({"scheduler": {"type": "asha", "grace_period": 50}}), [],
     ["scheduler.grace_period=50", "max_t=4"]),
    # --- resources
    ("gpus-two", spec({"resources": {"gpus": 2}}), [],
     ["resources.gpus=2.0", "more than one GPU per trial is not supported yet: a trial trains its population on one "
      "device; use gpus <= 1"]),
    ("cpus-infinite", spec(text=GOOD + "resources: {cpus: .inf}\n"), [], ["resources.cpus=inf", "finite"]),
    ("cpus-10000", spec({"resources": {"cpus": 10000}}), [], ["resources.cpus=10000", "use cpus <= "]),
    # --- training config
    ("updates-1e9", spec({"config": {"updates": 10**9}}), [], ["updates=1000000000", "at most 10,000,000"]),
    ("seed-beyond-64-bits", spec({"config": {"seed": 10**30}}), [], ["config.seed=" + str(10**30), "64 bits"]),
    ("repeats-with-string-seed", spec({"repeats": 2, "config": {"seed": "x"}}), [], ["config.seed='x'", "integer"]),
    ("config-unknown-key", spec({"config": {"warmup": 3}}), [], ["warmup", "allowed keys"]),
    ("config-eps-infinite", spec({"config": {"optimizer": "adam", "eps": float("inf")}}), [], ["eps=inf", "finite number > 0"]),
    ("config-eps-nan", spec({"config": {"optimizer": "adam", "eps": float("nan")}}), [], ["eps=nan", "finite number > 0"]),
    ("data-dir-without-the-files", spec(text=CURVES_ORIGINAL.format(data_dir="../../../../../../../etc")), [],
     ["config.data_dir='/etc'", "dataset: original", "holds no digs3pts_1.mat"]),
    ("data-dir-missing", spec(text=CURVES_ORIGINAL.format(data_dir="no-such-dir")), [],
     ["config.data_dir=", "no-such-dir", "no such directory", "digs3pts_1.mat"]),
    # --- the YAML itself
    ("yaml-duplicate-key", spec(text=GOOD + "num_samples: 300\n"), [], ["duplicate key 'num_samples'", "line"]),
    ("yaml-billion-laughs", spec(text=BOMB), [], ["alias", "not allowed"]),
    ("yaml-python-tag", spec(text="name: !!python/object/apply:os.system ['echo pwned']\n"), [],
     ["!!python/object/apply:os.system", "not allowed"]),
    ("yaml-binary-tag", spec(text=GOOD.replace("name: bad", "name: !!binary aGVsbG8=")), [], ["!!binary", "not allowed"]),
    ("yaml-deep-nesting", spec(text="name: " + "[" * 5000 + "]" * 5000 + "\n"), [], ["nested deeper than 20 levels"]),
    ("yaml-syntax", spec(text="name: [unclosed\ntask: addition\n"), [], ["not valid YAML", "line"]),
    ("yaml-not-a-mapping", spec(text="- name: bad\n"), [], ["YAML mapping", "list"]),
    ("yaml-empty", spec(text=""), [], ["empty"]),
    ("yaml-nul-in-string", spec(text=GOOD + 'description: "a\\0b"\n'), [], ["description=", "NUL"]),
    ("file-latin-1", spec(data=GOOD.replace("bad", "b\u00e9d").encode("latin-1")), [], ["not UTF-8", "0xe9"]),
    ("file-binary", spec(data=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))), [], ["binary file"]),
    ("file-too-large", spec(text=GOOD + ("# padding\n" * 110_000)), [], ["larger than 1048576 bytes"]),
    ("file-missing", None, [], ["does not exist"]),
    ("file-is-a-directory", "dir", [], ["not a regular file"]),
    # --- where the study would live
    ("mlflow-uri-closed-port", spec(), ["--mlflow-uri", "http://127.0.0.1:{port}"], ["--mlflow-uri", "does not answer"]),
    ("mlflow-uri-under-a-file", spec(), ["--mlflow-uri", "sqlite:///{file}/mlflow.db"], ["--mlflow-uri", "not a directory"]),
    ("results-db-closed-port", spec(), ["--results-db", "postgresql://u@127.0.0.1:{port}/x"], ["--results-db", "127.0.0.1"]),
    ("results-db-under-a-file", spec(), ["--results-db", "sqlite:///{file}/results.db"], ["--results-db", "not a directory"]),
    ("ray-address-closed-port", spec(), ["--ray-address", "127.0.0.1:{port}"], ["--ray-address", "nothing answers"]),
    ("ray-address-bad-port", spec(), ["--ray-address", "127.0.0.1:http"], ["--ray-address", "HOST:PORT"]),
    ("dir-under-a-file", spec(), ["--dir", "{file}/studies"], ["--dir", "not a directory"]),
    ("dir-with-question-mark", spec(), ["--dir", "{tmp}/a?b"], ["--dir", "'?'"]),
    ("storage-under-a-file", spec(), ["--storage", "{file}/tune"], ["--storage", "not a directory"]),
    ("mlflow-uri-a-text-file", spec(), ["--mlflow-uri", "sqlite:///{file}"], ["--mlflow-uri", "is not an SQLite database"]),
    ("results-db-a-text-file", spec(), ["--results-db", "sqlite:///{file}"], ["--results-db", "is not an SQLite database"]),
    ("results-db-in-memory", spec(), ["--results-db", "sqlite://"], ["--results-db", "in-memory", "cannot hold a study"]),
    ("mlflow-uri-in-memory", spec(), ["--mlflow-uri", "sqlite:///:memory:"], ["--mlflow-uri", "in-memory"]),
    ("dir-a-symbolic-link-loop", spec(), ["--dir", "{loop}"], ["--dir", "loop"]),
    ("storage-a-symbolic-link-loop", spec(), ["--storage", "{loop}/tune"], ["--storage", "a loop"]),
]


def _written(tmp: Path, before: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p not in before)


@pytest.mark.parametrize("case_id, spec_file, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_field_and_writes_nothing(workdir, capsys, case_id, spec_file, extra, expected):
    if case_id == "cpus-10000" and (os.cpu_count() or 1) >= 10000:
        pytest.skip("this machine has 10,000 CPUs")
    path = workdir / "spec.yaml"
    if isinstance(spec_file, dict):
        path.write_bytes(spec_file["data"])
    elif spec_file == "dir":
        path.mkdir()
    blocker = workdir / "a-file"
    blocker.write_text("in the way\n")
    loop = workdir / "loop"
    loop.symlink_to(loop)
    fill = {"port": str(closed_port()), "file": str(blocker), "tmp": str(workdir), "loop": str(loop)}
    args = [a.format(**fill) for a in extra]
    if "--dir" not in args:
        args += ["--dir", str(workdir / "studies")]
    before = set(workdir.rglob("*"))
    rc = main(["run", str(path), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    message = " ".join(err.split())
    for piece in expected:
        assert piece in message, message
    # Nothing written is the event that shows no work started (a study writes its directory
    # before it starts Ray); a wall-clock bound here failed on a loaded machine.
    assert _written(workdir, before) == []


def test_a_gpu_on_a_machine_without_one_is_refused(workdir, capsys):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    path = workdir / "spec.yaml"
    path.write_text(_spec_text({"resources": {"gpus": 1}}))
    assert main(["run", str(path), "--dir", str(workdir / "studies")]) == 2
    assert "resources.gpus=1 is not allowed: this machine has no GPU; use gpus: 0" in capsys.readouterr().err
    assert not (workdir / "studies").exists()


# --- hangs and bombs: in a subprocess, so a regression fails on its timeout instead of hanging ---


class _SilentHandler(BaseHTTPRequestHandler):
    """Accepts the connection and never answers (until the test releases it)."""

    released = threading.Event()

    def do_GET(self):  # noqa: N802 - the http.server interface
        self.released.wait(60)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "case_id",
    ["billion-laughs", "deep-nesting", "mlflow-server-that-never-answers"],
)
def test_no_hang_exit_2_and_nothing_written(workdir, case_id):
    path = workdir / "spec.yaml"
    args = ["--dir", str(workdir / "studies")]
    server = None
    if case_id == "billion-laughs":
        path.write_text(BOMB)
        expected = "alias"
    elif case_id == "deep-nesting":
        path.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
        expected = "nested deeper"
    else:
        path.write_text(GOOD)
        server = HTTPServer(("127.0.0.1", 0), _SilentHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        args += ["--mlflow-uri", f"http://127.0.0.1:{server.server_port}"]
        expected = "--mlflow-uri"
    try:
        out = subprocess.run([STUDY_BIN, "run", str(path), *args], capture_output=True, text=True, timeout=90)
    finally:
        if server is not None:
            _SilentHandler.released.set()
            server.shutdown()
    assert out.returncode == 2, out.stderr
    assert expected in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert not (workdir / "studies").exists()


def _run_measured(args: list[str], timeout: float, memory_cap: int) -> tuple[int, str, int]:
    """(exit status, stderr, peak resident bytes) of a child process: its own peak from wait4,
    not the largest of every child this test process has had. ``memory_cap`` bounds its address
    space, so a regression fails here instead of taking the machine's memory."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))

    with open(os.devnull, "wb") as devnull, subprocess.Popen(
        args, stdout=devnull, stderr=subprocess.PIPE, preexec_fn=cap
    ) as child:
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            err = child.stderr.read().decode(errors="replace")
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        finally:
            killer.cancel()
    return child.returncode, err, usage.ru_maxrss * 1024


@pytest.mark.parametrize(
    "case_id, values, expected",
    [
        ("grid-3-x-1000-values", {"init_scale": 1000, "spectral_radius": 1000, "lr": 1000},
         "search is a grid of 1,000,000,000 configurations (init_scale: 1,000 x spectral_radius: 1,000 x lr: 1,000 values), "
         "which is not allowed: at most 100,000"),
        ("grid-one-parameter-100001-values", {"init_scale": 100_001},
         "search.init_scale.values=<a list of 100,001 values> is not allowed: at most 1,000 values per parameter"),
    ],
)
def test_a_grid_is_sized_from_its_counts_before_anything_is_built(workdir, case_id, values, expected):
    """A grid is refused from the product of its parameters' counts, before Optuna's GridSampler or
    the searcher enumerates a point: 3 x 1,000 values used to pass 5 GB within seconds, and one
    parameter of 100,001 values was accepted after minutes."""
    path = workdir / "spec.yaml"
    path.write_text(_grid(values))
    rc, err, peak = _run_measured(
        [STUDY_BIN, "run", str(path), "--dir", str(workdir / "studies")], timeout=120, memory_cap=4 << 30
    )
    assert rc == 2, err[-3000:]
    assert expected in " ".join(err.split())
    assert "Traceback" not in err
    # The interpreter with torch, pydantic and Optuna imported is about 0.4 GB.
    assert peak < 1 << 30, f"{peak / 2**20:.0f} MiB"
    assert not (workdir / "studies").exists()


# --- preflight parts on their own ----------------------------------------------------------------


def test_check_resources_compares_a_trial_with_the_largest_node_not_the_sum():
    spec = load_spec(quick_spec("res", resources={"cpus": 6, "gpus": 1}))
    cluster = {"a": {"CPU": 4, "GPU": 1}, "b": {"CPU": 8, "GPU": 0}}
    with pytest.raises(SpecError, match=r"no single node of the cluster has both"):
        preflight.check_resources(spec, cluster)
    preflight.check_resources(spec, {**cluster, "c": {"CPU": 6, "GPU": 1}})
    with pytest.raises(SpecError, match=r"resources.cpus=6 is not allowed: .*the largest has 4\); use cpus <= 4"):
        preflight.check_resources(spec, {"a": {"CPU": 4, "GPU": 1}})
    with pytest.raises(SpecError, match=r"resources.gpus=1 is not allowed: the cluster has no GPU"):
        preflight.check_resources(spec, {"b": {"CPU": 8, "GPU": 0}})


def test_node_resources_reads_live_nodes_of_ray_nodes():
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 16.0, "GPU": 2.0, "memory": 1e9}},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 64.0}},
        {"Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 4.0}},
    ]
    assert preflight.node_resources(nodes) == {"10.0.0.1": {"CPU": 16.0, "GPU": 2.0}, "10.0.0.3": {"CPU": 4.0, "GPU": 0.0}}


class _HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_preflight_passes_good_locations_without_writing(workdir):
    from study.locations import resolve

    spec = load_spec(quick_spec("fine"))
    server = HTTPServer(("127.0.0.1", 0), _HealthHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        loc = resolve("fine", workdir / "studies", mlflow_uri=f"http://127.0.0.1:{server.server_port}")
        preflight.check(spec, loc)
        preflight.check(spec, resolve("fine", workdir / "studies"))
    finally:
        server.shutdown()
    assert list(workdir.iterdir()) == []


# --- study query: limits, refusals, odd directory names -------------------------------------------


@pytest.fixture
def results_dir(tmp_path):
    """A studies directory whose name holds '#' and '?' and a study 'q' with a 500-row table."""
    root = tmp_path / "we#ird?dir"
    (root / "q").mkdir(parents=True)
    con = sqlite3.connect(root / "q" / "results.db")
    con.execute("CREATE TABLE t (x INTEGER, s TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"row;{i}") for i in range(500)])
    con.commit()
    con.close()
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.parent.rglob("*"))


def test_query_reads_the_right_file_when_the_directory_has_hash_and_question_mark(results_dir, capsys):
    before = _files(results_dir)
    assert main(["query", "q", "SELECT COUNT(*) AS n FROM t", "--dir", str(results_dir), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "500"]
    assert _files(results_dir) == before  # no other file opened read-write and created


def test_query_of_a_missing_database_creates_nothing(tmp_path, capsys):
    assert main(["query", "nobody", "SELECT 1", "--dir", str(tmp_path / "a#b")]) == 2
    err = capsys.readouterr().err  # a studies directory that is not there is named, not read as empty
    assert f"the studies directory {str(tmp_path / 'a#b')!r} does not exist (from --dir)" in err
    assert list(tmp_path.iterdir()) == []


def test_query_keeps_at_most_max_rows_and_says_how_many_were_cut(results_dir, capsys):
    assert main(["query", "q", "SELECT x FROM t", "--dir", str(results_dir), "--format", "csv", "--max-rows", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["x", "0", "1", "2"]
    assert "showed the first 3 rows; 497 more were cut (--max-rows N; 0: no limit)" in captured.err
    df = api.query("q", "SELECT x FROM t", directory=str(results_dir))
    assert len(df) == 500 and df.attrs["rows_cut"] == 0
    assert api.DEFAULT_MAX_ROWS == 10_000 and api.DEFAULT_TIMEOUT_S == 30


# A query that runs for minutes and then ends (a billion rows): one not stopped at its limit fails
# the test by succeeding late, on any machine, where a wall-clock bound fails on a loaded one.
LONG = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000000000) SELECT {what} FROM c"


def test_query_stops_at_its_time_limit(results_dir, capsys):
    assert main(["query", "q", LONG.format(what="COUNT(*)"), "--dir", str(results_dir), "--timeout", "0.5"]) == 2
    assert "the query was stopped after 0.5 s, its time limit (--timeout raises it)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("DELETE FROM t", "only a single read-only SELECT statement is allowed: the database refused"),
        ("UPDATE t SET x = 0", "the database refused"),
        ("DROP TABLE t", "the database refused"),
        ("ATTACH DATABASE 'other.db' AS o", "the database refused"),
        ("VACUUM INTO 'copy.db'", "the database refused"),
        ("PRAGMA journal_mode = DELETE", "the database refused"),
        ("SELECT 1; DELETE FROM t", "more than one statement"),
        ("SELEC x FROM t", 'the query failed: near "SELEC": syntax error'),
        ("SELECT nope FROM t", "the query failed: no such column: nope"),
        ("", "the query is empty"),
    ],
)
def test_query_refusals_are_one_line_and_change_nothing(results_dir, capsys, monkeypatch, sql, expected):
    monkeypatch.chdir(results_dir.parent)
    before = _files(results_dir)
    assert main(["query", "q", sql, "--dir", str(results_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _files(results_dir) == before
    assert api.query("q", "SELECT COUNT(*) AS n FROM t", directory=str(results_dir))["n"][0] == 500


def test_query_semicolon_and_colon_inside_a_string_are_data(results_dir, capsys):
    sql = "SELECT s, '12:30; ok' AS t FROM t WHERE s = 'row;7'"
    assert main(["query", "q", sql, "--dir", str(results_dir), "--format", "json"]) == 0
    assert capsys.readouterr().out.strip() == '[{"s":"row;7","t":"12:30; ok"}]'


@pytest.mark.parametrize("option, value", [("--timeout", "-1"), ("--max-rows", "-5"), ("--timeout", "0"),
                                           ("--timeout", "nan"), ("--max-bytes", "0"), ("--max-bytes", "lots")])
def test_query_limits_must_not_be_negative(results_dir, capsys, option, value):
    assert main(["query", "q", "SELECT 1", "--dir", str(results_dir), option, value]) == 2
    assert f"{option}=" in capsys.readouterr().err


ROWS = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) SELECT i, {value} AS v FROM c"


def test_query_refuses_a_result_over_its_byte_limit_while_it_streams(results_dir, capsys):
    """50 rows of 10,000 bytes against a 100 KiB limit: refused at the row that passes it, not
    after all of them were read."""
    sql = ROWS.format(n=50, value="randomblob(10000)")
    assert main(["query", "q", sql, "--dir", str(results_dir), "--max-bytes", "100K"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the query's result passed its byte limit" in err and "the limit is 100 KiB (102,400 bytes)" in err, err
    assert "(--max-bytes raises it" in err and "Traceback" not in err
    read = int(err.split(" rows read")[0].rsplit(" in ", 1)[1].replace(",", ""))
    assert read == 11, err  # 11 x 10,008 bytes is the first count over 102,400
    # Under the limit the same rows come back whole.
    assert main(["query", "q", sql, "--dir", str(results_dir), "--max-bytes", "1M", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 51


def test_query_refuses_a_single_value_larger_than_its_byte_limit(results_dir, capsys):
    assert main(["query", "q", "SELECT zeroblob(200000) AS b", "--dir", str(results_dir), "--max-bytes", "100K"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "a value over 100 KiB (102,400 bytes), the limit (--max-bytes raises it)" in err, err


def test_query_of_an_endless_result_cut_at_max_rows_ends_at_its_time_limit(results_dir, capsys):
    assert main(["query", "q", LONG.format(what="i"), "--dir", str(results_dir), "--max-rows", "1", "--timeout", "1",
                 "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["i", "1"]
    assert "showed the first 1 rows; at least" in captured.err


@pytest.mark.parametrize(
    "case_id, sql",
    [
        ("one-800-MB-value", "SELECT zeroblob(800000000) AS b"),
        ("30-rows-of-20-MB", ROWS.format(n=30, value="zeroblob(20000000)")),
    ],
)
def test_query_memory_is_bounded_by_the_default_byte_limit(results_dir, case_id, sql):
    """The audit's queries, through the `study` executable with the default limits: one 800 MB
    value used 5.6 GB and ran past its time limit; 30 rows of 100 MB ended in a MemoryError."""
    rc, err, peak = _run_measured(
        [STUDY_BIN, "query", "q", sql, "--dir", str(results_dir)], timeout=120, memory_cap=4 << 30
    )
    assert rc == 2, err[-3000:]
    message = " ".join(err.split())
    assert "byte limit" in message and "64 MiB" in message and "--max-bytes" in message, message
    assert "Traceback" not in err
    assert peak < 1 << 30, f"{peak / 2**20:.0f} MiB"


def test_postgres_statement_count_ignores_semicolons_in_literals_and_comments():
    from study.record.queries import _statements as count
    assert count("SELECT ';'") == 1
    assert count("SELECT 1;") == 1
    assert count("SELECT 'it''s;' -- a; comment\n") == 1
    assert count("SELECT $$;$$, $tag$;$tag$ /* ; */") == 1
    assert count('SELECT "odd;name" FROM t') == 1
    assert count("SELECT 1; COMMIT; DELETE FROM t") == 3
