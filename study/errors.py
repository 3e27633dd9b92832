"""The kinds of failure a study refuses with, one type each.

Every one is raised before the work it would spoil starts, with a message naming the field or
option, the value and what is allowed; the command line answers each with one line and exit
status 2 (``study.cli.main``). Which kind it is says where to look:

- ``SpecError``: the spec's content (a field, a value, a combination, a size that does not fit).
- ``LocationError``: a place or a name: a path, file, directory, port, URL's form, or the name of
  a study.
- ``ServiceError``: a service that does not answer or refuses: a database, an MLflow tracking
  server, a Ray cluster or its Jobs API.

The built-in bases stay what each kind was before it had a type of its own (``SpecError`` and
``LocationError`` are ValueErrors, ``ServiceError`` a RuntimeError), so code that catches those
keeps working.
"""

from __future__ import annotations


class StudyError(Exception):
    """Any refusal of the kinds below; the message is written for the user, one line."""


class SpecError(StudyError, ValueError):
    """A spec that cannot run; the message names the field, the value and what is allowed."""


class LocationError(StudyError, ValueError):
    """A study name or place that cannot be used; the message names the option, the value and what
    is allowed."""


class ServiceError(StudyError, RuntimeError):
    """A database, MLflow server or Ray cluster that cannot be reached or refuses; the message
    names the option that points at it."""
