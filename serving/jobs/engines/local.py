"""The batch job's local engine: processes that decode image files and classify them with ONNX Runtime.

Decoding (Pillow, Python) needs many cores, so the work runs in a pool of worker processes using the
server's own preprocessing and `ModelRuntime`. On a CPU each worker decodes a batch and then classifies it
with its own one-thread session, so only file paths go in and each image's top-k class indices and
scores come back, as arrays (no path, no object per image): the cores are always busy with one or the
other, and the parent only walks the folder and writes rows (classifying in the parent instead would ship
every float32 tensor back through a pipe, and its thread hand-offs would compete with the decoders for the
same cores). A task is sized from the CPU time the workers report per image (decode + inference): about
TASK_SECONDS of work, so the per-task cost (pickling, pipes, futures) is a few thousandths of the work,
and short enough that the job's last tasks do not leave a core idle for long; within a task, ONNX Runtime
runs batches of `batch_size` images (on a CPU 16 by default: the fastest per image on one thread for the
zoo's models, 64 costs 7% more per image for `mnist_cnn`). On a GPU the workers only decode and
this process runs the one GPU session, two batches in flight. A bounded window of batches in flight keeps
the memory flat; results come back in submission order, so the output is in discovery order.

How the workers start (`worker_start_method`): forked from this process when it is in the state a fork
server forks from (libraries imported, no session, no other Python thread, nothing known to break across
a fork) — then they are up in milliseconds; otherwise from a fork server, a fresh interpreter whose imports
cost a noticeable share of a short job's CPU, while this process decodes and classifies the first batches
itself. The engine starts them in its constructor, before the job opens its
output, so a forked worker inherits no file the job writes. A worker exits when this process dies, even
by SIGKILL, instead of waiting for tasks forever.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path

import numpy as np

from cnnserve.serving.errors import ImageDecodeError
from cnnserve.serving.jobs.sinks.base import RowBatch
from cnnserve.serving.model import preprocessing
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import CUDA, ModelRuntime, SessionOptions, sessions_created, top_k
from cnnserve.serving.settings import available_cpus

LOG = logging.getLogger(__name__)

# On a CPU a worker task (decode + classify) holds about this much work (see `task_images`) ...
TASK_SECONDS = 0.05
# ... or, when that is less than one inference batch, up to a batch taking at most this long.
FILL_SECONDS = 0.5
MAX_TASK_BYTES = 64 * 1024 * 1024  # of decoded input tensors per task
CPU_BATCH_SIZE = 16  # images per ONNX Runtime call on a CPU unless --batch-size says otherwise
WARM_UP_IMAGES = 8  # the CPU warm-up batch, which also gives a first time per image


def task_images(seconds_per_image: float, batch_size: int, image_bytes: int) -> int:
    """Images per worker task: TASK_SECONDS of work, or one inference batch when that fits in FILL_SECONDS
    (a slow model's batch would otherwise be cut into slower small calls); never more than MAX_TASK_BYTES
    of decoded tensors."""
    per_image = max(seconds_per_image, 1e-9)
    size = max(int(TASK_SECONDS / per_image), min(batch_size, int(FILL_SECONDS / per_image)), 1)
    return max(1, min(size, MAX_TASK_BYTES // max(image_bytes, 1)))


@dataclass(frozen=True)
class DecodedBatch:
    """A batch after decoding: the tensors of the images that decoded, and an error for each that did not."""

    size: int  # files in the batch
    tensor: np.ndarray  # (number decoded, *input_dims) float32
    decoded: tuple[int, ...]  # positions in the batch of the rows of `tensor`
    errors: dict[int, str]  # position in the batch → error message


def decode_batch(
    root: str, paths: Sequence[str], spec: preprocessing.PreprocessSpec, max_pixels: int
) -> DecodedBatch:
    """Read and preprocess the files of one batch; a file that fails gets an error, the rest go on."""
    tensors: list[np.ndarray] = []
    decoded: list[int] = []
    errors: dict[int, str] = {}
    for position, relative in enumerate(paths):
        try:
            with open(os.path.join(root, relative), "rb") as handle:
                data = handle.read()
            tensors.append(preprocessing.preprocess_encoded(data, spec, max_pixels))
            decoded.append(position)
        except ImageDecodeError as error:
            errors[position] = str(error)
        except OSError as error:
            errors[position] = f"cannot read file: {error.strerror or error}"
        except Exception as error:  # a Pillow plugin bug on a hostile file must not end the job
            errors[position] = f"cannot decode image: {type(error).__name__}: {error}"
    tensor = np.stack(tensors) if tensors else np.empty((0, *spec.input_dims), dtype=np.float32)
    return DecodedBatch(len(paths), tensor, tuple(decoded), errors)


@dataclass(frozen=True)
class TaskResult:
    """A task's outcome, per file of the task in order: top-k class indices (-1 for a file that failed) and
    scores, the errors by position, and the CPU seconds the task took (to size the next tasks)."""

    indices: np.ndarray  # (files, k) int64
    scores: np.ndarray  # (files, k) float32
    errors: dict[int, str]
    cpu_s: float = 0.0


# A worker process's own session, created by `_start_worker` (one per process, one ONNX Runtime thread).
_WORKER_RUNTIME: ModelRuntime | None = None


def _start_worker(model: ModelVersion | None, options: SessionOptions) -> None:
    """Pool initializer: ignore Ctrl-C (the parent stops the pool after writing what is done), exit with
    the parent, load the model."""
    global _WORKER_RUNTIME
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A worker blocks on the task queue, whose write end it holds itself: without this it would wait
        # forever after a SIGKILLed job, and keep the fork server and resource tracker alive with it.
        threading.Thread(target=_exit_when_gone, args=(parent,), name="exit-with-parent", daemon=True).start()
    if model is not None:
        _WORKER_RUNTIME = ModelRuntime(model, options, with_activations=False)


def _exit_when_gone(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of the sentinel pipe closes, i.e. the parent is gone
    os._exit(1)


# Modules that run threads a forked child would inherit in an unknown state (held locks, missing pools).
FORK_UNSAFE_MODULES = ("tensorflow", "torch", "jax", "grpc")


def worker_start_method() -> str:
    """`fork` when this process is in the state a fork server would fork from, else `forkserver` (`spawn`
    where there is none).

    That state: Linux; this is the only Python thread; no ONNX Runtime session exists (their thread pools do
    not survive a fork); none of FORK_UNSAFE_MODULES is imported. The native threads left are those of
    libraries that are idle after import — OpenBLAS's pool, which stops itself around a fork, and the one
    ONNX Runtime starts at import — and the fork server, which preloads numpy and onnxruntime, has them too.
    """
    methods = multiprocessing.get_all_start_methods()
    if (
        sys.platform == "linux"
        and "fork" in methods
        and threading.active_count() == 1
        and sessions_created() == 0
        and not any(name in sys.modules for name in FORK_UNSAFE_MODULES)
    ):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def classify_decoded(runtime: ModelRuntime, batch: DecodedBatch, batch_size: int, k: int) -> TaskResult:
    """Top-k of every decoded image, inference in batches of `batch_size`; failed files keep index -1."""
    indices = np.full((batch.size, k), -1, dtype=np.int64)
    scores = np.zeros((batch.size, k), dtype=np.float32)
    positions = np.asarray(batch.decoded, dtype=np.int64)
    for start in range(0, len(positions), batch_size):
        best, best_scores = top_k(runtime.classify(batch.tensor[start : start + batch_size]), k)
        indices[positions[start : start + batch_size]] = best
        scores[positions[start : start + batch_size]] = best_scores
    return TaskResult(indices, scores, batch.errors)


def decode_and_classify_with(
    runtime: ModelRuntime,
    root: str,
    paths: Sequence[str],
    spec: preprocessing.PreprocessSpec,
    max_pixels: int,
    batch_size: int,
    k: int,
) -> TaskResult:
    start = time.thread_time()
    result = classify_decoded(runtime, decode_batch(root, paths, spec, max_pixels), batch_size, k)
    return TaskResult(result.indices, result.scores, result.errors, time.thread_time() - start)


def decode_and_classify(
    root: str,
    paths: Sequence[str],
    spec: preprocessing.PreprocessSpec,
    max_pixels: int,
    batch_size: int,
    k: int,
) -> TaskResult:
    """In a worker process: decode one task's files and classify them with the worker's session."""
    assert _WORKER_RUNTIME is not None, "the pool was started without a model"
    return decode_and_classify_with(_WORKER_RUNTIME, root, paths, spec, max_pixels, batch_size, k)


def default_workers() -> int:
    """One worker per CPU this process may use (its affinity, capped by a container's CPU quota)."""
    return available_cpus()


class LocalEngine:
    """Classify batches of files under `root` with worker processes and ONNX Runtime sessions."""

    def __init__(
        self,
        root: Path,
        model: ModelVersion,
        top_k: int = 1,
        workers: int = 0,
        device: str = "auto",
        max_pixels: int = preprocessing.DEFAULT_MAX_PIXELS,
        batch_size: int = 0,
    ) -> None:
        """`batch_size`: images per ONNX Runtime call (default: CPU_BATCH_SIZE on a CPU, the model's
        max_batch_size on a GPU, never more than max_batch_size)."""
        self.root = str(root)
        self.model = model
        self.labels = model.class_names
        self.top_k = min(top_k, len(self.labels)) if self.labels else top_k
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        self.spec = preprocessing.PreprocessSpec.from_model_config(model.config)
        # CPU: every worker classifies what it decodes with its own one-thread session. GPU: the workers
        # only decode; this process keeps two batches in flight on the GPU session.
        self.on_cpu = device == "cpu" or (device == "auto" and CUDA not in self._available_providers())
        # Idle ONNX Runtime pool threads must sleep, not spin: every core is also decoding.
        options = SessionOptions(
            device=device, intra_op_threads=1 if self.on_cpu else 0, allow_spinning=False
        )
        self.start_method = worker_start_method()
        # The workers start now: before this process creates its session and threads (a forked worker must
        # not inherit them) and before the job opens its output (nor that).
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._worker_context(self.start_method),
            initializer=_start_worker,
            initargs=(model if self.on_cpu else None, options),
        )
        pool = self._pool
        self._workers_up = [pool.submit(os.getpid) for _ in range(self.workers)]
        try:
            # This process's session classifies the first batches on a CPU, and everything on a GPU.
            self.runtime = ModelRuntime(model, options, with_activations=False)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        self.inference_threads = default_workers() if self.on_cpu else 2
        self.window = 2 * (self.workers + self.inference_threads)
        largest = self.runtime.max_batch_size
        default_batch = min(CPU_BATCH_SIZE, largest) if self.on_cpu else largest
        self.batch_size = min(batch_size, largest) if batch_size > 0 else default_batch
        self.image_bytes = 4 * int(np.prod(self.spec.input_dims))
        # Images per task; on a CPU from the warm-up, then from the CPU time the workers report (see
        # `task_images`); on a GPU a task is a batch.
        self.task_size = 0
        self._inference: ThreadPoolExecutor | None = None
        self._started: Future[None] | None = None

    @staticmethod
    def _available_providers() -> list[str]:
        from cnnserve.serving.model.runtime import import_onnxruntime

        return list(import_onnxruntime().get_available_providers())

    @property
    def providers(self) -> list[str]:
        return self.runtime.providers

    def _worker_context(self, method: str) -> multiprocessing.context.BaseContext:
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # Imported once in the fork server, not once per worker; it starts now, its imports overlapping
            # this process's session and warm-up.
            context.set_forkserver_preload(
                ["cnnserve.serving.jobs.engines.local"] + (["onnxruntime"] if self.on_cpu else [])
            )
            forkserver.ensure_running()
        return context

    def __enter__(self) -> LocalEngine:
        if self._pool is None:
            raise RuntimeError("this LocalEngine was closed; create a new one")
        self._inference = ThreadPoolExecutor(self.inference_threads, thread_name_prefix="classify-folder")
        # Until every worker is up (milliseconds forked, ~0.2 s from the fork server: a fresh interpreter's
        # imports, then its session), this process decodes the first batches itself (see `_submit`).
        self._started = self._inference.submit(self._wait_for_workers)
        if self.on_cpu:
            # A first time per image (inference only; the workers' reports add decoding).
            probe = min(WARM_UP_IMAGES, self.runtime.max_batch_size)
            per_image = self.runtime.warm_up(probe) / probe
            self.task_size = task_images(per_image, self.batch_size, self.image_bytes)
        else:
            self.runtime.warm_up()
        LOG.info(
            "local engine: %d worker processes (%s) %s, batches of %d, %s images per task at first, on %s",
            self.workers,
            self.start_method,
            "decoding and classifying" if self.on_cpu else "decoding, classifying here",
            self.batch_size,
            self.task_size or self.batch_size,
            ", ".join(self.providers),
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._inference is not None:
            self._inference.shutdown(wait=True, cancel_futures=True)
            self._inference = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _wait_for_workers(self) -> None:
        for future in self._workers_up:
            future.result()

    def _here(self, paths: list[str]) -> TaskResult:
        return decode_and_classify_with(
            self.runtime, self.root, paths, self.spec, self.max_pixels, self.batch_size, self.top_k
        )

    def _classify_decoded(self, decoding: Future[DecodedBatch]) -> TaskResult:
        return classify_decoded(self.runtime, decoding.result(), self.batch_size, self.top_k)

    def _submit(self, paths: list[str]) -> Future[TaskResult]:
        assert self._pool is not None and self._inference is not None and self._started is not None
        if not self._started.done():
            return self._inference.submit(self._here, paths)
        self._started.result()  # a worker process that could not start ends the job here
        if self.on_cpu:
            return self._pool.submit(
                decode_and_classify, self.root, paths, self.spec, self.max_pixels, self.batch_size, self.top_k
            )
        decoding = self._pool.submit(decode_batch, self.root, paths, self.spec, self.max_pixels)
        return self._inference.submit(self._classify_decoded, decoding)

    def _tasks(self, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        """The job's batches regrouped into tasks of `task_size` files (read anew for every task: it follows
        the workers' reports); on a GPU, the batches as they come."""
        if not self.task_size:
            yield from batches
            return
        waiting: list[str] = []
        for paths in batches:
            waiting += paths
            while len(waiting) >= self.task_size:
                task, waiting = waiting[: self.task_size], waiting[self.task_size :]
                yield task
        if waiting:
            yield waiting

    def _learn(self, result: TaskResult, files: int) -> None:
        """Size the next tasks from the CPU time this one took per file."""
        if self.task_size and result.cpu_s > 0 and files:
            self.task_size = task_images(result.cpu_s / files, self.batch_size, self.image_bytes)

    def classify(self, batches: Iterator[list[str]]) -> Iterator[RowBatch]:
        """Rows for the batches of relative paths, in order (regrouped into tasks on a CPU); decoding runs
        ahead of inference."""
        if self._pool is None:
            raise RuntimeError("LocalEngine must be used as a context manager")
        tasks = self._tasks(batches)
        pending: deque[tuple[list[str], Future[TaskResult]]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window:
                paths = next(tasks, None)
                if paths is None:
                    exhausted = True
                    break
                pending.append((paths, self._submit(paths)))
            if not pending:
                return
            paths, future = pending.popleft()
            result = future.result()
            self._learn(result, len(paths))
            yield RowBatch(paths, self.labels, result.indices, result.scores, result.errors)
