"""Publishing into the model repository: --force replaces a version whole, and a failed publish undoes itself.

These tests publish small real files with `publish_version` directly (no model needed): what they check is
what the repository holds after each step of a publish fails, down to the bytes.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cnnserve.export import publish
from cnnserve.export.errors import RepositoryWriteError, VersionExistsError
from cnnserve.protos import model_config_pb2


def _files(folder: Path, tag: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("model.onnx", "activations.onnx", "parity.json"):
        path = folder / name
        path.write_text(f"{tag}:{name}")
        files[name] = path
    return files


def _config(max_batch: int) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(name="m", max_batch_size=max_batch)


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """`m` with versions 1 and 2, config max_batch_size 8 and labels a, b."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        publish.publish_version(
            repo, _config(8), ["a", "b"], _files(tmp_path / f"v{version}", f"old{version}")
        )
    return repo


def test_force_replaces_one_version_whole(repo: Path, tmp_path: Path) -> None:
    number, folder = publish.publish_version(
        repo, _config(16), ["x", "y"], _files(tmp_path / "new", "new"), version=1, force=True
    )
    assert (number, folder) == (1, repo / "m" / "1")
    assert _snapshot(repo) == {
        "m/1/activations.onnx": b"new:activations.onnx",
        "m/1/model.onnx": b"new:model.onnx",
        "m/1/parity.json": b"new:parity.json",
        "m/2/activations.onnx": b"old2:activations.onnx",
        "m/2/model.onnx": b"old2:model.onnx",
        "m/2/parity.json": b"old2:parity.json",
        "m/config.pbtxt": b'name: "m"\nmax_batch_size: 16\n',
        "m/labels.txt": b"x\ny\n",
    }
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]


def test_without_force_an_existing_version_is_refused_and_nothing_changes(repo: Path, tmp_path: Path) -> None:
    before = _snapshot(repo)
    with pytest.raises(
        VersionExistsError, match=r"m/2 already exists; pass --force.*existing versions: 1, 2"
    ):
        publish.publish_version(repo, _config(16), ["x"], _files(tmp_path / "new", "new"), version=2)
    assert _snapshot(repo) == before


def _fail_copy_of_second_file(monkeypatch: pytest.MonkeyPatch) -> None:
    real = publish.copy_file
    copies: list[Path] = []

    def copy(source: Path, target: Path) -> None:
        copies.append(target)
        if len(copies) == 2:
            target.write_bytes(b"part")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real(source, target)

    monkeypatch.setattr(publish, "copy_file", copy)


def _fail_labels_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real = publish._write_atomic
    calls: list[Path] = []

    def write(path: Path, text: str) -> None:
        calls.append(path)
        if path.name == "labels.txt" and len(calls) == 2:  # the publish's own write, not the rollback's
            raise OSError(errno.EIO, "Input/output error", str(path))
        real(path, text)

    monkeypatch.setattr(publish, "_write_atomic", write)


def _fail_rename(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Fail the rename that moves the old version aside (`aside`) or the new one into place (`into`)."""
    real = os.rename

    def rename(source, target) -> None:
        moving_aside = Path(target).name.startswith(".old-")
        moving_in = Path(source).name.startswith(".tmp-")
        if (which == "aside" and moving_aside) or (which == "into" and moving_in):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))
        real(source, target)

    monkeypatch.setattr(publish.os, "rename", rename)


@pytest.mark.parametrize(
    ("step", "cause"),
    [
        ("copy", "No space left on device"),
        ("labels", "Input/output error"),
        ("aside", "Invalid cross-device link"),
        ("into", "Invalid cross-device link"),
    ],
)
def test_a_failed_force_publish_puts_everything_back(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, cause: str
) -> None:
    """Whichever step fails, the old version 1, the config and the labels are back, byte for byte."""
    before = _snapshot(repo)
    if step == "copy":
        _fail_copy_of_second_file(monkeypatch)
    elif step == "labels":
        _fail_labels_write(monkeypatch)
    else:
        _fail_rename(monkeypatch, step)
    with pytest.raises(RepositoryWriteError, match=f"cannot write version into .*m: .*{cause}"):
        publish.publish_version(
            repo, _config(16), ["x", "y"], _files(tmp_path / "new", "new"), version=1, force=True
        )
    monkeypatch.undo()
    assert _snapshot(repo) == before
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]


def test_a_failed_first_publish_leaves_no_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_rename(monkeypatch, "into")
    with pytest.raises(RepositoryWriteError):
        publish.publish_version(tmp_path / "repo", _config(8), ["a"], _files(tmp_path / "new", "new"))
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == []


def test_an_interrupted_publish_also_rolls_back(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only OSError: a KeyboardInterrupt mid-copy leaves the repository as it was, and propagates."""
    before = _snapshot(repo)

    def interrupted(source: Path, target: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(publish, "copy_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish.publish_version(
            repo, _config(16), ["x"], _files(tmp_path / "new", "new"), version=1, force=True
        )
    assert _snapshot(repo) == before


@pytest.mark.parametrize(
    ("existing", "requested", "force", "expected"),
    [
        ([], None, False, 1),
        ([1, 2, 10], None, False, 11),  # numeric order, not text order
        ([1, 2], 5, False, 5),
        ([1, 2], 2, True, 2),
    ],
)
def test_choose_version(tmp_path: Path, existing: list[int], requested, force: bool, expected: int) -> None:
    for number in existing:
        (tmp_path / str(number)).mkdir()
    (tmp_path / ".tmp-abc").mkdir()  # hidden folders and files are not versions
    (tmp_path / "3").write_text("a file, not a version folder")
    assert publish.choose_version(tmp_path, requested, force) == expected


def test_choose_version_refuses_non_positive_numbers(tmp_path: Path) -> None:
    with pytest.raises(RepositoryWriteError, match="positive integer, not 0"):
        publish.choose_version(tmp_path, 0, force=True)
