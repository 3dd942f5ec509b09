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
    ResultRow,
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

    def _text(self, rows: Sequence[ResultRow]) -> str:
        model_version = f"{csv_field(self.model)},{self.version},"
        lines: list[str] = []
        for row in rows:
            line = csv_field(path_text(row.path)) + ","
            for rank in range(self.top_k):
                if rank < len(row.predictions):
                    prediction = row.predictions[rank]
                    line += f"{csv_field(prediction.label)},{prediction.index},{prediction.score!r},"
                else:
                    line += ",,,"
            lines.append(line + model_version + csv_field(error_text(row.error)) + "\n")
        return "".join(lines)


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
