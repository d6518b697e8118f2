"""CSV that is safe to open in a spreadsheet, written as a stream.

A cell that starts with = + - @ (or a tab or carriage return, which some spreadsheets skip before
looking) is a formula to Excel, LibreOffice and Google Sheets: a customer named `=HYPERLINK(…)` could
run something on the manager's machine. Such cells get a leading single quote (OWASP's advice), which
spreadsheets show as plain text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(value: object) -> str:
    """A cell as text, neutralized when a spreadsheet would read it as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)  # our own numbers: "-1" is a number here, not a formula
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_stream(header: Sequence[str], rows: Iterable[Sequence[object]], *, chunk: int = 500) -> Iterator[str]:
    """The CSV text in chunks of rows, every cell passed through safe_cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    pending = 0
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
        pending += 1
        if pending >= chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
