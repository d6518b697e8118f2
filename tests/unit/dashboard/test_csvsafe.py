"""Formula-safe CSV cells and the streamed writer."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtrack.dashboard.csvsafe import csv_stream, safe_cell


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+36 1 234 5678", "'+36 1 234 5678"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=cmd", "'\t=cmd"),
        ("\r=cmd", "'\r=cmd"),
        ("Anna Kovács", "Anna Kovács"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
        (-1, "-1"),
        (81, "81"),
        (True, "true"),
    ],
)
def test_cells_that_a_spreadsheet_would_run_are_quoted(value: object, expected: str) -> None:
    assert safe_cell(value) == expected


@given(st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_no_text_cell_reads_back_as_a_formula(row: list[str]) -> None:
    text = "".join(csv_stream(["a"] * len(row), [row], chunk=1))
    parsed = list(csv.reader(io.StringIO(text, newline="")))[1]
    expected = ["'" + cell if cell[:1] and cell[0] in "=+-@\t\r\n" else cell for cell in row]
    assert parsed == expected
    assert not [cell for cell in parsed if cell[:1] in ("=", "+", "-", "@", "\t", "\r", "\n")]


def test_the_stream_comes_in_chunks_with_the_header_first() -> None:
    chunks = list(csv_stream(["id", "name"], ([i, f"n{i}"] for i in range(5)), chunk=2))
    assert chunks[0].startswith("id,name\r\n")
    assert len(chunks) == 3
    assert "".join(chunks).count("\r\n") == 6
