"""The examples in docstrings are part of the suite: pyproject.toml collects trainables/ and study/
with ``--doctest-modules``, so an example that goes stale fails `make test` like any other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The project's own configuration, as `make test` runs it; no cache written into the checkout.
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p",
                           "no:cacheprovider", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_docstring_examples_of_trainables_and_study_are_collected_and_pass():
    out = _pytest("--rootdir", str(ROOT), "-rA", "trainables", "study", cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    for item in ("trainables/schedules.py::trainables.schedules.eq5",
                 "trainables/schedules.py::trainables.schedules.with_final_phase",
                 "trainables/init.py::trainables.init.sparse_init",
                 "study/plan/devices.py::study.plan.devices.trial_device"):
        assert f"PASSED {item}" in out.stdout, f"{item} was not collected:\n{out.stdout[-4000:]}"
    # study/api.py's examples need a study: marked +SKIP, so they are neither run nor failures.
    assert " failed" not in out.stdout, out.stdout[-4000:]


def test_a_stale_docstring_example_fails_the_suite(tmp_path):
    (tmp_path / "stale.py").write_text(
        'def double(x):\n'
        '    """\n'
        '    >>> double(2)\n'
        '    4\n'
        '    """\n'
        '    return 2 * x\n'
        '\n\n'
        'def half(x):\n'
        '    """The example below went stale when half() changed.\n\n'
        '    >>> half(4)\n'
        '    2\n'
        '    """\n'
        '    return x / 2\n'
    )
    out = _pytest("--rootdir", str(tmp_path), str(tmp_path), cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "1 failed, 1 passed" in out.stdout, out.stdout[-3000:]
    assert "stale.py::stale.half" in out.stdout
