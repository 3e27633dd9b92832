"""Database URLs and connections as SQLAlchemy reads them, for the modules outside study/record that
name a database (locations, preflight checks, the command line) without using SQLAlchemy themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

# The driver's own error, as SQLAlchemy raises it (``.statement`` None: no statement ran, so the
# database could not be reached at all).
DriverError = DBAPIError


class DatabaseUnreachable(Exception):
    """A database URL that names a usable driver, but no connection could be opened; ``reason``
    is the driver's own error."""

    def __init__(self, reason: BaseException):
        super().__init__(str(reason))
        self.reason = reason


def backend(url: str) -> str:
    """The database a URL names: 'sqlite', 'postgresql', ...; raises for text that is no URL."""
    return make_url(url).get_backend_name()


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, as SQLAlchemy reads it; None for :memory: and other databases.
    Raises for text that is no database URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database or ""
    if not db or db == ":memory:" or db.startswith("file::memory:"):
        return None
    if db.startswith("file:"):
        db = unquote(urlsplit(db).path)
    return Path(os.path.realpath(db))  # not Path.resolve, which raises RuntimeError on a link loop


def hide_password(url: str) -> str:
    """The URL with its password as ``***``; raises for text that is no database URL."""
    return make_url(url).render_as_string(hide_password=True)


def check_connects(url: str, connect_timeout_s: int) -> None:
    """Opens one connection and closes it (no table is read or created).

    A driver that is not installed raises ModuleNotFoundError, a URL SQLAlchemy cannot use its own
    error (ArgumentError, NoSuchModuleError), and a database that does not answer within
    ``connect_timeout_s`` (PostgreSQL, MySQL) DatabaseUnreachable."""
    connect_args = {}
    if backend(url) in ("postgresql", "mysql", "mariadb"):
        connect_args["connect_timeout"] = connect_timeout_s
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise DatabaseUnreachable(getattr(exc, "orig", None) or exc) from exc
    finally:
        engine.dispose()
