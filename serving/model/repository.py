"""Reading a model repository: `<model>/config.pbtxt`, `<model>/labels.txt`, `<model>/<version>/...`.

The layout is Triton's. Only integer-named folders are versions, so export's hidden temporary folders
(`.tmp-…`) are never seen; the version policy in the config decides which versions are live.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import ModelNotFoundError, RepositoryError

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_LABEL_FILENAME = "labels.txt"
DEFAULT_MODEL_FILENAME = "model.onnx"
PARITY_FILENAME = "parity.json"


@dataclass(frozen=True)
class ModelVersion:
    """One servable version: its folder, the model's config and labels, and export's parity record."""

    name: str
    version: int
    path: Path
    config: model_config_pb2.ModelConfig
    labels: tuple[str, ...]
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes the model answers: the config's count, else its labels, else its output's size."""
        config = self.config
        if config.num_classes:
            return int(config.num_classes)
        if self.labels:
            return len(self.labels)
        if config.output_kind == model_config_pb2.SIGMOID:
            return 2
        return math.prod(int(d) for d in config.output.dims)

    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        """A name per class index: its label, or the index itself where labels.txt has none."""
        return tuple(self.labels[i] if i < len(self.labels) else str(i) for i in range(self.num_classes))

    @property
    def model_file(self) -> Path:
        return self.path / (self.config.execution.model_filename or DEFAULT_MODEL_FILENAME)

    @property
    def activations_file(self) -> Path:
        return self.path / (self.config.activations_filename or self.model_file.name)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Generated message classes do not pickle by reference here (their module name is the proto
        # package's), so worker processes receive the config as its wire bytes.
        fields = (
            self.name,
            self.version,
            self.path,
            self.config.SerializeToString(),
            self.labels,
            self.parity,
        )
        return _model_version_from_wire, fields


def _model_version_from_wire(
    name: str, version: int, path: Path, config: bytes, labels: tuple[str, ...], parity: dict[str, Any]
) -> ModelVersion:
    return ModelVersion(name, version, path, model_config_pb2.ModelConfig.FromString(config), labels, parity)


def list_models(repo: Path) -> list[str]:
    """Names of the model folders in the repository (hidden folders skipped), sorted."""
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist or is not a directory")
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_versions(model_dir: Path) -> list[int]:
    """Integer version folders of a model, ascending. Anything else (e.g. `.tmp-…`) is not a version."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_model_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse `config.pbtxt`, naming the file and the problem when it is missing or malformed."""
    path = model_dir / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise RepositoryError(f"{path} is missing") from error
    except (OSError, UnicodeDecodeError) as error:
        raise RepositoryError(f"{path} cannot be read: {error}") from error
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise RepositoryError(f"{path} is not a valid ModelConfig: {error}") from error
    if not config.name:
        config.name = model_dir.name
    if config.name != model_dir.name:
        raise RepositoryError(f"{path} names model {config.name!r} but lives in folder {model_dir.name!r}")
    if not config.input.name or not config.output.name:
        raise RepositoryError(f"{path} does not name the model's input and output tensors")
    return config


def read_labels(model_dir: Path, config: model_config_pb2.ModelConfig) -> tuple[str, ...]:
    path = model_dir / (config.label_filename or DEFAULT_LABEL_FILENAME)
    try:
        labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError as error:
        raise RepositoryError(f"{path} is missing") from error
    if config.num_classes and len(labels) != config.num_classes:
        raise RepositoryError(
            f"{path} has {len(labels)} labels but the config says {config.num_classes} classes"
        )
    return labels


def read_parity(version_dir: Path) -> dict[str, Any]:
    path = version_dir / PARITY_FILENAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RepositoryError(f"{path} is not valid JSON: {error}") from error


def live_versions(config: model_config_pb2.ModelConfig, versions: list[int]) -> list[int]:
    """The versions the config's version policy serves (default: the newest one)."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(versions)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in versions if v in wanted]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return versions[-count:]


def open_model_version(repo: Path, name: str, version: int | None = None) -> ModelVersion:
    """Load the config, labels and parity record of one version (the newest live one by default)."""
    models = list_models(repo)
    if name not in models:
        raise ModelNotFoundError(f"unknown model {name!r}; available models: {', '.join(models) or 'none'}")
    model_dir = repo / name
    config = read_model_config(model_dir)
    versions = list_versions(model_dir)
    if version is None or version == 0:
        live = live_versions(config, versions)
        if not live:
            raise ModelNotFoundError(f"model {name!r} has no version folder in {model_dir}")
        version = live[-1]
    elif version not in versions:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; available versions: "
            f"{', '.join(map(str, versions)) or 'none'}"
        )
    version_dir = model_dir / str(version)
    model_version = ModelVersion(
        name=name,
        version=version,
        path=version_dir,
        config=config,
        labels=read_labels(model_dir, config),
        parity=read_parity(version_dir),
    )
    if not model_version.model_file.is_file():
        raise RepositoryError(f"{model_version.model_file} is missing")
    return model_version
