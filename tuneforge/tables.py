"""Tables for people, printed the same way by every command (rich, no colour). Imports no torch.

    print_table([{"instance": "g5.xlarge", "USD/h": "$1.01"}, ...], title="Cost comparison")
    print_pairs([("instance", "aws g5.xlarge (1x A10G-24GB)"), ("training cost", "$3.02")])

Columns are as wide as their widest cell, two spaces apart, no borders; a cell is never wrapped nor cut,
whatever the terminal's width and also when stdout is a pipe or a log file (logs and tests read these
lines), and cells are plain text (a `[1]` or `[bold]` in a cell is printed as it is). Trailing spaces are
trimmed. rich is imported on the first table, so importing this module costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

GAP = 2  # spaces between columns


def _lines(header: Sequence[str] | None, rows: Sequence[Sequence[str]], title: str | None) -> list[str]:
    """The table's lines, laid out on a console as wide as the table, so that nothing wraps."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    ncols = len(header) if header is not None else len(rows[0])
    table = Table(
        box=None,
        show_header=header is not None,
        pad_edge=False,
        padding=(0, GAP // 2),
        header_style=None,
        expand=False,
    )
    for name in header or [""] * ncols:
        table.add_column(Text(name), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    widths = [max(cell_len(row[i]) for row in [*([header] if header else []), *rows]) for i in range(ncols)]
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=sum(w + GAP for w in widths) + 1,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        markup=False,
        emoji=False,
        highlight=False,
    )
    console.print(table)
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    return ([title] if title else []) + lines


def table_lines(rows: list[dict[str, Any]], title: str | None = None) -> list[str]:
    """The lines `print_table` prints."""
    if not rows:
        return []
    columns = [str(c) for c in rows[0]]
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in rows[0]] for r in rows]
    return _lines(columns, cells, title)


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """One row per dict under a header of the first one's keys (a missing or None value is an empty
    cell), after the title if one is given; nothing for no rows."""
    for line in table_lines(rows, title):
        print(line)


def print_pairs(rows: list[tuple[str, str]]) -> None:
    """(label, value) lines, the values aligned: `price per hour  $1.01 (on-demand, ...)`."""
    if rows:
        for line in _lines(None, [[str(k), str(v)] for k, v in rows], None):
            print(line)


def duration(seconds: float) -> str:
    """As a person writes it: 0.4 s, 12 s, 3 min 5 s, 1 h 2 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
