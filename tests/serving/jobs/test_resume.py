"""Resuming an output, piece by piece: torn-tail repair byte for byte, the model and version checks, the
rewrite that drops malformed rows, and what a restart removes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnserve.serving.errors import OutputError
from cnnserve.serving.jobs.sinks import Prediction, ResultRow, columns, open_sink, output_format, read_table
from cnnserve.serving.jobs.sinks import base as sink_base
from cnnserve.serving.jobs.sinks.base import rewrite, row_record, truncate_torn_tail
from cnnserve.serving.jobs.sinks.csv import CsvSink
from cnnserve.serving.jobs.sinks.jsonl import JsonlSink


@pytest.mark.parametrize(
    ("content", "kept", "removed"),
    [
        (b"", b"", 0),
        (b"a,b\n1,2\n", b"a,b\n1,2\n", 0),  # ends with a newline: nothing torn
        (b"a,b\n1,2\n3,", b"a,b\n1,2\n", 2),
        (b"no newline at all", b"", 17),
        (b"\n" + b"x" * 70_000, b"\n", 70_000),  # the last newline more than one 64 KiB block back
        (b"y" * 65_535 + b"\n" + b"z" * 10, b"y" * 65_535 + b"\n", 10),
        (b"w" * 200_000, b"", 200_000),  # several blocks, no newline anywhere
        (b"\n" + b"v" * 65_536, b"\n", 65_536),  # the walk back ends on the file's first byte
    ],
    ids=[
        "empty",
        "whole",
        "torn",
        "one torn line",
        "long torn line",
        "block boundary",
        "blocks, no newline",
        "newline first",
    ],
)
def test_a_torn_tail_is_cut_back_to_the_last_newline(
    tmp_path: Path, content: bytes, kept: bytes, removed: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(content)
    assert truncate_torn_tail(path) == removed
    assert path.read_bytes() == kept
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ([f"repaired {path}: removed a torn last line of {removed} bytes"] if removed else [])


def test_rewrite_replaces_the_file_whole_and_keeps_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    rewrite(path, "a\r\nb\n")
    assert path.read_bytes() == b"a\r\nb\n"  # written as given: no newline translation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary file left


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_an_output_of_another_model_is_refused_and_another_version_only_warned_about(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="digits", version=2)
    table.write([ResultRow("a.png", (Prediction("7", 7, 0.5),))])
    table.close(finished=False)
    where = path if not name.endswith(".parquet") else tmp_path / ".out.parquet.partial.jsonl"
    with pytest.raises(OutputError) as refused:
        open_sink(path, top_k=1, model="cats", version=2)
    assert str(refused.value) == (
        f"{where} holds results of model 'digits', not 'cats': "
        "use --restart to overwrite it, or another --output"
    )
    caplog.clear()
    open_sink(path, top_k=1, model="digits", version=2).close(finished=False)
    assert "holds results" not in caplog.text
    resumed = open_sink(path, top_k=1, model="digits", version=3)
    assert resumed.done == {"a.png"}
    resumed.close(finished=False)
    assert [record.getMessage() for record in caplog.records] == [
        f"{where} holds results of digits version 2; the rest is classified with version 3"
    ]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_rows_of_an_error_only_output_are_resumed_without_a_model_check(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows written before any model answered carry no version; resuming them warns about nothing."""
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow("bad.png", error="cannot decode image")])
    table.close()
    if name.endswith(".jsonl"):  # a row from an older job that recorded no model or version
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "model": None, "version": None}) + "\n")
    else:  # the same, as a CSV row: empty model and version cells
        header, row = path.read_text().splitlines()
        path.write_text(f"{header}\n{row.replace(',m,1,', ',,,')}\n")
    resumed = open_sink(path, top_k=1, model="m", version=5)
    assert resumed.done == {"bad.png"}
    resumed.close()
    assert "holds results" not in caplog.text


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_a_different_top_k_is_refused_with_both_column_lists(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    table.write([ResultRow("a.png", (Prediction("1", 1, 0.5),))])  # JSON Lines: the columns of its rows
    table.close()
    with pytest.raises(OutputError) as refused:
        open_sink(path, top_k=2, model="m", version=1)
    assert str(refused.value) == (
        f"{path} has columns {', '.join(columns(1))} but this job writes {', '.join(columns(2))} "
        "(a different --top-k?): use --restart to overwrite it, or another --output"
    )


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_an_output_in_a_new_folder_is_created_and_a_restart_removes_what_was_there(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "new" / "folder" / name
    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == set() and table.rows_written == 0
    table.write([ResultRow(f"{i}.png", (Prediction("0", 0, 1.0),)) for i in range(3)])
    table.write([])  # an empty batch writes nothing
    table.write([ResultRow("3.png", (Prediction("0", 0, 1.0),))])
    assert table.rows_written == 4
    table.close(finished=False)
    restarted = open_sink(path, top_k=1, model="m", version=1, resume=False)
    assert restarted.done == set()
    restarted.close()
    assert read_table(path) == []
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no journal or temporary file left


def test_a_csv_header_alone_resumes_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    open_sink(path, top_k=1, model="m", version=1).close()
    assert path.read_text() == ",".join(columns(1)) + "\n"
    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == set()
    table.close()
    assert path.read_text() == ",".join(columns(1)) + "\n"  # the header written once


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    record = row_record(ResultRow("a.png", (Prediction("1", 1, 0.5),)), 1, "m", 1)
    path.write_text(json.dumps(record) + "\n\n")
    assert read_table(path) == [record]
    assert output_format(Path("x.NDJSON")) == "jsonl" and output_format(Path("x.pq")) == "parquet"


def test_the_error_column_is_one_line() -> None:
    record = row_record(ResultRow("b.png", error="cannot decode:\n  line two\tand three"), 2, "m", 4)
    assert record == {
        "path": "b.png",
        "label": None,
        "index": None,
        "score": None,
        "label_2": None,
        "index_2": None,
        "score_2": None,
        "model": "m",
        "version": 4,
        "error": "cannot decode: line two and three",
    }


def test_every_kind_of_malformed_jsonl_line_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.jsonl"
    good = row_record(ResultRow("a.png", (Prediction("1", 1, 0.5),)), 1, "m", 1)
    lines = ["{not json", json.dumps(good), "[1, 2]", '{"no": "path"}', "also not json", "7"]
    path.write_text("\n".join(lines) + "\n")
    table = open_sink(path, top_k=1, model="m", version=1)
    table.close()
    assert table.done == {"a.png"}
    assert path.read_text() == json.dumps(good) + "\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"repaired {path}: dropped 5 malformed lines (0 of them not valid UTF-8); "
        "their files are classified again"
    ]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_closing_an_output_twice_is_harmless(tmp_path: Path, name: str) -> None:
    table = open_sink(tmp_path / name, top_k=1, model="m", version=1)
    table.write([ResultRow("a.png", (Prediction("1", 1, 0.5),))])
    table.close()
    table.close()
    os.fstat(1)  # the second close closed nothing else: standard output is still open
    assert [r["path"] for r in read_table(tmp_path / name)] == ["a.png"]


@pytest.mark.parametrize(("name", "header_synced"), [("out.csv", True), ("out.jsonl", False)])
def test_rows_are_synced_at_most_once_a_second_and_at_close(
    tmp_path: Path, name: str, header_synced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch is in the file when `write` returns; fsync (what a power loss needs) runs for the CSV
    header at once, then at most once a second (FSYNC_INTERVAL_S, to the boundary included) and at close.
    The sinks' clock is a virtual one here, and every fsync is recorded with the time it ran."""
    now = [100.0]
    monkeypatch.setattr(sink_base, "time", SimpleNamespace(monotonic=lambda: now[0]))
    synced: list[float] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(now[0])
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / name
    table = open_sink(path, top_k=1, model="m", version=1)
    assert synced == ([100.0] if header_synced else [])
    for at, file in [(100.5, "a.png"), (101.0, "b.png"), (101.9, "c.png")]:
        now[0] = at
        table.write([ResultRow(file, (Prediction("1", 1, 0.5),))])
        assert [r["path"] for r in read_table(path)][-1] == file  # in the file, synced or not
    now[0] = 101.95
    table.close()
    assert synced == [*([100.0] if header_synced else []), 101.0, 101.95]


@pytest.mark.parametrize(("name", "torn"), [("out.csv", b"p"), ("out.jsonl", b"{")])
def test_an_output_holding_one_torn_byte_resumes_as_a_new_one(tmp_path: Path, name: str, torn: bytes) -> None:
    """A crash in the very first write can leave a single byte: it is cut, and the output starts afresh."""
    path = tmp_path / name
    path.write_bytes(torn)
    table = open_sink(path, top_k=1, model="m", version=1)
    assert table.done == set()
    table.write([ResultRow("a.png", (Prediction("1", 1, 0.5),))])
    table.close()
    assert [r["path"] for r in read_table(path)] == ["a.png"]
    if name.endswith(".csv"):
        assert path.read_bytes().startswith(",".join(columns(1)).encode() + b"\n")


def test_csv_lines_end_in_a_line_feed_alone(tmp_path: Path) -> None:
    """One byte per line end (the torn-tail repair and line counts rely on it), never CR LF."""
    path = tmp_path / "out.csv"
    table = open_sink(path, top_k=1, model="m", version=3)
    table.write([ResultRow("a.png", (Prediction("7", 7, 0.5),)), ResultRow("b.png", error="broken")])
    table.close()
    assert path.read_bytes() == (
        b"path,label,index,score,model,version,error\na.png,7,7,0.5,m,3,\nb.png,,,,m,3,broken\n"
    )


@pytest.mark.parametrize("sink", [CsvSink, JsonlSink])
def test_a_sink_opened_without_saying_resumes(tmp_path: Path, sink: type[sink_base.Sink]) -> None:
    path = tmp_path / f"out.{sink.format}"
    table = sink(path, 1, "m", 1)
    table.write([ResultRow("a.png", (Prediction("1", 1, 0.5),))])
    table.close()
    resumed = sink(path, 1, "m", 1)
    assert resumed.done == {"a.png"}
    resumed.close()
    assert [r["path"] for r in read_table(path)] == ["a.png"]


def test_an_unknown_extension_is_refused_naming_every_supported_one(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as refused:
        output_format(tmp_path / "out.xlsx")
    assert str(refused.value) == (
        f"cannot tell the output format of {tmp_path / 'out.xlsx'}: "
        "use one of .csv, .jsonl, .ndjson, .parquet, .pq as extension"
    )


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_an_output_is_created_readable_by_all_and_executable_by_none(tmp_path: Path, name: str) -> None:
    previous = os.umask(0o022)
    try:
        open_sink(tmp_path / name, top_k=1, model="m", version=1).close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
