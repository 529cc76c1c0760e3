"""Every CSV file the stages write goes through :func:`writer`, so none can carry a formula.

A spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` (and some also one
that begins with a tab or a carriage return) as a formula, and a formula can fetch URLs or
start programs. Class names and file names come from the user's data, so a class folder
named ``=HYPERLINK(...)`` would be one. As OWASP recommends for CSV injection, such a text
cell is written with a leading single quote, which spreadsheets show as plain text.
Numbers are written as they are (``-0.5`` is no formula), and so is text that reads as a
number.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """``value``, or a text that a spreadsheet would run as a formula with ``'`` before it."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)  # "-0.25", "+1e-3": a number, not a formula
        return value
    except ValueError:
        return "'" + value


class _Writer:
    def __init__(self, handle: IO[str], **fmtparams):
        self._writer = csv.writer(handle, **fmtparams)
        # The csv module quotes a cell holding a line break only if that break is in the
        # line terminator: with "\n" lines a bare "\r" is written unquoted, and a reader that
        # takes it for a line break starts a new row (which could begin with a formula). A
        # row with such a cell is written with every cell quoted.
        self._unquoted = set("\r\n") - set(self._writer.dialect.lineterminator)
        self._quoted = csv.writer(handle, **{**fmtparams, "quoting": csv.QUOTE_ALL})

    def writerow(self, row: Iterable[object]) -> None:
        cells = [cell(value) for value in row]
        breaks = any(isinstance(c, str) and not self._unquoted.isdisjoint(c) for c in cells)
        (self._quoted if breaks else self._writer).writerow(cells)

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(handle: IO[str], **fmtparams) -> _Writer:
    """``csv.writer(handle, **fmtparams)`` whose every cell passes through :func:`cell`."""
    return _Writer(handle, **fmtparams)
