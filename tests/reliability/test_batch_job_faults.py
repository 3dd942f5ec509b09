"""The batch job under faults: SIGKILLs at random moments, a damaged output, a full disk.

Whatever happens, a rerun resumes and every image ends up in the output exactly once.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import harness
import numpy as np
import pytest
from PIL import Image

FORMATS = ("csv", "jsonl", "parquet")
KILLS_PER_FORMAT = 2
# Enough digits that a job is still working when a kill comes: a worker task holds ~50 ms of work (a few
# hundred digits), so a folder of a few hundred is done in one or two writes and a kill would find it ended.
KILL_FOLDER_FILES = 5000


def make_folder(folder: Path, pixels: np.ndarray, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"digit_{index:04d}.png"
        Image.fromarray(pixels[index % len(pixels)], "L").save(folder / name)
        names.append(name)
    return names


def job_command(folder: Path, output: Path, repo: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnserve",
        "classify-folder",
        str(folder),
        "--model",
        harness.MODEL,
        "--repo",
        str(repo),
        "--output",
        str(output),
        "--workers",
        "1",
        "--progress",
        "none",
        *extra,
    ]


def run_job(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_sigkills_lose_and_duplicate_no_row(
    tmp_path: Path, model_repository: Path, digit_pixels: np.ndarray, fmt: str, seed: int
) -> None:
    files = make_folder(tmp_path / "images", digit_pixels, KILL_FOLDER_FILES)
    output = tmp_path / f"out.{fmt}"
    command = job_command(tmp_path / "images", output, model_repository, "--batch-size", "2")
    rng = random.Random(f"{seed}-{fmt}")

    journal = tmp_path / f".{output.name}.partial.jsonl" if fmt == "parquet" else output

    result = harness.kill_job_until_done(
        command, output, files, KILLS_PER_FORMAT, rng, tmp_path / "job.log", watch=journal, delay=(0.0, 0.05)
    )

    assert result.kills == KILLS_PER_FORMAT, result
    assert (result.lost, result.duplicated) == (0, 0), (f"seed {seed}", result)
    assert result.exit_codes[-1] == 0, (result, (tmp_path / "job.log").read_text()[-2000:])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_non_utf8_byte_in_the_output_is_repaired_on_resume(
    tmp_path: Path, model_repository: Path, digit_pixels: np.ndarray, fmt: str
) -> None:
    files = make_folder(tmp_path / "images", digit_pixels, 12)
    lines = tmp_path / "rows.jsonl" if fmt == "parquet" else tmp_path / f"out.{fmt}"
    first = run_job(job_command(tmp_path / "images", lines, model_repository))
    assert first.returncode == 0, first.stderr
    damaged = bytearray(lines.read_bytes())
    at = damaged.index(b"digit_0005")
    damaged[at + 3] = 0xFF
    output = tmp_path / f"out.{fmt}"
    if fmt == "parquet":  # a crashed Parquet job resumes from its JSON Lines journal
        (tmp_path / f".{output.name}.partial.jsonl").write_bytes(bytes(damaged))
    else:
        output.write_bytes(bytes(damaged))

    again = run_job(job_command(tmp_path / "images", output, model_repository))

    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and "not valid UTF-8" in again.stderr, again.stderr
    rows = Counter(harness.read_output_paths(output))
    assert rows == Counter(files), rows


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A real 48 KiB filesystem (tmpfs), unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_full_disk_stops_the_job_clearly_and_the_rerun_completes(
    small_disk: Path, tmp_path: Path, model_repository: Path, digit_pixels: np.ndarray, fmt: str
) -> None:
    files = make_folder(tmp_path / "images", digit_pixels, 300)
    output = small_disk / f"out.{fmt}"
    command = job_command(
        tmp_path / "images", output, model_repository, "--top-k", "10", "--batch-size", "16"
    )

    full = run_job(command)

    assert full.returncode != 0
    assert "No space left on device" in full.stderr and str(output) in full.stderr, full.stderr[-2000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    again = run_job(command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert Counter(harness.read_output_paths(output)) == Counter(files)
