"""A command's NAME is a study's name, never a path (issue 18): `study delete ..` once removed the
directory above the studies, `study delete .` the studies directory itself, an absolute path the
directory it named, and the read-only commands read whatever such a name reached. A study
directory that is a symbolic link was reported deleted while its files stayed.

Every test runs the real `study` executable (the read-only commands' refusals: study.cli.main.main
in this process) against real files in a temporary directory and checks, byte for byte and by
modification time, that nothing outside (or inside) was touched.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import STUDY_BIN, study_in_process

NAME_RULE_WORDS = "use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MOMENTUM_STUDY_DIR", "MOMENTUM_STUDY_RESULTS_DB", "MLFLOW_TRACKING_URI", "RAY_ADDRESS",
                "MOMENTUM_STUDY_STORAGE"):
        env.pop(var, None)
    return env


def study(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([STUDY_BIN, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (links not followed): its kind, bytes and modification time."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_dir():
                out[str(p)] = ("dir", st.st_mtime_ns)
            else:
                out[str(p)] = ("file", p.read_bytes(), st.st_mtime_ns)
    return out


@pytest.fixture
def tree(tmp_path):
    """X/studies/a (a study directory), X/keep/f (a file beside the studies directory) and
    X/results.db (an SQLite database where `..` would find one, with a table `secret`)."""
    x = tmp_path / "X"
    (x / "studies" / "a").mkdir(parents=True)
    (x / "studies" / "a" / "spec.yaml").write_text("name: a\n")
    (x / "keep").mkdir()
    (x / "keep" / "f").write_text("keep me\n")
    con = sqlite3.connect(x / "results.db")
    con.execute("CREATE TABLE secret (v TEXT)")
    con.execute("INSERT INTO secret VALUES ('outside the studies directory')")
    con.commit()
    con.close()
    return x


def _refused(out: subprocess.CompletedProcess, name: str) -> None:
    message = " ".join(out.stderr.split())
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert f"NAME={name!r} is not allowed" in message, message
    assert "deleted" not in out.stdout


@pytest.mark.parametrize("name", ["..", ".", "ABS", "a/..", "../keep"])
def test_delete_refuses_a_path_as_name_and_touches_nothing(tree, name):
    name = str(tree / "keep") if name == "ABS" else name
    before = snapshot(tree)
    out = study("delete", name, "--yes", "--dir", str(tree / "studies"), cwd=tree)
    _refused(out, name)
    message = " ".join(out.stderr.split())
    assert NAME_RULE_WORDS in message or "no path separators" in message
    assert snapshot(tree) == before


# The read-only commands' refusals run study.cli.main.main in this process (the same code without
# an interpreter start each); stop, resume and ui keep the executable, whose timeout ends them
# should a refusal regress into a command that waits.
IN_PROCESS = {"status", "results", "query", "report"}


@pytest.mark.parametrize(
    "command",
    [
        ["status", ".."],
        ["results", ".."],
        ["query", "..", "SELECT v FROM secret"],
        ["report", ".."],
        ["stop", ".."],
        ["resume", ".."],
        ["ui", ".."],
        ["query", "ABS", "SELECT v FROM secret"],
    ],
    ids=["status", "results", "query", "report", "stop", "resume", "ui", "query-absolute"],
)
def test_every_command_that_takes_a_name_refuses_a_path(tree, command, monkeypatch):
    command = [str(tree) if c == "ABS" else c for c in command]
    before = snapshot(tree)
    if command[0] in IN_PROCESS:
        monkeypatch.chdir(tree)
        out = study_in_process(*command, "--dir", str(tree / "studies"), env=_env())
    else:
        out = study(*command, "--dir", str(tree / "studies"), cwd=tree)
    _refused(out, command[1])
    assert "outside the studies directory" not in out.stdout
    assert snapshot(tree) == before


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_study_directory_that_is_a_symbolic_link_is_never_reported_deleted(tree, target):
    """A link leaving the studies directory is refused by every command; one to another study
    inside it is refused by `delete` (rmtree does not follow links: the files would stay)."""
    elsewhere = tree / "keep" if target == "outside" else tree / "studies" / "a"
    link = tree / "studies" / "lnk"
    link.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(tree)
    out = study("delete", "lnk", "--yes", "--dir", str(tree / "studies"), cwd=tree)
    message = " ".join(out.stderr.split())
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "deleted" not in out.stdout and "Traceback" not in out.stderr
    assert "symbolic link" in message and str(elsewhere) in message, message
    assert snapshot(tree) == before
    if target == "outside":
        status = study("status", "lnk", "--dir", str(tree / "studies"), cwd=tree)
        assert status.returncode == 2 and "symbolic link" in status.stderr, status.stderr
        assert snapshot(tree) == before


def test_a_study_name_still_deletes_its_own_directory_and_nothing_else(tree):
    before = snapshot(tree)
    out = study("delete", "a", "--yes", "--dir", str(tree / "studies"), cwd=tree)
    assert out.returncode == 0, out.stderr
    assert "study a deleted" in out.stdout
    after = snapshot(tree)
    studies, gone = str(tree / "studies"), str(tree / "studies" / "a")
    expected = {k: v for k, v in before.items() if k != gone and not k.startswith(gone + os.sep)}
    expected[studies] = after[studies]  # the directory's own mtime moves with the removal
    assert after == expected


def test_the_spec_and_the_command_line_share_one_name_rule():
    from study.spec import names
    from study.spec import model as spec
    from study.locations import LocationError, named_study_dir

    assert spec.NAME_RULE is names.NAME_RULE
    for bad in ("..", ".", "/etc", "a/b", "a\\b", "", "-x", "x" * 101, "bad\n"):
        with pytest.raises(LocationError, match="NAME="):
            named_study_dir(Path("/tmp"), bad)
        with pytest.raises(spec.SpecError, match="name="):
            spec.load_spec({**_quick("ok"), "name": bad})
    for good in ("a", "quick-1.v2", "X_9", "x" * 100):
        assert named_study_dir(Path("/tmp"), good) == Path("/tmp") / good
        assert spec.load_spec({**_quick("ok"), "name": good}).name == good


def _quick(name: str) -> dict:
    from conftest import quick_spec

    return quick_spec(name)
