"""What the commands of the `study` command line share: exit statuses, where a study lives, and
how a server a command runs ends."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from rich.console import Console

from study.cluster.servers import PortBusy
from study.errors import LocationError
from study.locations import ENV_DIR, ENV_RESULTS_DB, Locations, redact, resolve, studies_root, with_driver

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def locate(args: argparse.Namespace, name: str) -> Locations:
    """The study's locations from the command's options (or the environment, or the defaults)."""
    return resolve(
        name, args.dir, args.results_db, args.mlflow_uri, getattr(args, "ray_address", None), getattr(args, "storage", None)
    )


# At most this many names in the error that lists the studies there are.
_NAMES_SHOWN = 20


def studies_dir(args: argparse.Namespace) -> Path | None:
    """The studies directory the command reads, or None where a shared results database (not a
    directory) holds the studies. A directory that is not there is an error that says where the
    command looked: a mistyped --dir must not read as "no studies"."""
    if args.results_db or os.environ.get(ENV_RESULTS_DB):
        return None
    root = studies_root(args.dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise LocationError(f"the studies directory {str(root)!r} {what} ({_dir_from(args)}); give the "
                            "directory the study was run in")
    return root


def dir_given(args: argparse.Namespace) -> bool:
    """Whether the user named the studies directory (--dir or the environment), not the default."""
    return bool(args.dir or os.environ.get(ENV_DIR))


def _dir_from(args: argparse.Namespace) -> str:
    if args.dir:
        return "from --dir"
    if os.environ.get(ENV_DIR):
        return f"from {ENV_DIR}"
    return f"the default, ./studies; --dir or {ENV_DIR} names another"


def check_known(args: argparse.Namespace) -> None:
    """NAME is a study this command can find: its directory, or its row in a shared results
    database. Otherwise a LocationError that says where it looked and lists the studies there."""
    from study import api  # pandas and SQLAlchemy: only for commands that read a study
    from study.record import queries

    root = studies_dir(args)
    if root is not None and (root / args.name).is_dir():
        return
    shared = args.results_db or os.environ.get(ENV_RESULTS_DB)
    if root is None and shared and "://" in shared and not shared.startswith("sqlite"):
        # A database server: one that cannot list its studies (it does not answer, or holds no
        # study table) is left to the command, which says what is wrong with it.
        try:
            names = sorted(str(n) for n in queries.studies(with_driver(shared))["name"])
        except queries.QueryError:
            return
    else:
        names = sorted(str(n) for n in api.studies(args.dir, args.results_db)["name"])
    if args.name in names:
        return
    where = repr(str(root)) if root is not None else \
        f"the results database {redact(args.results_db or os.environ.get(ENV_RESULTS_DB))}"
    if not names:
        there = "there are no studies there"
    else:
        more = len(names) - _NAMES_SHOWN
        there = "the studies there: " + ", ".join(names[:_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
    raise LocationError(f"no study named {args.name!r} in {where}; {there}")


def local_ray_first(args: argparse.Namespace) -> None:
    """Without a cluster address the study starts its own Ray on 127.0.0.1, which needs
    study.run.local_ray imported before ray (it sets what Ray reads at import). With an address the
    driver joins the cluster under the machine's own address, so nothing is set."""
    if not (getattr(args, "ray_address", None) or os.environ.get("RAY_ADDRESS")):
        import study.run.local_ray  # noqa: F401  (only here: with an address it must not run)


def serving(start: Callable[[], int], what: str, err: Console) -> int:
    """Runs a server until it ends: a busy port is bad input (exit 2), a server that did not start exit 1."""
    try:
        return start()
    except PortBusy as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] {what} did not start: {exc}", highlight=False)
        return EXIT_FAILED
