"""ModelRuntime and ModelVersion as the batch job's worker processes use them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cnnserve.serving.memory import return_big_buffers_to_the_system
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

MODEL = "mnist_cnn"


def test_model_version_crosses_a_process_boundary(model_repository: Path) -> None:
    model = open_model_version(model_repository, MODEL)
    copy = pickle.loads(pickle.dumps(model))
    assert copy == model
    assert copy.config.SerializeToString() == model.config.SerializeToString()
    assert copy.model_file == model.model_file


def test_runtime_without_activations_classifies_the_same(model_repository: Path) -> None:
    model = open_model_version(model_repository, MODEL)
    options = SessionOptions(device="cpu", intra_op_threads=1)
    full = ModelRuntime(model, options)
    lean = ModelRuntime(model, options, with_activations=False)
    batch = np.random.default_rng(0).random((8, *full.input_dims), dtype=np.float32)
    np.testing.assert_array_equal(lean.classify(batch), full.classify(batch))
    assert lean.warm_up() > 0
    layer = next(iter(full.activation_outputs))
    assert full.activations(batch, [layer])[layer].shape[0] == 8
    with pytest.raises(RuntimeError, match="without activations"):
        lean.activations(batch, [layer])


def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_batch_bigger_than_any_before_leaves_no_memory_behind(model_repository: Path) -> None:
    """ONNX Runtime's CPU arena would keep the big batch's buffers for good: a step in a server's memory
    each time a new batch shape comes (an explanation's chunk of copies, a bigger dynamic batch)."""
    assert return_big_buffers_to_the_system()  # as every server worker does first
    model = open_model_version(model_repository, MODEL)
    runtime = ModelRuntime(model, SessionOptions(device="cpu", intra_op_threads=1))
    batches = np.random.default_rng(0).random((512, *runtime.input_dims), dtype=np.float32)
    runtime.classify(batches[:8])
    before = _rss_bytes()
    for size in (128, 256, 512):
        runtime.classify(batches[:size])
    held = _rss_bytes() - before
    assert held < 16 << 20, f"{held / 2**20:.0f} MiB still held after batches of up to 512 images"
