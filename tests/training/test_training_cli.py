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
    # Every recipe option through the command line: each reaches the run and lands in run.json.
    options = ["--epochs", "2", "--batch-size", "128", "--seed", "3", "--lr", "0.005"]
    options += ["--schedule", "constant", "--patience", "4", "--augment", "--validation-split", "0.3"]
    assert main(["train", "mnist_dense30", *options, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote run directory {out}" in printed and "test accuracy" in printed
    data = json.loads((out / "run.json").read_text())
    assert data["model"] == "mnist_dense30" and data["params"] == 23_860
    recorded = {key: data[key] for key in ("epochs", "batch_size", "seed", "learning_rate", "schedule")}
    assert recorded == {
        "epochs": 2,
        "batch_size": 128,
        "seed": 3,
        "learning_rate": 0.005,
        "schedule": "constant",
    }
    assert data["patience"] == 4 and data["augment"] is True and data["augmentation"] == "affine"
    assert data["validation_split"] == data["dataset"]["validation_split"] == 0.3
    assert data["split_sizes"]["validation"] == 1200 and data["split_sizes"]["train"] == 2800
    assert data["history"]["learning_rate"] == pytest.approx([0.005, 0.005])  # constant: float32


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `cnnserve train ...`, expect exit 2 and exactly one `error:` line; return that line."""
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "0"], "--lr must be a positive number, not 0"),
        (["--lr", "-0.001"], "--lr must be a positive number, not -0.001"),
        (["--validation-split", "0"], "--validation-split must be in (0, 0.5], not 0"),
        (["--validation-split", "0.6"], "--validation-split must be in (0, 0.5], not 0.6"),
        (["--patience", "-2"], "--patience must be 0 (off) or a number of epochs, not -2"),
    ],
)
def test_train_refuses_bad_numbers_and_writes_nothing(
    option: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert message in _refused(["mnist_cnn", *option, "--out", str(out)], capsys)
    assert not out.exists()


def _untrained(model: str, where: Path) -> Path:
    from cnnserve.training.rundir import DatasetInfo
    from cnnserve.training.train import write_untrained_run

    dataset = DatasetInfo(kind="mnist-bundled", path=None, provenance="bundled digits", split_seed=0)
    return write_untrained_run(model, where, dataset)


def test_init_from_another_architecture_or_shape_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned"
    mlp = _untrained("mnist_mlp", tmp_path / "mlp")
    line = _refused(["mnist_cnn", "--init-from", str(mlp), "--out", str(out)], capsys)
    assert f"--init-from {mlp} is a mnist_mlp run" in line and "mnist_cnn" in line
    cnn = _untrained("mnist_cnn", tmp_path / "cnn")
    data = json.loads((cnn / "run.json").read_text())
    data["input_shape"] = [32, 32, 3]
    (cnn / "run.json").write_text(json.dumps(data))
    line = _refused(["mnist_cnn", "--init-from", str(cnn), "--out", str(out)], capsys)
    assert "(32, 32, 3)" in line and "(28, 28, 1)" in line
    line = _refused(["mnist_cnn", "--init-from", str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert "--init-from" in line and "nowhere" in line
    assert not out.exists()


def test_resume_refuses_missing_finished_and_changed_runs(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert "there is no run directory" in _refused(["mnist_cnn", "--out", str(missing), "--resume"], capsys)
    assert not missing.exists()
    assert "--resume needs --out" in _refused(["mnist_cnn", "--resume"], capsys)
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    line = _refused(["mnist_cnn", "--out", str(trained_run), "--resume"], capsys)
    assert "already completed" in line and str(trained_run) in line
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no interrupted training run" in _refused(
        ["mnist_cnn", "--out", str(empty), "--resume"], capsys
    )
    assert list(empty.iterdir()) == []


def test_resume_refuses_options_that_differ_from_the_interrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnserve.training.checkpoint import StartOptions, TrainingState, save_epoch
    from cnnserve.training.recipe import resolve_recipe
    from cnnserve.training.zoo import build_model, get_entry

    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    recipe = resolve_recipe(get_entry("mnist_dense30"), epochs=4)
    state = TrainingState(StartOptions("mnist_dense30", None, 0, recipe, None), epochs_done=1)
    save_epoch(run_dir, build_model("mnist_dense30"), state, improved=True)
    before = sorted(p.name for p in run_dir.rglob("*"))
    line = _refused(["mnist_dense30", "--out", str(run_dir), "--resume", "--lr", "0.5"], capsys)
    assert f"--lr 0.5 differs from its {recipe.learning_rate:g}" in line
    line = _refused(["mnist_cnn", "--out", str(run_dir), "--resume"], capsys)
    assert "is a mnist_dense30 run, not mnist_cnn" in line
    assert "cannot be combined" in _refused(
        ["mnist_dense30", "--out", str(run_dir), "--resume", "--force"], capsys
    )
    assert sorted(p.name for p in run_dir.rglob("*")) == before
