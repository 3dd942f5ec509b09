"""The kept-epoch rule: accuracy within one standard error of the highest seen, then the lowest loss."""

from __future__ import annotations

import pytest

from cnnserve.training.selection import consider, kept_epoch, standard_error


def test_standard_error() -> None:
    assert standard_error(0.99, 800) == pytest.approx(0.00352, abs=1e-5)
    assert standard_error(1.0, 800) == pytest.approx(1 / 800)  # never below one image's worth
    assert standard_error(0.5, 0) == 1.0  # no images: no information


def test_a_lucky_accuracy_peak_loses_to_a_later_epoch_of_lower_loss() -> None:
    # 800 images: 787 vs 785 correct is within one standard error (~3 images).
    accuracy = [725 / 800, 780 / 800, 787 / 800, 785 / 800, 786 / 800]
    loss = [0.80, 0.65, 0.60, 0.59, 0.589]
    assert kept_epoch(accuracy, loss, 800) == 5


def test_a_clearly_better_accuracy_wins_even_with_a_higher_loss() -> None:
    accuracy = [0.90, 0.95, 0.99]
    loss = [0.30, 0.20, 0.25]
    assert kept_epoch(accuracy, loss, 800) == 3


def test_an_epoch_outside_the_band_never_replaces_the_kept_one() -> None:
    # Epoch 3 has the lowest loss but is far less accurate than the best.
    accuracy = [0.95, 0.99, 0.96]
    loss = [0.20, 0.15, 0.10]
    assert kept_epoch(accuracy, loss, 800) == 2
    # On few images the band is wide: the lower loss wins.
    assert kept_epoch(accuracy, loss, 20) == 3


def test_consider_reports_whether_the_epoch_is_kept() -> None:
    kept, improved = consider(None, 1, 0.9, 0.5, 100)
    assert improved and kept.epoch == 1
    kept, improved = consider(kept, 2, 0.8, 0.6, 100)
    assert not improved and kept.epoch == 1 and kept.top_accuracy == 0.9
    assert kept_epoch([], [], 100) is None
