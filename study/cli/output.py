"""How the command line prints rows: a compact table to be read, CSV and JSON with every digit."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from typing import Any, Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


def emit(df: Any, fmt: str, out: Console, title: str | None = None, optional: Sequence[str] = ()) -> None:
    """CSV and JSON with every digit (pandas writes floats as repr); a table rounded to be read,
    fitted to the terminal's width (``table``)."""
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(json.dumps(records(df), separators=(",", ":")) + "\n")
    else:
        out.print(table(df, title, out.width, optional))


# Between two columns: the right padding of one and the (blank) rule of the box.
_GAP = 2


def table(df: Any, title: str | None = None, width: int | None = None, optional: Sequence[str] = ()) -> RenderableType:
    """A compact table, no outer edge or column rules, that shortens values, never words: a cell
    or header is never split across lines. Where the columns do not fit ``width``, in turn:
    headers wider than their values are abbreviated (a legend under the table names them), floats
    get 3 significant digits instead of 4, the ``optional`` columns are left out in their order
    (the note under the table names them; CSV and JSON have every column), and last any text value
    still too wide ends in an ellipsis."""
    columns = [str(c) for c in df.columns]
    numeric = [df[c].dtype.kind in "iuf" for c in df.columns]
    raw = list(df.itertuples(index=False))
    digits = 4
    cells = [[cell(v, digits) for v in row] for row in raw]
    headers = list(columns)
    shown = list(range(len(columns)))

    def cell_width(i: int) -> int:
        return max((len(r[i]) for r in cells), default=0)

    def need() -> int:
        return sum(max(len(headers[i]), cell_width(i)) for i in shown) + _GAP * len(shown) - 1

    left_out: list[str] = []
    if width is not None and need() > width:
        # Headers wider than their values, the largest saving first, until the table fits.
        for i in sorted(shown, key=lambda i: cell_width(i) - len(headers[i])):
            if need() > width and len(headers[i]) > max(cell_width(i), 3):
                headers[i] = _abbreviation(columns[i], set(headers) | set(columns))
        if need() > width:
            digits = 3
            cells = [[cell(v, digits) for v in row] for row in raw]
        for name in optional:
            if need() <= width:
                break
            if name in columns and columns.index(name) in shown and len(shown) > 1:
                shown.remove(columns.index(name))
                left_out.append(name)
        # What left the table may leave room for whole headers again.
        for i in shown:
            short, headers[i] = headers[i], columns[i]
            if need() > width:
                headers[i] = short
    legend = [f"{headers[i]}={columns[i]}" for i in shown if headers[i] != columns[i]]
    grid = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                 title_justify="left")
    for n, i in enumerate(shown):
        # The first column names the row (a trial, a study): it keeps its width, others give way.
        grid.add_column(headers[i], justify="right" if numeric[i] else "left", no_wrap=True, overflow="ellipsis",
                        min_width=cell_width(i) if n == 0 else None)
    for r in cells:
        grid.add_row(*[r[i] for i in shown])
    notes = []
    if legend:
        notes.append(Text("; ".join(legend), style="dim"))
    if left_out:
        notes.append(Text(f"not shown (too wide for {width} columns; --format csv has them): {', '.join(left_out)}",
                          style="dim"))
    return Group(grid, *notes) if notes else grid


def _abbreviation(name: str, taken: set[str]) -> str:
    """'spectral_radius' -> 'sr', 'diverged' -> 'div': the parts' initials, or a word's first three
    letters; longer where that is taken."""
    parts = [p for p in name.split("_") if p]
    for n in range(1, max((len(p) for p in parts), default=1) + 1):
        short = "".join(p[:n] for p in parts) if len(parts) > 1 else name[: n + 2]
        if short not in taken and len(short) < len(name):
            return short
    return name


def cell(v: Any, digits: int = 4) -> str:
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
        return f"{v:.{digits}g}"
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
