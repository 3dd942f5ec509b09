"""ModelRuntime and ModelVersion as the batch job's worker processes use them."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


HELD_AFTER_BIG_BATCHES = """
import sys
from pathlib import Path

import numpy as np

from cnnserve.serving.memory import return_big_buffers_to_the_system
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


assert return_big_buffers_to_the_system()  # as every server worker does first
model = open_model_version(Path(sys.argv[1]), sys.argv[2])
options = SessionOptions(device="cpu", intra_op_threads=1, cpu_memory_arena=sys.argv[3] == "arena")
runtime = ModelRuntime(model, options)
batches = np.random.default_rng(0).random((512, *runtime.input_dims), dtype=np.float32)
runtime.classify(batches[:8])
before = rss_bytes()
for size in (128, 256, 512):
    runtime.classify(batches[:size])
print(rss_bytes() - before)
"""


def _held_after_big_batches(model_repository: Path, arena: bool) -> int:
    """RSS a fresh process (as a server worker is) still holds after batches of 128, 256 and 512 images.
    A fresh process, because what a long-lived test process allocated before would blur the figure."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            HELD_AFTER_BIG_BATCHES,
            str(model_repository),
            MODEL,
            "arena" if arena else "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(result.stdout.split()[-1])


def test_a_batch_bigger_than_any_before_leaves_no_memory_behind(model_repository: Path) -> None:
    """ONNX Runtime's CPU arena would keep the big batch's buffers for good: a step in a server's memory
    each time a new batch shape comes (an explanation's chunk of copies, a bigger dynamic batch)."""
    held = _held_after_big_batches(model_repository, arena=False)
    assert held < 16 << 20, f"{held / 2**20:.0f} MiB still held after batches of up to 512 images"
    with_arena = _held_after_big_batches(model_repository, arena=True)
    assert with_arena > 48 << 20, f"the arena held only {with_arena / 2**20:.0f} MiB: the test lost its bite"
