"""The `study` command line: one module per command group, `main` in study/cli/main.py."""

from study.cli.main import main

__all__ = ["main"]
