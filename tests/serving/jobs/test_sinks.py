"""The batch job's result table: formats, columns, torn-line repair and resume bookkeeping."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cnnserve.serving.errors import OutputError
from cnnserve.serving.jobs.sinks import (
    Prediction,
    ResultRow,
    RowBatch,
    columns,
    open_sink,
    path_text,
    read_table,
)

ROWS = [
    ResultRow("a/1.png", (Prediction("7", 7, 0.9), Prediction("1", 1, 0.05))),
    ResultRow('b, with "quotes".png', (Prediction("3", 3, 0.5), Prediction("8", 8, 0.25))),
    ResultRow("bad.jpg", error="cannot decode image:\nline two"),
]


def test_columns_for_top_k() -> None:
    assert columns(1) == ["path", "label", "index", "score", "model", "version", "error"]
    assert columns(2)[4:7] == ["label_2", "index_2", "score_2"]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_each_format_round_trips_and_resumes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    table = open_sink(path, top_k=2, model="mnist_cnn", version=3)
    table.write(ROWS[:2])
    table.close(finished=False)  # a crash: Parquet keeps its journal, the others their rows

    table = open_sink(path, top_k=2, model="mnist_cnn", version=3)
    assert table.done == {ROWS[0].path, ROWS[1].path}
    table.write(ROWS[2:])
    table.close()

    records = read_table(path)
    assert [r["path"] for r in records] == [row.path for row in ROWS]
    first, _, bad = records
    assert str(first["label"]) == "7" and int(first["index"]) == 7 and float(first["score"]) == 0.9
    assert str(first["label_2"]) == "1" and float(first["score_2"]) == 0.05
    assert (first["model"], int(first["version"]), first["error"]) == ("mnist_cnn", 3, "")
    assert bad["error"] == "cannot decode image: line two"  # one line, whatever the exception said
    assert bad["label"] in ("", None) and bad["index"] in ("", None) and bad["score"] in ("", None)
    if name.endswith(".parquet"):
        assert not (tmp_path / ".out.parquet.partial.jsonl").exists()
        assert pq.read_schema(path).field("index").type == "int64"
        # Resuming a finished Parquet output carries its rows over.
        table = open_sink(path, top_k=2, model="mnist_cnn", version=3)
        assert len(table.done) == 3
        table.close()
        assert len(read_table(path)) == 3


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_torn_last_line_is_repaired(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(f"{i}.png", (Prediction("0", 0, 1.0),)) for i in range(5)])
    table.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 7])  # SIGKILL in the middle of the last row

    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == {f"{i}.png" for i in range(4)}
    table.write([ResultRow("4.png", (Prediction("0", 0, 1.0),))])
    table.close()
    assert path.read_bytes() == whole
    assert [r["path"] for r in read_table(path)] == [f"{i}.png" for i in range(5)]


def test_restart_overwrites_and_other_top_k_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write(ROWS[:1])
    table.close()
    with pytest.raises(OutputError, match="--restart"):
        open_sink(path, top_k=2, model="m", version=1)
    with pytest.raises(OutputError, match="model 'm', not 'other'"):
        open_sink(path, top_k=1, model="other", version=1)
    table = open_sink(path, top_k=2, model="m", version=1, resume=False)
    assert table.done == set()
    table.close()
    assert list(csv.reader(path.open())) == [columns(2)]


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"\.csv"):
        open_sink(tmp_path / "out.xlsx", top_k=1, model="m", version=1)


def test_jsonl_rows_are_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    table = open_sink(path, top_k=1, model="m", version=2)
    table.write(ROWS[:1])
    table.close()
    assert json.loads(path.read_text().splitlines()[0]) == {
        "path": "a/1.png",
        "label": "7",
        "index": 7,
        "score": 0.9,
        "model": "m",
        "version": 2,
        "error": "",
    }


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_a_row_with_bytes_that_are_not_utf8_is_dropped_and_redone(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(f"{i}.png", (Prediction("0", 0, 1.0),)) for i in range(5)])
    table.close()
    damaged = bytearray(path.read_bytes())
    for row in (b"0.png", b"3.png"):  # one byte of the first row and of row 3 damaged on disk
        damaged[damaged.index(row)] = 0xFF
    path.write_bytes(bytes(damaged))

    table = open_sink(path, top_k=1, model="m", version=1)

    assert table.done == {"1.png", "2.png", "4.png"}
    unit = "rows" if name.endswith(".csv") else "lines"
    assert [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()] == [
        f"repaired {path}: dropped 2 malformed {unit} (2 of them not valid UTF-8); "
        "their files are classified again"
    ]
    table.write([ResultRow(f"{i}.png", (Prediction("0", 0, 1.0),)) for i in (0, 3)])
    table.close()
    assert sorted(r["path"] for r in read_table(path)) == [f"{i}.png" for i in range(5)]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_a_failed_write_leaves_no_part_of_its_batch(tmp_path: Path, name: str) -> None:
    """A real write error (the file over RLIMIT_FSIZE, as a full disk would fail it) keeps the rows written
    before and none of the failing batch; the error names the file."""
    import resource
    import signal

    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(f"{i}.png", (Prediction("0", 0, 1.0),)) for i in range(3)])
    before = path.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 40, limits[1]))
    try:
        with pytest.raises(OutputError) as refused:
            table.write([ResultRow(f"big-{i}.png", (Prediction("0", 0, 1.0),)) for i in range(50)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(refused.value) == (
        f"cannot write {path}: {os.strerror(errno.EFBIG)}; the rows written so far are kept: fix this "
        "(free some space) and rerun the same command to resume"
    )
    table.close()
    assert path.read_bytes() == before
    assert open_sink(path, top_k=1, model="m", version=1).done == {"0.png", "1.png", "2.png"}


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_malformed_rows_in_the_middle_of_a_resumed_output_are_dropped_and_redone(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A row damaged in the middle of the table (not only a torn last line): resuming drops it, says so,
    and leaves its file to be classified again, so every file still ends up in the table exactly once."""
    path = tmp_path / name
    rows = [ResultRow(f"{i}.png", (Prediction(str(i), i, 0.5),)) for i in range(5)]
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write(rows)
    table.close(finished=False)
    lines_path = path if not name.endswith(".parquet") else tmp_path / ".out.parquet.partial.jsonl"
    lines = lines_path.read_text().splitlines(keepends=True)
    if name.endswith(".csv"):  # lines[0] is the header
        lines[2] = "1.png,1,1\n"  # too few cells
        lines[4] = lines[4].replace(",m,1,", ",m,1,,extra,")  # too many
        damaged = ["1.png", "3.png"]
    else:
        lines[1] = '{"path": "1.png", "label": \n'  # not JSON
        lines[3] = '["3.png"]\n'  # JSON, but not a row
        damaged = ["1.png", "3.png"]
    lines_path.write_text("".join(lines))

    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == {"0.png", "2.png", "4.png"}
    unit = "rows" if name.endswith(".csv") else "lines"
    assert [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()] == [
        f"repaired {lines_path}: dropped 2 malformed {unit} (0 of them not valid UTF-8); "
        "their files are classified again"
    ]
    table.write([row for row in rows if row.path in damaged])
    table.close()
    assert [r["path"] for r in read_table(path)] == ["0.png", "2.png", "4.png", "1.png", "3.png"]
    assert [str(r["label"]) for r in read_table(path)] == ["0", "2", "4", "1", "3"]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_odd_file_names_round_trip_and_a_clean_output_resumes_untouched(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Names with a line break (LF or CR LF), quotes or commas are legal on Linux: each comes back as
    written, so resuming skips exactly the files already done; a clean output is not rewritten."""
    path = tmp_path / name
    odd = ["c\nd.png", "g\r\nh.png", 'e, "f".png', "caf\u00e9.png", "plain.png"]
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(n, (Prediction("1", 1, 0.5),)) for n in odd])
    table.close()
    before = path.read_bytes()
    resumed = open_sink(path, top_k=1, model="m", version=1)
    assert resumed.done == set(odd)
    resumed.close()
    assert path.read_bytes() == before
    assert [r["path"] for r in read_table(path)] == odd
    assert "repaired" not in caplog.text


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_a_file_name_that_is_not_utf8_is_written_escaped_and_resumed(tmp_path: Path, name: str) -> None:
    """A Linux file name may hold any bytes (Python hands the undecodable ones over as lone surrogates):
    the output stays valid UTF-8 with each such byte written as \\xNN, and resume knows the row."""
    raw = os.fsdecode(b"caf\xe9/\xff\xfe.png")
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(raw, (Prediction("0", 0, 1.0),)), ResultRow("plain.png", error="bad\udcff")])
    table.close(finished=False)

    journal = tmp_path / f".{name}.partial.jsonl" if name.endswith(".parquet") else path
    journal.read_bytes().decode("utf-8")  # strict: no byte that is not UTF-8
    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == {path_text(raw), "plain.png"}
    assert path_text(raw) == "caf\\xe9/\\xff\\xfe.png"
    table.close()

    records = read_table(path)
    assert [r["path"] for r in records] == ["caf\\xe9/\\xff\\xfe.png", "plain.png"]
    assert records[1]["error"] == "bad\\xff"


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_a_file_name_with_a_carriage_return_or_newline_is_one_row(tmp_path: Path, name: str) -> None:
    names = ["a\rb.png", "c\nd.png", "e\r\nf.png", 'g,"h".png', "last.png"]
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow(n, (Prediction("0", 0, 1.0),)) for n in names])
    table.close(finished=False)

    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == set(names)
    table.close()
    assert [r["path"] for r in read_table(path)] == names


def test_a_csv_row_torn_inside_a_quoted_newline_is_dropped_and_redone(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow("one.png", (Prediction("0", 0, 1.0),))])
    table.write([ResultRow("two\nlines.png", (Prediction("0", 0, 1.0),))])
    table.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b"two\n") + 4])  # a crash right after the name's own newline

    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == {"one.png"}
    table.write([ResultRow("two\nlines.png", (Prediction("0", 0, 1.0),))])
    table.close()
    assert path.read_bytes() == whole


# Rows as engines hand them over: class 0 (an index that is falsy), a file with fewer classes than
# asked, an error in the middle (with whatever its index cells hold), and a name with a non-UTF-8 byte.
MIXED = RowBatch(
    paths=["zero.png", "short.png", "broken.png", "b\udcffd.png"],
    labels=["zero", "one", "two"],
    indices=np.array([[0, 2], [1, -1], [2, 1], [2, 0]], dtype=np.int64),
    scores=np.array([[0.75, 0.25], [1.0, 0.0], [0.5, 0.5], [0.625, 0.375]]),
    errors={2: "cannot decode image:\n  truncated"},
)


def test_rows_become_columns_and_back() -> None:
    rows = [
        ResultRow("a.png", (Prediction("two", 2, 0.75), Prediction("zero", 0, 0.25))),
        ResultRow("bad.png", error="no image"),
        ResultRow("b.png", (Prediction("zero", 0, 1.0),)),
        ResultRow("c.png"),
    ]
    batch = RowBatch.from_rows(rows)
    assert batch.indices.dtype == np.int64 and batch.scores.dtype == np.float64
    assert batch.indices.tolist() == [[2, 0], [-1, -1], [0, -1], [-1, -1]]
    assert batch.scores.tolist() == [[0.75, 0.25], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert batch.labels == ["zero", "1", "two"]  # class 1 was never predicted: its index stands for it
    assert dict(batch.errors) == {1: "no image"} and batch.failed == 1
    assert batch.rows() == rows
    empty = RowBatch.from_rows([])
    assert empty.indices.shape == (0, 0) and empty.labels == [] and len(empty) == 0
    only_errors = RowBatch.from_rows([ResultRow("x.png", error="bad")])
    assert only_errors.labels == [] and only_errors.indices.shape == (1, 0)


def test_names_are_written_as_valid_utf8() -> None:
    assert path_text("a/b.png") == "a/b.png"
    assert path_text("été.png") == "été.png"
    assert path_text("b\udcffd.png") == "b\\xffd.png"  # a byte that is not UTF-8, as the file system hands it
    assert path_text("b\ud800d.png") == "b\\ud800d.png"  # a surrogate no file system hands over


@pytest.mark.parametrize("top_k", [1, 3])
def test_csv_lines_are_exact_for_every_kind_of_row(tmp_path: Path, top_k: int) -> None:
    path = tmp_path / "out.csv"
    table = open_sink(path, top_k=top_k, model="m", version=2)
    table.write(MIXED)
    table.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(columns(top_k))
    error = ",,," * top_k + "m,2,cannot decode image: truncated"
    if top_k == 1:
        expected = [
            "zero.png,zero,0,0.75,m,2,",
            "short.png,one,1,1.0,m,2,",
            f"broken.png,{error}",
            "b\\xffd.png,two,2,0.625,m,2,",
        ]
    else:  # two ranks held, the third missing; a rank without a class is left empty
        expected = [
            "zero.png,zero,0,0.75,two,2,0.25,,,,m,2,",
            "short.png,one,1,1.0,,,,,,,m,2,",
            f"broken.png,{error}",
            "b\\xffd.png,two,2,0.625,zero,0,0.375,,,,m,2,",
        ]
    assert lines[1:] == expected


def test_records_hold_none_where_a_rank_has_no_class(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    table = open_sink(path, top_k=3, model="m", version=2)
    table.write(MIXED)
    table.close()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in records] == ["zero.png", "short.png", "broken.png", "b\\xffd.png"]
    first, short, broken, last = records
    assert (first["label"], first["index"], first["score"]) == ("zero", 0, 0.75)
    assert (first["label_2"], first["index_2"], first["score_2"]) == ("two", 2, 0.25)
    assert (short["label_2"], short["index_2"], short["score_2"]) == (None, None, None)
    assert all(r["label_3"] is None and r["index_3"] is None and r["score_3"] is None for r in records)
    assert (broken["label"], broken["index"], broken["score"]) == (None, None, None)  # its cells ignored
    assert broken["error"] == "cannot decode image: truncated" and first["error"] == ""
    assert (last["index_2"], last["model"], last["version"]) == (0, "m", 2)


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_a_batch_of_errors_alone_needs_no_prediction_columns(tmp_path: Path, name: str) -> None:
    """An engine whose every file failed hands over no prediction columns at all."""
    batch = RowBatch(["x.png", "y.png"], [], np.empty(0, np.int64), np.empty(0), {0: "bad", 1: "worse"})
    path = tmp_path / name
    table = open_sink(path, top_k=2, model="m", version=1)
    table.write(batch)
    table.close()
    records = read_table(path)
    assert [(r["path"], r["error"]) for r in records] == [("x.png", "bad"), ("y.png", "worse")]
    assert all(r["label"] in ("", None) and r["index_2"] in ("", None) for r in records)


@pytest.mark.parametrize("top_k", [1, 3])
def test_csv_lines_of_a_top_1_batch(tmp_path: Path, top_k: int) -> None:
    """One class per file (a top-1 job); asked for more, the other ranks stay empty."""
    batch = RowBatch(
        paths=["zero.png", "nothing.png", "bad.png"],
        labels=["zero", "one"],
        indices=np.array([[0], [-1], [1]], dtype=np.int64),
        scores=np.array([[0.5], [0.0], [0.25]]),
        errors={2: "bad"},
    )
    path = tmp_path / "out.csv"
    table = open_sink(path, top_k=top_k, model="m", version=2)
    table.write(batch)
    table.close()
    rest = ",,," * (top_k - 1)
    assert path.read_text(encoding="utf-8").splitlines()[1:] == [
        f"zero.png,zero,0,0.5,{rest}m,2,",
        f"nothing.png,,,,{rest}m,2,",
        f"bad.png,,,,{rest}m,2,bad",
    ]
