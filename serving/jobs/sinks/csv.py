"""The CSV sink: a header row, then one row per file, appended in place.

Fields are quoted as RFC 4180 says: a field holding a comma, a double quote, a carriage return or a line
feed is enclosed in double quotes (quotes inside doubled), so a file name with a line break is still one
row when the output is read back (Python's csv writer, with "\\n" as line terminator, leaves a lone
carriage return unquoted, which splits the row on reading). Rows are built as text directly: this runs once
per image.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cnnserve.serving.jobs.sinks.base import (
    LOG,
    LineWriter,
    RowBatch,
    Sink,
    error_text,
    is_damaged,
    path_text,
    read_text,
    rewrite,
    truncate_torn_tail,
)

_SPECIAL = frozenset(',"\r\n')


def csv_field(text: str) -> str:
    """One CSV field: quoted when it holds a comma, a double quote, a carriage return or a line feed."""
    if _SPECIAL.isdisjoint(text):
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_lines(rows: Iterable[Sequence[str]]) -> str:
    """Rows of text cells as CSV lines, each ended by a line feed."""
    return "".join(",".join(csv_field(cell) for cell in row) + "\n" for row in rows)


class CsvSink(Sink):
    format = "csv"

    def __init__(self, path: Path, top_k: int, model: str, version: int, resume: bool = True) -> None:
        self._cells: list[str] = []
        self._cells_for: Sequence[str] | None = None
        super().__init__(path, top_k, model, version, resume)

    def _open(self) -> LineWriter:
        path = self.path
        if path.exists() and path.stat().st_size > 0:
            truncate_torn_tail(path)
            text = read_text(path)
            rows = list(csv.reader(io.StringIO(text, newline="")))
            if rows:
                self.check_columns(rows[0], path)
                damaged = [row for row in rows[1:] if any(is_damaged(cell) for cell in row)]
                good = [row for row in rows[1:] if len(row) == len(self.columns) and row not in damaged]
                if len(good) != len(rows) - 1:
                    LOG.warning(
                        "repaired %s: dropped %d malformed rows (%d of them not valid UTF-8); their files "
                        "are classified again",
                        path,
                        len(rows) - 1 - len(good),
                        len(damaged),
                    )
                    rewrite(path, csv_lines([self.columns, *good]))
                if good:
                    self.check_model(dict(zip(self.columns, good[0], strict=True)), path)
                self.done = {row[0] for row in good}
        writer = LineWriter(path)
        if path.stat().st_size == 0:
            writer.write_text(csv_lines([self.columns]), force_sync=True)
        return writer

    def _text(self, batch: RowBatch) -> str:
        """The batch's CSV lines, built as text from the columns (this runs once per file)."""
        cells = self._prediction_cells(batch.labels)
        tail = f"{csv_field(self.model)},{self.version},"
        have = min(batch.indices.shape[1], self.top_k) if batch.indices.ndim == 2 else 0
        missing = ",,," * (self.top_k - have)
        no_predictions = ",,," * self.top_k
        errors = batch.errors
        lines: list[str] = []
        append = lines.append
        if have == 1 and not missing:  # the common case, top-1: one lookup and one float per file
            indices = batch.indices[:, 0].tolist()
            scores = batch.scores[:, 0].tolist()
            for position, path in enumerate(batch.paths):
                if errors and position in errors:
                    append(self._error_line(path, errors[position], no_predictions, tail))
                else:
                    index = indices[position]
                    predicted = f"{cells[index]}{scores[position]!r}," if index >= 0 else ",,,"
                    append(f"{csv_field(path_text(path))},{predicted}{tail}\n")
            return "".join(lines)
        index_rows, score_rows = batch.indices.tolist(), batch.scores.tolist()
        for position, path in enumerate(batch.paths):
            if errors and position in errors:
                append(self._error_line(path, errors[position], no_predictions, tail))
                continue
            predicted = "".join(
                f"{cells[i]}{s!r}," if i >= 0 else ",,,"
                for i, s in zip(index_rows[position][:have], score_rows[position][:have], strict=True)
            )
            append(f"{csv_field(path_text(path))},{predicted}{missing}{tail}\n")
        return "".join(lines)

    @staticmethod
    def _error_line(path: str, error: str, no_predictions: str, tail: str) -> str:
        return f"{csv_field(path_text(path))},{no_predictions}{tail}{csv_field(error_text(error))}\n"

    def _prediction_cells(self, labels: Sequence[str]) -> list[str]:
        """`label,index,` for each class, made once per model rather than once per file."""
        if self._cells_for is not labels:
            self._cells = [f"{csv_field(label)},{index}," for index, label in enumerate(labels)]
            self._cells_for = labels
        return self._cells


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
