"""`cnnserve zoo` and `cnnserve train` from the command line; `--help` never imports TensorFlow."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cnnserve.cli import main

NO_TF_SCRIPT = """
import sys, time
start = time.process_time()  # CPU time: what the imports cost, however loaded the machine is
from cnnserve.cli import build_parser
parser = build_parser()
parser.format_help()
for command in ("zoo", "train"):
    try:
        parser.parse_args([command, "--help"])
    except SystemExit:
        pass
elapsed = time.process_time() - start
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
print(f"{elapsed:.3f} {','.join(heavy) or '-'}")
"""


@pytest.mark.timeout(60)
def test_help_does_not_import_tensorflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    elapsed, heavy = result.stdout.split()[-2:]
    assert heavy == "-", f"--help imported {heavy}"
    assert float(elapsed) < 2.0


@pytest.mark.timeout(60)
def test_help_answers_quickly() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "cnnserve.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0
    assert "zoo" in result.stdout and "train" in result.stdout
    # The CPU the process used (wall time would also count waiting for a core on a loaded machine).
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 5.0


def test_zoo_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert len(rows) == 10
    assert by_name["mnist_cnn"]["params"] == 220_234
    assert by_name["mnist_cnn"]["input_shape"] == [28, 28, 1]
    assert (
        by_name["cats_dogs_cnn"]["num_classes"] == 2 and by_name["cats_dogs_cnn"]["output_kind"] == "sigmoid"
    )
    assert by_name["mnist_tf_convnet"]["output_kind"] == "logits"
    assert by_name["cifar10_cnn"]["labels"][0] == "airplane"


def test_zoo_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "mnist_cnn" in out and "220,234" in out and "5,046,369" in out and "150×150×3" in out


def test_train_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "alexnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "alexnet" in err and "mnist_cnn" in err and "cats_dogs_small" in err


def test_train_missing_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(["train", "mnist_cnn", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "accepted layouts" in err
    assert not (tmp_path / "runs").exists()


def test_train_refuses_an_existing_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.json").write_text("{}")
    assert main(["train", "mnist_cnn", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "run.json").read_text() == "{}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_train_command_writes_and_reports_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(
        ["train", "mnist_dense30", "--epochs", "1", "--batch-size", "128", "--seed", "3", "--out", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote run directory {out}" in printed and "test accuracy" in printed
    data = json.loads((out / "run.json").read_text())
    assert data["model"] == "mnist_dense30" and data["seed"] == 3 and data["batch_size"] == 128
    assert data["params"] == 23_860
