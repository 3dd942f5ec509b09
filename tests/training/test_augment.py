"""Augmentation and the epoch-keyed training order: real TensorFlow ops on real digits."""

from __future__ import annotations

import numpy as np
import pytest

from cnnserve.training.augment import AUGMENTATIONS, Jitter, UnknownAugmentationError, get_jitter, warp
from cnnserve.training.datasets import ArraySplit, load_bundled_digits
from cnnserve.training.pipeline import EpochClock, make_dataset
from cnnserve.training.zoo import Preprocessing

PRE = Preprocessing("grayscale", 28, 28)


@pytest.fixture(scope="module")
def digits() -> ArraySplit:
    test = load_bundled_digits(seed=0).splits["test"]
    assert isinstance(test, ArraySplit)
    return ArraySplit(test.images[:40], test.labels[:40])


def _seed(a: int, b: int):
    import tensorflow as tf

    return tf.constant([a, b], tf.int64)


def test_warp_is_a_pure_function_of_its_seed(digits: ArraySplit) -> None:
    x = digits.images[..., None].astype(np.float32)
    jitter = get_jitter("affine")
    first = warp(x, jitter, _seed(1, 2)).numpy()
    assert first.shape == x.shape and first.dtype == np.float32
    assert np.array_equal(first, warp(x, jitter, _seed(1, 2)).numpy())
    assert not np.array_equal(first, warp(x, jitter, _seed(1, 3)).numpy())
    assert not np.array_equal(first, x)
    # Warped digits stay digits: same range, most of the ink kept, the black border filled black.
    assert first.min() >= 0 and first.max() <= 255
    ink = x.sum(axis=(1, 2, 3))
    assert np.all(np.abs(first.sum(axis=(1, 2, 3)) - ink) < 0.35 * ink)


def test_no_jitter_is_the_identity(digits: ArraySplit) -> None:
    x = digits.images[..., None].astype(np.float32)
    assert np.array_equal(warp(x, AUGMENTATIONS["none"], _seed(0, 0)).numpy(), x)
    assert np.array_equal(warp(x, Jitter("zero ranges"), _seed(0, 0)).numpy(), x)


def test_a_pure_shift_moves_the_ink(digits: ArraySplit) -> None:
    x = digits.images[..., None].astype(np.float32)
    out = warp(x, Jitter("shift only", shift=0.15), _seed(4, 4)).numpy()
    columns = np.arange(28, dtype=np.float32)
    centre_before = (x.sum(axis=(1, 3)) * columns).sum(axis=1) / x.sum(axis=(1, 2, 3))
    centre_after = (out.sum(axis=(1, 3)) * columns).sum(axis=1) / np.maximum(out.sum(axis=(1, 2, 3)), 1)
    assert np.mean(np.abs(centre_after - centre_before)) > 0.5


def test_unknown_augmentation_is_named() -> None:
    with pytest.raises(UnknownAugmentationError, match=r"'swirl'.*affine"):
        get_jitter("swirl")


def test_each_epoch_has_its_own_order_and_augmentation_and_repeats_it(digits: ArraySplit) -> None:
    clock = EpochClock()
    ds = make_dataset(
        digits,
        PRE,
        (28, 28, 1),
        16,
        num_classes=10,
        label_mode="int",
        clock=clock,
        seed=7,
        augmentation="affine",
        with_index=True,
    )

    def epoch(number: int) -> tuple[np.ndarray, np.ndarray]:
        clock.set(number)
        batches = list(ds)
        return (
            np.concatenate([index.numpy() for _, _, index in batches]),
            np.concatenate([x.numpy() for x, _, _ in batches]),
        )

    order0, x0 = epoch(0)
    order1, x1 = epoch(1)
    assert sorted(order0.tolist()) == list(range(40)) and sorted(order1.tolist()) == list(range(40))
    assert order0.tolist() != order1.tolist()
    again, x_again = epoch(0)  # what a run resumed at epoch 0 would see
    assert again.tolist() == order0.tolist() and np.array_equal(x_again, x0)
    assert not np.array_equal(x0[np.argsort(order0)], x1[np.argsort(order1)])


def test_without_a_clock_the_split_is_served_in_order_unaugmented(digits: ArraySplit) -> None:
    ds = make_dataset(digits, PRE, (28, 28, 1), 16, num_classes=10, label_mode="int", with_index=True)
    batches = list(ds)
    order = np.concatenate([index.numpy() for _, _, index in batches])
    x = np.concatenate([x.numpy() for x, _, _ in batches])
    assert order.tolist() == list(range(40))
    np.testing.assert_allclose(x[..., 0], digits.images.astype(np.float32) / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match="EpochClock"):
        make_dataset(digits, PRE, (28, 28, 1), 16, num_classes=10, label_mode="int", augmentation="affine")
