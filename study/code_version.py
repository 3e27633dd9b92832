"""The code a study ran on, as a report names it: ``0.1.0+g1a2b3c4d5e6f`` (the package's version and
the commit of the checkout it runs from), ``-dirty`` appended where tracked files differ from that
commit, the package's version alone where the code is not a git checkout (an installed wheel).

Asked of git itself (``git describe``): a commit is the only name of the code that a reader can
check out again.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    try:
        return metadata.version("momentum-study")
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def code_version() -> str:
    """This process's code, computed once (a study's driver asks at its start)."""
    version = package_version()
    if not (ROOT / ".git").exists():
        return version
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty=-dirty", "--abbrev=12", "--exclude=*"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{done.stdout.strip()}"
