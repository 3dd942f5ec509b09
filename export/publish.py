"""Writing a verified version into the model repository, atomically.

The version's files are copied into a hidden folder inside the model folder (`.tmp-<uuid>`: servers only
see integer-named folders), `config.pbtxt` and `labels.txt` are replaced through temporary files, and the
hidden folder is renamed to the version number last. Any failure removes what was written and puts the
previous config and labels back, so a server polling the repository never sees a partial version.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import text_format

from cnnserve.export.errors import RepositoryWriteError, VersionExistsError
from cnnserve.protos import model_config_pb2

LOG = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
LABEL_FILENAME = "labels.txt"


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def choose_version(model_dir: Path, requested: int | None, force: bool) -> int:
    """The requested version (refusing an existing one without `force`), else the next free integer."""
    versions = existing_versions(model_dir)
    if requested is not None:
        if requested < 1:
            raise RepositoryWriteError(f"version must be a positive integer, not {requested}")
        if requested in versions and not force:
            raise VersionExistsError(
                f"{model_dir / str(requested)} already exists; pass --force to replace it "
                f"(existing versions: {', '.join(map(str, versions))})"
            )
        return requested
    return (versions[-1] + 1) if versions else 1


def copy_file(source: Path, target: Path) -> None:
    """Copy and fsync one file (a module-level function so a test can make the disk "fill up" here)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def config_text(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def publish_version(
    repo: Path,
    config: model_config_pb2.ModelConfig,
    labels: Sequence[str],
    files: Mapping[str, Path],
    version: int | None = None,
    force: bool = False,
) -> tuple[int, Path]:
    """Write `files` as a new version of `config.name` plus the model's config and labels; atomic."""
    model_dir = repo / config.name
    created_model_dir = False
    temporary: Path | None = None
    backups: dict[Path, bytes | None] = {}
    replaced: tuple[Path, Path] | None = None  # (where the old version was moved, its folder)
    try:
        repo.mkdir(parents=True, exist_ok=True)
        if not model_dir.is_dir():
            model_dir.mkdir()
            created_model_dir = True
        number = choose_version(model_dir, version, force)
        temporary = model_dir / f".tmp-{uuid.uuid4().hex}"
        temporary.mkdir()
        for name, source in files.items():
            copy_file(source, temporary / name)
        for path, text in (
            (model_dir / CONFIG_FILENAME, config_text(config)),
            (
                model_dir / (config.label_filename or LABEL_FILENAME),
                "".join(f"{label}\n" for label in labels),
            ),
        ):
            backups[path] = path.read_bytes() if path.is_file() else None
            _write_atomic(path, text)
        target = model_dir / str(number)
        if target.exists():
            replaced = (model_dir / f".old-{uuid.uuid4().hex}", target)
            os.rename(target, replaced[0])
        os.rename(temporary, target)
        temporary = None
    except VersionExistsError:
        _roll_back(model_dir, created_model_dir, temporary, backups, None)
        raise
    except OSError as error:
        _roll_back(model_dir, created_model_dir, temporary, backups, replaced)
        raise RepositoryWriteError(f"cannot write version into {model_dir}: {error}") from error
    except BaseException:
        _roll_back(model_dir, created_model_dir, temporary, backups, replaced)
        raise
    if replaced is not None:
        shutil.rmtree(replaced[0], ignore_errors=True)
    LOG.info("wrote %s", target)
    return number, target


def _roll_back(
    model_dir: Path,
    created_model_dir: bool,
    temporary: Path | None,
    backups: Mapping[Path, bytes | None],
    replaced: tuple[Path, Path] | None,
) -> None:
    """Undo a failed publish: remove the hidden folder, restore the old version, config and labels."""
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    if replaced is not None and replaced[0].exists() and not replaced[1].exists():
        try:
            os.rename(replaced[0], replaced[1])
        except OSError:
            LOG.exception("could not restore %s after a failed export", replaced[1])
    for path, content in backups.items():
        try:
            if content is None:
                path.unlink(missing_ok=True)
            else:
                _write_atomic(path, content.decode("utf-8"))
        except OSError:
            LOG.exception("could not restore %s after a failed export", path)
    if created_model_dir:
        shutil.rmtree(model_dir, ignore_errors=True)
