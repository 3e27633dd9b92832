"""What the commands of the `study` command line share: exit statuses, where a study lives, and
how a server a command runs ends."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from rich.console import Console

from study.cluster.servers import PortBusy
from study.locations import Locations, resolve

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def locate(args: argparse.Namespace, name: str) -> Locations:
    """The study's locations from the command's options (or the environment, or the defaults)."""
    return resolve(
        name, args.dir, args.results_db, args.mlflow_uri, getattr(args, "ray_address", None), getattr(args, "storage", None)
    )


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
