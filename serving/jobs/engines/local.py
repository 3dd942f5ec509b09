"""The batch job's local engine: processes that decode image files and classify them with ONNX Runtime.

Decoding (Pillow, Python) needs many cores, so the work runs in a pool of worker processes using the
server's own preprocessing and `ModelRuntime`. On a CPU each worker decodes a batch and then classifies it
with its own one-thread session, so only file paths go in and a few probabilities per image come back: the
cores are always busy with one or the other, and the parent only walks the folder and writes rows
(classifying in the parent instead would ship every float32 tensor back through a pipe, and its thread
hand-offs would compete with the decoders for the same cores). On a GPU the workers only decode and
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
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path

import numpy as np

from cnnserve.serving.errors import ImageDecodeError
from cnnserve.serving.jobs.sinks.base import Prediction, ResultRow
from cnnserve.serving.model import preprocessing
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import CUDA, ModelRuntime, SessionOptions, sessions_created, top_k
from cnnserve.serving.settings import available_cpus

LOG = logging.getLogger(__name__)

# On a CPU a worker task (decode + classify) is cut to about this long (see LocalEngine.__enter__).
TASK_SECONDS = 0.1
WARM_UP_IMAGES = 8  # the CPU warm-up batch, which also measures the time per image


@dataclass(frozen=True)
class DecodedBatch:
    """A batch after decoding: the tensors of the images that decoded, and an error for each that did not."""

    paths: tuple[str, ...]
    tensor: np.ndarray  # (number decoded, *input_dims) float32
    decoded: tuple[int, ...]  # positions in `paths` of the rows of `tensor`
    errors: dict[int, str]  # position in `paths` → error message


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
    return DecodedBatch(tuple(paths), tensor, tuple(decoded), errors)


@dataclass(frozen=True)
class ClassifiedBatch:
    """A batch after classification: the probabilities of the decoded images, errors for the others."""

    paths: tuple[str, ...]
    probabilities: np.ndarray  # (number decoded, classes) float32
    decoded: tuple[int, ...]
    errors: dict[int, str]


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


def classify_batch(runtime: ModelRuntime, batch: DecodedBatch) -> ClassifiedBatch:
    probabilities = runtime.classify(batch.tensor) if len(batch.decoded) else np.empty((0, 0), np.float32)
    return ClassifiedBatch(batch.paths, probabilities, batch.decoded, batch.errors)


def decode_and_classify(
    root: str, paths: Sequence[str], spec: preprocessing.PreprocessSpec, max_pixels: int
) -> ClassifiedBatch:
    """In a worker process: decode one batch of files and classify it with the worker's session."""
    assert _WORKER_RUNTIME is not None, "the pool was started without a model"
    return classify_batch(_WORKER_RUNTIME, decode_batch(root, paths, spec, max_pixels))


def rows_from_probabilities(batch: ClassifiedBatch, names: Sequence[str], k: int) -> list[ResultRow]:
    """One row per path of the batch: top-k predictions for decoded images, the error for the rest;
    `names` are the model's class names (`ModelVersion.class_names`)."""
    predictions: dict[int, tuple[Prediction, ...]] = {}
    probabilities = batch.probabilities
    if len(batch.decoded):
        indices, scores = top_k(probabilities, k)
        # Python ints and floats once per batch (tolist), not numpy scalars per value: this runs per image.
        for position, row_indices, row_scores in zip(
            batch.decoded, indices.tolist(), scores.astype(np.float64).tolist(), strict=True
        ):
            predictions[position] = tuple(
                Prediction(label=names[i], index=i, score=s)
                for i, s in zip(row_indices, row_scores, strict=True)
            )
    return [
        ResultRow(path=path, predictions=predictions.get(position, ()), error=batch.errors.get(position, ""))
        for position, path in enumerate(batch.paths)
    ]


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
    ) -> None:
        self.root = str(root)
        self.model = model
        self.top_k = top_k
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
        # Images per worker task; on a CPU set from the warm-up so that one task takes about TASK_SECONDS.
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
            # A big model's batch of max_batch_size images is seconds of work for one core: the last tasks
            # of a job would leave the other cores idle that long. Small models keep whole batches.
            probe = min(WARM_UP_IMAGES, self.runtime.max_batch_size)
            per_image = self.runtime.warm_up(probe) / probe
            self.task_size = max(1, int(TASK_SECONDS / max(per_image, 1e-9)))
        else:
            self.runtime.warm_up()
        LOG.info(
            "local engine: %d worker processes (%s) %s, at most %s images per task, on %s",
            self.workers,
            self.start_method,
            "decoding and classifying" if self.on_cpu else "decoding, classifying here",
            self.task_size or "a batch of",
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

    def _here(self, paths: list[str]) -> ClassifiedBatch:
        return classify_batch(self.runtime, decode_batch(self.root, paths, self.spec, self.max_pixels))

    def _classify_decoded(self, decoding: Future[DecodedBatch]) -> ClassifiedBatch:
        return classify_batch(self.runtime, decoding.result())

    def _submit(self, paths: list[str]) -> Future[ClassifiedBatch]:
        assert self._pool is not None and self._inference is not None and self._started is not None
        if not self._started.done():
            return self._inference.submit(self._here, paths)
        self._started.result()  # a worker process that could not start ends the job here
        if self.on_cpu:
            return self._pool.submit(decode_and_classify, self.root, paths, self.spec, self.max_pixels)
        decoding = self._pool.submit(decode_batch, self.root, paths, self.spec, self.max_pixels)
        return self._inference.submit(self._classify_decoded, decoding)

    def _tasks(self, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        for paths in batches:
            size = self.task_size or len(paths)
            for start in range(0, len(paths), size):
                yield paths[start : start + size]

    def classify(self, batches: Iterator[list[str]]) -> Iterator[list[ResultRow]]:
        """Rows for each batch of relative paths (cut into tasks of `task_size` on a CPU), in order;
        decoding runs ahead of inference."""
        if self._pool is None:
            raise RuntimeError("LocalEngine must be used as a context manager")
        batches = self._tasks(batches)
        pending: deque[Future[ClassifiedBatch]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window:
                paths = next(batches, None)
                if paths is None:
                    exhausted = True
                    break
                pending.append(self._submit(paths))
            if not pending:
                return
            yield rows_from_probabilities(pending.popleft().result(), self.model.class_names, self.top_k)
