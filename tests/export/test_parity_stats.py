"""The running error statistics of the parity proof: what "relative" is relative to."""

from __future__ import annotations

import numpy as np
import pytest

from cnnserve.export.parity import MIN_RELATIVE_SCALE, TensorStats


def _stats(reference: list[float], candidate: list[float]) -> TensorStats:
    stats = TensorStats()
    stats.update(np.array([reference]), np.array([candidate]))
    return stats


def test_relative_error_is_against_the_tensors_largest_value() -> None:
    stats = _stats([0.0, -2.0, 4.0], [0.001, -2.0, 4.0])
    assert stats.max_rel == pytest.approx(0.001 / 4.0)
    assert stats.to_dict()["max_abs_value"] == 4.0


def test_a_saturated_output_is_judged_against_the_minimum_scale() -> None:
    # A sigmoid at 2.6e-4 that two float32 kernels compute 3.5e-8 apart: not a 1.3e-4 relative error.
    stats = _stats([2.6e-4], [2.6e-4 + 3.5e-8])
    assert stats.max_rel == pytest.approx(3.5e-8 / MIN_RELATIVE_SCALE)
    assert stats.max_rel < 1e-4
    # A real difference on such a tensor still fails the default 1e-4 threshold.
    assert _stats([2.6e-4], [3.6e-4]).max_rel > 1e-4


def test_an_all_zero_tensor_is_judged_on_its_absolute_error() -> None:
    assert _stats([0.0, 0.0], [0.0, 2e-7]).max_rel == pytest.approx(2e-7)
