"""What every result sink shares: the row, the columns, and one lifecycle (open/resume, write, close).

One row per file: `path`, the top-k predictions (`label`, `index`, `score` for the best class, then
`label_2`, `index_2`, `score_2`, ...), `model`, `version` and `error` (empty when the file was
classified). Rows are appended batch by batch and flushed, so a crash keeps every batch written before
it. The output is always valid UTF-8: a file name's bytes that are not UTF-8 (a Linux name may hold any
bytes) are written as `\\xNN` (`path_text`), and resume compares names in that form. Reopening an output
repairs a torn last line (a SIGKILL in the middle of a write) and drops rows that are malformed or not
valid UTF-8 (a damaged file), and returns the paths already done, which the job then skips: every file
ends up in the table exactly once. A write that fails (a full disk) leaves no part of its batch in the
file and stops the job with an OutputError naming the file; the rerun resumes. Each format is one sink
(csv.py, jsonl.py, parquet.py); `open_sink` picks it from the output's extension.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.serving.errors import OutputError

LOG = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
FSYNC_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ResultRow:
    """One file's outcome: its predictions best first, or an error message and no predictions."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class RowBatch:
    """The outcomes of consecutive files, column by column: what an engine hands the job, and the sinks
    write.

    Row `i` is the file `paths[i]`: its error message when `errors` has one for `i`; otherwise its top-k
    classes `indices[i]` (into `labels`, best first; -1 where a rank has no class) with their `scores[i]`.
    Columns rather than an object per file: a job writes tens of thousands of rows a second.
    """

    paths: Sequence[str]
    labels: Sequence[str]
    indices: np.ndarray  # (files, k) integers
    scores: np.ndarray  # (files, k) floats
    errors: Mapping[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def failed(self) -> int:
        return len(self.errors)

    def rows(self) -> list[ResultRow]:
        """One ResultRow per file (to read a batch; the sinks format the columns directly)."""
        indices, scores = self.indices.tolist(), self.scores.tolist()
        rows = []
        for position, path in enumerate(self.paths):
            error = self.errors.get(position)
            if error is not None:
                rows.append(ResultRow(path=path, error=error))
                continue
            predictions = tuple(
                Prediction(label=self.labels[i], index=i, score=float(s))
                for i, s in zip(indices[position], scores[position], strict=True)
                if i >= 0
            )
            rows.append(ResultRow(path=path, predictions=predictions))
        return rows

    @classmethod
    def from_rows(cls, rows: Sequence[ResultRow]) -> RowBatch:
        """The columns of a list of rows (labels gathered from their predictions)."""
        k = max((len(row.predictions) for row in rows), default=0)
        indices = np.full((len(rows), k), -1, dtype=np.int64)
        scores = np.zeros((len(rows), k), dtype=np.float64)
        names: dict[int, str] = {}
        errors: dict[int, str] = {}
        for position, row in enumerate(rows):
            if row.error:
                errors[position] = row.error
                continue
            for rank, prediction in enumerate(row.predictions):
                indices[position, rank] = prediction.index
                scores[position, rank] = prediction.score
                names[prediction.index] = prediction.label
        labels = [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
        return cls([row.path for row in rows], labels, indices, scores, errors)


def output_format(path: Path) -> str:
    """The format chosen by the output's extension; an error naming the supported ones otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"cannot tell the output format of {path}: use one of {', '.join(sorted(FORMATS))} as extension"
        )
    return fmt


def columns(top_k: int) -> list[str]:
    """The table's columns for top-k predictions, in order."""
    names = ["path"]
    for rank in range(1, top_k + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        names += [f"label{suffix}", f"index{suffix}", f"score{suffix}"]
    return [*names, "model", "version", "error"]


def path_text(path: str) -> str:
    """A file name as the output holds it, always valid UTF-8: each byte of the name that is not UTF-8
    (Python hands them over as lone surrogates, U+DC80-U+DCFF) is written as `\\xNN`; any other name is
    written as it is. Resume compares names in this form."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no file system hands over: escape it as itself
            return path.encode("utf-8", "backslashreplace").decode("utf-8")
    return path


def error_text(error: str) -> str:
    """An error message as one line of valid UTF-8 (an exception's text may quote a file name)."""
    return path_text(" ".join(error.split())) if error else ""


def batch_records(batch: RowBatch, top_k: int, model: str, version: int) -> list[dict[str, Any]]:
    """A batch's rows as column → value mappings; prediction columns are None for an error row or a rank
    without a class."""
    records = []
    indices, scores = batch.indices.tolist(), batch.scores.tolist()
    have = batch.indices.shape[1] if batch.indices.ndim == 2 else 0
    for position, path in enumerate(batch.paths):
        error = batch.errors.get(position)
        record: dict[str, Any] = {"path": path_text(path)}
        for rank in range(top_k):
            suffix = "" if rank == 0 else f"_{rank + 1}"
            index = indices[position][rank] if error is None and rank < have else -1
            record[f"label{suffix}"] = batch.labels[index] if index >= 0 else None
            record[f"index{suffix}"] = index if index >= 0 else None
            record[f"score{suffix}"] = float(scores[position][rank]) if index >= 0 else None
        record["model"] = model
        record["version"] = version
        record["error"] = error_text(error) if error is not None else ""
        records.append(record)
    return records


def row_record(row: ResultRow, top_k: int, model: str, version: int) -> dict[str, Any]:
    """One row as a column → value mapping (see `batch_records`)."""
    return batch_records(RowBatch.from_rows([row]), top_k, model, version)[0]


def truncate_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by a crash); returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        # Walk back to the last newline in blocks.
        position = size
        keep = 0
        while position > 0:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = position + newline + 1
                break
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    LOG.warning("repaired %s: removed a torn last line of %d bytes", path, size - keep)
    return size - keep


# What a byte that is not UTF-8 becomes when a file is read with errors="surrogateescape".
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def read_text(path: Path) -> str:
    """A result file's text; bytes that are not UTF-8 (a damaged file) survive as lone surrogates, which
    `is_damaged` finds, rather than stopping the job with a UnicodeDecodeError."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def is_damaged(text: str) -> bool:
    """Whether a row's text held bytes that are not UTF-8 (the sinks only ever write UTF-8)."""
    return _UNDECODABLE.search(text) is not None


def rewrite(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.rewrite")
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, path)


class LineWriter:
    """Appends text lines to a file, a batch per write; fsyncs at most once a second and at close.

    Unbuffered: a batch is in the file when `write_text` returns, or -- when the write fails (a full disk) --
    none of it is (the file is cut back to its size before the batch), so a rerun finds whole rows only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()

    def write_text(self, text: str, force_sync: bool = False) -> None:
        data = memoryview(text.encode("utf-8"))
        size = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise
        now = time.monotonic()
        if force_sync or now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class Sink:
    """An open output: `done` (the paths already in it, as `path_text` writes them), `write()` a batch of
    rows, `close()` at the end.

    Opening resumes: it repairs what a crash left and reads the paths already done; `resume=False` starts
    over. A subclass opens its format in `_open` and turns rows into text in `_text`.
    """

    format = ""

    def __init__(self, path: Path, top_k: int, model: str, version: int, resume: bool = True) -> None:
        self.path = path
        self.top_k = top_k
        self.model = model
        self.version = version
        self.columns = columns(top_k)
        self.done: set[str] = set()
        self.rows_written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in self._files():
                stale.unlink(missing_ok=True)
        self._writer = self._open()

    def _files(self) -> set[Path]:
        """The files this sink owns (removed when starting over)."""
        return {self.path}

    def _open(self) -> LineWriter:
        raise NotImplementedError

    def _text(self, batch: RowBatch) -> str:
        raise NotImplementedError

    def check_columns(self, found: Sequence[str], where: Path) -> None:
        if list(found) != self.columns:
            raise OutputError(
                f"{where} has columns {', '.join(found)} but this job writes {', '.join(self.columns)} "
                "(a different --top-k?): use --restart to overwrite it, or another --output"
            )

    def check_model(self, record: dict[str, Any], where: Path) -> None:
        if record.get("model") not in (None, "", self.model):
            raise OutputError(
                f"{where} holds results of model {record['model']!r}, not {self.model!r}: "
                "use --restart to overwrite it, or another --output"
            )
        if str(record.get("version")) not in ("", "None", str(self.version)):
            LOG.warning(
                "%s holds results of %s version %s; the rest is classified with version %d",
                where,
                self.model,
                record.get("version"),
                self.version,
            )

    def write(self, batch: RowBatch | Sequence[ResultRow]) -> None:
        """Append one batch of rows in one write, then flush it."""
        if not isinstance(batch, RowBatch):
            batch = RowBatch.from_rows(batch)
        if not len(batch):
            return
        try:
            self._writer.write_text(self._text(batch))
        except OSError as error:
            raise self.write_error(error) from error
        self.done.update(map(path_text, batch.paths))
        self.rows_written += len(batch)

    def write_error(self, error: OSError) -> OutputError:
        """The job's error for a failed write: the file, the reason, and that a rerun resumes."""
        return OutputError(
            f"cannot write {self.path}: {error.strerror or error}; the rows written so far are kept: fix "
            "this (free some space) and rerun the same command to resume"
        )

    def close(self, finished: bool = True) -> None:
        """Flush and sync; `finished`: the job classified everything (a Parquet sink then writes its file)."""
        try:
            self._writer.close()
        except OSError as error:
            raise self.write_error(error) from error
