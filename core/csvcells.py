"""CSV cells a spreadsheet will not run: every CSV the project writes goes through `writer`.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets (OWASP, CSV injection); a folder named `=cmd|' -C calc'!A0` would put one in potholes.csv. Such a
cell gets a leading `'`, which spreadsheets show as text. Numbers (a longitude of -122.4) stay numbers. A cell
that already starts with `'` gets one more, so `unescape` gives back exactly what was written.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if value.startswith("'"):
        return "'" + value
    if value.startswith(FORMULA_START) and not _number(value):
        return "'" + value
    return value


def unescape(text: Any) -> Any:
    """What `escape` was given, from what it wrote (csv's extra cells, a list, pass through)."""
    return text[1:] if isinstance(text, str) and text.startswith("'") else text


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


class _Writer:
    def __init__(self, f: TextIO) -> None:
        self._w = csv.writer(f, lineterminator="\n")
        # Python 3.11's csv quotes only the characters of lineterminator: a lone \r would end the row
        self._quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Iterable[Any]) -> None:
        cells = [escape(v) for v in row]
        (self._quoted if any(isinstance(c, str) and "\r" in c for c in cells) else self._w).writerow(cells)

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(f: TextIO) -> _Writer:
    """csv.writer with "\\n" line ends and every cell escaped."""
    return _Writer(f)
