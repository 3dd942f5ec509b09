"""Bad input gets a clear error and nothing is lost: run directories, conversion, parity, the repository."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from export_runs import fast_options, make_run

from cnnserve.cli import main
from cnnserve.export import publish
from cnnserve.export.errors import (
    ConversionError,
    ParityError,
    RepositoryWriteError,
    RunInputError,
    VersionExistsError,
)
from cnnserve.export.exporter import export_run
from cnnserve.export.verify import Thresholds
from cnnserve.protos import model_config_pb2
from cnnserve.serving.model import preprocessing

# mnist_dense30 is the zoo's smallest model: these tests are about the failure paths, not the model.
SMALL = "mnist_dense30"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("small") / "run", SMALL)


def _fresh_copy(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("missing", ["model.keras", "run.json"])
def test_a_run_without_its_files_is_refused(small_run: Path, tmp_path: Path, missing: str) -> None:
    run_dir = _fresh_copy(small_run, tmp_path / "run")
    (run_dir / missing).unlink()
    with pytest.raises(RunInputError, match=missing):
        export_run(run_dir, tmp_path / "repo", fast_options())
    assert not (tmp_path / "repo").exists()


def test_a_missing_run_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunInputError, match="does not exist"):
        export_run(tmp_path / "nowhere", tmp_path / "repo")


def test_a_corrupt_model_file_is_named(small_run: Path, tmp_path: Path) -> None:
    run_dir = _fresh_copy(small_run, tmp_path / "run")
    data = (run_dir / "model.keras").read_bytes()
    (run_dir / "model.keras").write_bytes(data[: len(data) // 3])  # a truncated download
    with pytest.raises(RunInputError, match=r"model\.keras.*corrupt"):
        export_run(run_dir, tmp_path / "repo", fast_options())
    assert not (tmp_path / "repo").exists()


def test_cli_reports_a_bad_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--repo", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model.keras" in err[-1] and "run.json" in err[-1]


def test_a_layer_tf2onnx_cannot_convert_is_named_with_its_op(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="cnnserve_export_tests")
    class ReluGradLayer(keras.layers.Layer):
        """A layer whose TensorFlow op (ReluGrad) has no tf2onnx converter."""

        def call(self, inputs):
            return tf.raw_ops.ReluGrad(gradients=inputs, features=inputs)

    model = keras.Sequential(
        [
            keras.Input((28, 28), name="input"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, activation="relu", name="dense1"),
            ReluGradLayer(name="odd_layer"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ]
    )
    run_dir = make_run(tmp_path / "run", SMALL, model=model)
    with pytest.raises(ConversionError, match=r"layer 'odd_layer'.*'ReluGrad'"):
        export_run(run_dir, tmp_path / "repo", fast_options())
    assert not (tmp_path / "repo").exists()


def test_a_parity_failure_keeps_its_report_and_leaves_the_repository_untouched(
    small_run: Path, tmp_path: Path
) -> None:
    run_dir = _fresh_copy(small_run, tmp_path / "run")
    repo = tmp_path / "repo"
    export_run(run_dir, repo, fast_options())  # version 1, to show an existing model stays as it was
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    # float32 conversion is accurate to ~1e-7: a bound of 1e-12 is one it cannot meet.
    tight = Thresholds(max_abs_error=1e-12, activation_max_rel_error=1e-12)
    with pytest.raises(ParityError, match="report kept at") as raised:
        export_run(run_dir, repo, fast_options(thresholds=tight))
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    report_path = Path(raised.value.report_path)
    assert report_path.parent == run_dir and report_path.name.startswith("parity-failure-")
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    assert any("output max abs error" in failure and "sample" in failure for failure in report["failures"])
    assert any("layer 'dense1'" in failure for failure in report["failures"])
    assert report["cases"]["held_out"]["output"]["worst_sample"] >= 0


def test_serving_preprocessing_scaled_by_1_over_256_fails_the_export(
    small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skew of 1/255 vs 1/256 moves no label yet; the end-to-end check gates on the tensors and sees it."""
    run_dir = _fresh_copy(small_run, tmp_path / "run")
    real = preprocessing._tensor  # where every decoded image (through Pillow or not) is scaled

    def skewed(array, spec):
        return real(array, dataclasses.replace(spec, scale=1 / 256))

    monkeypatch.setattr(preprocessing, "_tensor", skewed)
    with pytest.raises(
        ParityError, match=r"end to end \(png files\): serving's input tensor differs"
    ) as raised:
        export_run(run_dir, tmp_path / "repo", fast_options(gradcam=False))
    assert not (tmp_path / "repo").exists()
    report = json.loads(Path(raised.value.report_path).read_text())
    for check in ("png", "jpeg"):
        entry = report["end_to_end"][check]
        # The brightest pixel of the files decides: at most 255 * (1/255 - 1/256) = 1/256.
        assert 0.0 < entry["max_abs_input_difference"] <= 1 / 256 + 1e-7
        assert entry["passed"] is False and entry["bound"]["max_input_difference"] == 0.0
    assert report["held_out"]["samples"] == 24 and report["output"]["max_abs_error"] <= 1e-4


def test_versions_are_never_overwritten_without_force(small_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert export_run(small_run, repo, fast_options(gradcam=False)).version == 1
    assert export_run(small_run, repo, fast_options(gradcam=False)).version == 2
    first = (repo / SMALL / "1" / "parity.json").read_bytes()
    with pytest.raises(VersionExistsError, match="--force"):
        export_run(small_run, repo, fast_options(version=1, gradcam=False))
    assert (repo / SMALL / "1" / "parity.json").read_bytes() == first
    assert export_run(small_run, repo, fast_options(version=1, force=True, gradcam=False)).version == 1
    assert (repo / SMALL / "1" / "parity.json").read_bytes() != first
    assert export_run(small_run, repo, fast_options(version=7, gradcam=False)).version == 7
    assert sorted(p.name for p in (repo / SMALL).iterdir()) == ["1", "2", "7", "config.pbtxt", "labels.txt"]


def test_an_unwritable_repository_leaves_nothing(small_run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RepositoryWriteError, match="cannot write"):
        export_run(small_run, blocker / "repo", fast_options(gradcam=False))
    assert blocker.read_text() == "not a directory"


def test_a_disk_filling_up_mid_write_leaves_no_partial_version(
    small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    export_run(small_run, repo, fast_options(gradcam=False))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    tree_before = _tree(repo)
    real_copy = publish.copy_file
    copies: list[str] = []

    def copy_until_full(source: Path, target: Path) -> None:
        copies.append(target.name)
        if len(copies) == 2:  # the second file of the version: write part of it, then the disk is full
            target.write_bytes(source.read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_copy(source, target)

    monkeypatch.setattr(publish, "copy_file", copy_until_full)
    with pytest.raises(RepositoryWriteError, match="No space left"):
        export_run(small_run, repo, fast_options(gradcam=False))
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert _tree(repo) == tree_before  # no hidden temporary folder either
    # A brand-new model folder is removed entirely.
    copies.clear()
    with pytest.raises(RepositoryWriteError):
        export_run(small_run, tmp_path / "repo2", fast_options(gradcam=False))
    assert _tree(tmp_path / "repo2") == []


def test_a_version_folder_only_ever_appears_complete(tmp_path: Path) -> None:
    """A poller listing the model folder while versions are published never sees a partial version."""
    source = tmp_path / "source"
    source.mkdir()
    files = {}
    for name, size in (("model.onnx", 8 << 20), ("activations.onnx", 8 << 20), ("parity.json", 1000)):
        path = source / name
        path.write_bytes(np.random.default_rng(0).bytes(size))
        files[name] = path
    config = model_config_pb2.ModelConfig(name="m")
    repo = tmp_path / "repo"
    seen: list[tuple[str, list[str]]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            model_dir = repo / "m"
            if not model_dir.is_dir():
                continue
            for entry in list(model_dir.iterdir()):
                if entry.name.isdigit():
                    try:
                        sizes = sorted(f"{p.name}:{p.stat().st_size}" for p in entry.iterdir())
                    except FileNotFoundError:
                        continue
                    seen.append((entry.name, sizes))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(3):
            publish.publish_version(repo, config, ["a", "b"], files)
    finally:
        done.set()
        poller.join()
    complete = sorted(f"{name}:{path.stat().st_size}" for name, path in files.items())
    assert seen, "the poller never saw a version"
    assert all(sizes == complete for _, sizes in seen), [s for s in seen if s[1] != complete][:3]
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "3", "config.pbtxt", "labels.txt"]
