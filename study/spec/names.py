"""A study's name: the one rule for the `name` field of a spec and the NAME of every command.

A name becomes a directory under the studies directory, an MLflow experiment and an Optuna study,
so it is a plain name and never a path: no separators, no '.' or '..', nothing absolute.
"""

from __future__ import annotations

import re
from typing import Any

# Used with fullmatch: `$` would also match before a trailing newline. The first character is a
# letter or digit, so '.', '..' and hidden names cannot match.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ALLOWED = "use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
WHY = "it names a directory, an MLflow experiment and an Optuna study"


def name_problem(value: Any, field: str = "name") -> str | None:
    """Why ``value`` is not a study name (a message naming the field, the value and what is
    allowed), or None when it is one."""
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return f"{field}={value!r} is not allowed: no path separators ('/' or '\\'); {ALLOWED} ({WHY})"
    if not isinstance(value, str) or not NAME_RULE.fullmatch(value):
        return f"{field}={value!r} is not allowed: {ALLOWED} ({WHY})"
    return None


def check_name(value: Any, field: str = "name") -> str:
    """``value`` if it is a study name, else ValueError with name_problem's message."""
    problem = name_problem(value, field)
    if problem:
        raise ValueError(problem)
    return value
