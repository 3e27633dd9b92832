"""How the command line prints rows: a compact table to be read, CSV and JSON with every digit."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def emit(df: Any, fmt: str, out: Console, title: str | None = None) -> None:
    """CSV and JSON with every digit (pandas writes floats as repr); a table rounded to be read."""
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(json.dumps(records(df), separators=(",", ":")) + "\n")
    else:
        out.print(table(df, title))


def table(df: Any, title: str | None = None) -> Table:
    """A compact table: no outer edge or column rules, so it fits 80 columns; cells fold instead of
    ending in an ellipsis, so nothing printed is cut."""
    shown = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    for col in df.columns:
        numeric = df[col].dtype.kind in "iuf"
        shown.add_column(str(col), justify="right" if numeric else "left", overflow="fold")
    for row in df.itertuples(index=False):
        shown.add_row(*[cell(v) for v in row])
    return shown


def cell(v: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits (whole numbers as integers),
    times to the second. CSV and JSON keep every digit."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v):,} bytes>"  # a blob is not read in a table (CSV and JSON carry every byte)
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] in " T" and v[13] == ":":
        return v[:19].replace("T", " ")  # an ISO time from the database, to the second
    return str(v)


def json_value(v: Any) -> Any:
    """Every digit of a float (Python's repr, which reads back to the same float); NaN as null and
    the infinities as the strings "inf" and "-inf" (JSON has no number for them)."""
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if hasattr(v, "item"):  # numpy integers and booleans
        return v.item()
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if v is None or isinstance(v, (str, int, bool, list, dict)):
        return v
    return str(v)


def records(df: Any) -> list[dict]:
    return [{str(k): json_value(v) for k, v in zip(df.columns, row)} for row in df.itertuples(index=False)]
