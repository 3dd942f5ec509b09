"""The CSV sink: a header row, then one row per file, appended in place."""

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
    is_damaged,
    read_text,
    rewrite,
    truncate_torn_tail,
)


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
                    rewrite(path, _csv_lines([self.columns, *good]))
                if good:
                    self.check_model(dict(zip(self.columns, good[0], strict=True)), path)
                self.done = {row[0] for row in good}
        writer = LineWriter(path)
        if path.stat().st_size == 0:
            writer.write_text(_csv_lines([self.columns]), force_sync=True)
        return writer

    def _text(self, rows: Sequence[ResultRow]) -> str:
        return _csv_lines(self._cells(row) for row in rows)

    def _cells(self, row: ResultRow) -> list[Any]:
        """The CSV cells of a row, built directly (this runs once per image)."""
        cells: list[Any] = [row.path]
        for rank in range(self.top_k):
            if rank < len(row.predictions):
                prediction = row.predictions[rank]
                cells += [prediction.label, prediction.index, prediction.score]
            else:
                cells += ["", "", ""]
        cells += [self.model, self.version, " ".join(row.error.split()) if row.error else ""]
        return cells


def _csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
