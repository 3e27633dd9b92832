"""The code a study ran on, as a report names it: ``0.1.0+g1a2b3c4d5e6f`` (the package's version and
the commit of the checkout it runs from), ``-dirty`` appended where the code's tracked files differ
from that commit, the package's version alone where the code is not a git checkout (an installed
wheel).

Asked of git itself: a commit is the only name of the code that a reader can check out again.
"Dirty" looks at the code only (CODE_PATHS): `study evidence` rewrites docs/results/ as it goes,
and its own outputs must not mark the next study's code as modified.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What decides what a study computes: the service, the trainer, the specs and the dependencies.
CODE_PATHS = ("study", "trainables", "search_spaces", "pyproject.toml")


def package_version() -> str:
    try:
        return metadata.version("momentum-study")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)


@lru_cache(maxsize=1)
def code_version() -> str:
    """This process's code, computed once (a study's driver asks at its start)."""
    version = package_version()
    if not (ROOT / ".git").exists():
        return version
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return version
        changed = _git("diff", "--quiet", "HEAD", "--", *CODE_PATHS).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{head.stdout.strip()}{'-dirty' if changed else ''}"
