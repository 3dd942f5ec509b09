"""Comparing ONNX Runtime with Keras: running statistics per output, head-aware probabilities.

Statistics are accumulated batch by batch so a large model's activations (cats_dogs_cnn's conv1 is
148×148×32 floats per image) never need to be held for every sample at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnserve.serving.model.runtime import probabilities as serving_probabilities


def probabilities(raw: np.ndarray, kind: int) -> np.ndarray:
    """Class probabilities from a head's raw output, exactly as serving computes them (in float64)."""
    return serving_probabilities(raw, kind, np.float64)


# The smallest largest-magnitude a tensor's relative error is measured against (see `TensorStats`).
MIN_RELATIVE_SCALE = 1e-3


@dataclass
class TensorStats:
    """Running max absolute / relative error of one tensor over many batches, with the worst sample.

    The relative error is the largest absolute difference divided by the largest magnitude of the Keras
    tensor (a scale-free figure that stays meaningful where individual values cross zero), that magnitude
    taken as at least `MIN_RELATIVE_SCALE`: a sigmoid saturated near 1e-4 on an all-white image differs
    between float32 kernels by ~1e-8, a "relative" 1e-4 that says nothing about the conversion.
    """

    max_abs: float = 0.0
    max_ref: float = 0.0
    worst_sample: int = -1
    count: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray, first_index: int = 0) -> None:
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        if reference.shape != candidate.shape:
            raise ValueError(f"shape mismatch: Keras {reference.shape} vs ONNX {candidate.shape}")
        if reference.size == 0:
            return  # nothing to compare
        # In float64, where the difference of two float32 values is exact.
        difference = np.abs(np.subtract(reference, candidate, dtype=np.float64))
        per_sample = difference.max(axis=tuple(range(1, difference.ndim)))
        worst = int(per_sample.argmax())
        if float(per_sample[worst]) > self.max_abs:  # ties keep the earlier sample
            self.max_abs = float(per_sample[worst])
            self.worst_sample = first_index + worst
        self.max_ref = max(self.max_ref, float(np.abs(reference).max()))
        self.count += reference.shape[0]

    @property
    def max_rel(self) -> float:
        return self.max_abs / max(self.max_ref, MIN_RELATIVE_SCALE) if self.max_ref > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "max_abs_value": self.max_ref,
            "worst_sample": self.worst_sample,
            "samples": self.count,
        }


@dataclass
class Top1Stats:
    agree: int = 0
    count: int = 0
    disagreeing: list[int] = field(default_factory=list)

    def update(self, reference: np.ndarray, candidate: np.ndarray, first_index: int = 0) -> None:
        ref_top = np.argmax(reference, axis=1)
        cand_top = np.argmax(candidate, axis=1)
        same = ref_top == cand_top
        self.agree += int(same.sum())
        self.count += int(same.size)
        self.disagreeing.extend(first_index + int(i) for i in np.flatnonzero(~same)[:20])

    @property
    def agreement(self) -> float:
        return self.agree / self.count if self.count else 1.0


def run_onnx(session, input_name: str, names: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """The named outputs of one ONNX Runtime run, by name."""
    outputs = session.run(names, {input_name: batch})
    return {name: outputs[index] for index, name in enumerate(names)}
