"""Tables for a terminal, or plain aligned text when the output is not one (a pipe, a file, `kubectl exec`
without `-t`).

Cells are data (names, members, messages): never read as markup, their control characters stripped.
On a terminal: a rich table as wide as the terminal; long text folds, ids never do. Anywhere else there is no
width to fit: one line per row, columns aligned with two spaces, nothing cut or wrapped, no colour, so the
output greps and diffs cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.report.escape import plain

SHORT_ID = 12  # hex digits of a finding id shown in tables: unique among millions of findings (48 bits)


def short_id(finding_id: str) -> str:
    return finding_id[:SHORT_ID]


@dataclass(frozen=True)
class Column:
    name: str
    key: bool = False  # an id or a name to copy: never wrapped
    right: bool = False
    ratio: int | None = None


def console(stderr: bool = False) -> Console:
    """The console for a command's output: colours and the terminal's width on a terminal, plain text elsewhere.
    COLUMNS, when set, still gives the width of a terminal."""
    c = Console(stderr=stderr, emoji=False, highlight=False)
    if not c.is_terminal:
        # No terminal, no width: lines are as long as their content.
        c = Console(stderr=stderr, emoji=False, highlight=False, color_system=None, width=int(
            os.environ.get("COLUMNS") or 0) or 100_000, soft_wrap=True)
    return c


def print_table(
    out: Console,
    title: str | Text | None,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    row_styles: Sequence[str | None] | None = None,
) -> None:
    if out.is_terminal and _fits(out, columns, rows):
        table = Table(title=title, title_justify="left", expand=True)
        for i, col in enumerate(columns):
            # An id column is as wide as its longest value: never folded, never cut with an ellipsis.
            widest = max((len(r[i]) for r in rows), default=0) if col.key else None
            table.add_column(col.name, no_wrap=col.key, overflow="fold", justify="right" if col.right else "left",
                             ratio=None if col.key else col.ratio, min_width=widest)
        for i, row in enumerate(rows):
            # Text, not markup: a name's "[...]" is no style; control characters (ANSI escapes that would recolour
            # or retitle the operator's terminal) are stripped.
            table.add_row(*(Text(plain(v)) for v in row), style=row_styles[i] if row_styles else None)
        out.print(table)
        return
    if title is not None:
        out.print(title if isinstance(title, str) else title.plain, markup=False, soft_wrap=True)
    cells = [[c.name for c in columns], *[[_one_line(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        parts = [v.rjust(w) if col.right else v.ljust(w) for v, w, col in zip(r, widths, columns, strict=True)]
        out.print("  ".join(parts).rstrip(), markup=False, soft_wrap=True)


MIN_FLEX_WIDTH = 16  # narrowest useful column for folded text


def _fits(out: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> bool:
    """Whether a table fits the terminal with its id columns whole and some room for the rest; if not, the plain
    layout (long lines the terminal wraps) keeps every value readable."""
    need = sum(max((len(r[i]) for r in rows), default=0) if c.key else MIN_FLEX_WIDTH for i, c in enumerate(columns))
    return need + 3 * len(columns) + 1 <= out.width


def _one_line(value: str) -> str:
    return plain(value)  # one line, and no control character (an escape sequence in a name is dropped)
