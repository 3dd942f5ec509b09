"""ModelRuntime and ModelVersion as the batch job's worker processes use them."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ArenaShrinker, ModelRuntime, SessionOptions

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


HELD_AFTER_BATCHES = """
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
what = sys.argv[3]
interval = -1.0 if what.endswith("without-shrinking") else 0.0  # never, or after every run
options = SessionOptions(device="cpu", intra_op_threads=1, arena_shrink_interval_s=interval)
runtime = ModelRuntime(model, options)
runtime.warm_up()  # as the registry does: one full batch
rng = np.random.default_rng(0)
images = rng.random((512, *runtime.input_dims), dtype=np.float32)
layers = list(runtime.activation_outputs)
runtime.activations(images[:1], layers)
before = rss_bytes()
if what == "activations":  # a request's own number of images, every layer
    for size in (128, 256, 512):
        runtime.activations(images[:size], layers)
elif what == "classify":  # the batcher's batches: any size up to max_batch_size
    for size in rng.integers(1, runtime.max_batch_size + 1, 200):
        runtime.classify(images[:size])
else:  # classification batches bigger than any before
    for size in (128, 256, 512):
        runtime.classify(images[:size])
# The next call's run frees what the last one handed out (its outputs were still held when it ended).
runtime.classify(images[:1])
runtime.activations(images[:1], layers)
print(rss_bytes() - before)
"""


def _held_after(model_repository: Path, what: str) -> int:
    """RSS a fresh process (as a server worker is) still holds after `what` ran. A fresh process, because
    what a long-lived test process allocated before would blur the figure."""
    result = subprocess.run(
        [sys.executable, "-c", HELD_AFTER_BATCHES, str(model_repository), MODEL, what],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(result.stdout.split()[-1])


def test_activation_requests_bigger_than_any_before_leave_no_memory_behind(model_repository: Path) -> None:
    """The activation graph's batch is the request's own size: each new, bigger one would otherwise add a
    step to a server's memory that never comes back."""
    held = _held_after(model_repository, "activations")
    assert held < 16 << 20, f"{held / 2**20:.0f} MiB still held after activations of up to 512 images"


def test_classification_batches_leave_no_memory_behind(model_repository: Path) -> None:
    """After the warm-up's full batch, batches of any size up to max_batch_size add nothing, and bigger
    ones (two batches at once take as much) leave nothing behind once they are done."""
    held = _held_after(model_repository, "classify")
    assert held < 8 << 20, f"{held / 2**20:.0f} MiB more after 200 batches of up to max_batch_size"
    bigger = _held_after(model_repository, "classify-bigger")
    assert bigger < 16 << 20, f"{bigger / 2**20:.0f} MiB still held after batches of up to 512 images"


def test_without_shrinking_the_arena_keeps_what_the_biggest_batch_took(model_repository: Path) -> None:
    """What the shrinking after every run is for (and the proof the two tests above can fail)."""
    held = _held_after(model_repository, "classify-bigger-without-shrinking")
    assert held > 48 << 20, f"the arena kept only {held / 2**20:.0f} MiB"


def test_the_arena_is_shrunk_at_most_once_per_interval() -> None:
    """Shrinking after every run would cost as much as no arena: the next run faults its buffers in again."""
    hourly = ArenaShrinker(SessionOptions(arena_shrink_interval_s=3600.0))
    assert hourly.run_options() is not None
    assert [hourly.run_options() for _ in range(3)] == [None, None, None]
    always = ArenaShrinker(SessionOptions(arena_shrink_interval_s=0.0))
    assert all(always.run_options() is not None for _ in range(3))
    assert ArenaShrinker(SessionOptions(arena_shrink_interval_s=-1.0)).run_options() is None
    assert ArenaShrinker(SessionOptions(cpu_memory_arena=False)).run_options() is None
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ArenaShrinker(SessionOptions(arena_shrink_interval_s=0.0), cuda).run_options() is None
