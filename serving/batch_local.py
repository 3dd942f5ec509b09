"""The batch job's local engine: decoder processes feeding ONNX Runtime in this process.

Decoding (Pillow, Python) needs many cores, so a pool of worker processes (forkserver or spawn, never
fork: the parent holds ONNX Runtime's threads) reads and preprocesses whole batches with the server's own
preprocessing code. This process runs the server's own `ModelRuntime` on decoded batches from several
threads at once: ONNX Runtime releases the GIL, and on a CPU, batches run side by side with one thread
each scale better than one batch split over every core (small convolutions do not parallelise well
inside an operator; measured in bench/bench_batch.py). A bounded window of batches in flight keeps every
core busy and the memory flat; results come back in submission order, so the output is in discovery order.
While the decoder processes start, this process decodes the first batches itself with the same function.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnserve.serving import preprocessing
from cnnserve.serving.batch_output import Prediction, ResultRow
from cnnserve.serving.repository import ModelVersion
from cnnserve.serving.runtime import CUDA, ModelRuntime, SessionOptions, top_k

LOG = logging.getLogger(__name__)


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
        except preprocessing.ImageDecodeError as error:
            errors[position] = str(error)
        except OSError as error:
            errors[position] = f"cannot read file: {error.strerror or error}"
        except Exception as error:  # a Pillow plugin bug on a hostile file must not end the job
            errors[position] = f"cannot decode image: {type(error).__name__}: {error}"
    tensor = np.stack(tensors) if tensors else np.empty((0, *spec.input_dims), dtype=np.float32)
    return DecodedBatch(tuple(paths), tensor, tuple(decoded), errors)


def rows_from_probabilities(
    batch: DecodedBatch, probabilities: np.ndarray, labels: Sequence[str], k: int
) -> list[ResultRow]:
    """One row per path of the batch: top-k predictions for decoded images, the error for the rest."""
    predictions: dict[int, tuple[Prediction, ...]] = {}
    if len(batch.decoded):
        indices, scores = top_k(probabilities, k)
        names = [labels[i] if i < len(labels) else str(i) for i in range(probabilities.shape[1])]
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
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LocalEngine:
    """Classify batches of files under `root` with decoder processes and one ONNX Runtime session."""

    def __init__(
        self,
        root: Path,
        model: ModelVersion,
        top_k: int = 1,
        workers: int = 0,
        device: str = "auto",
        max_pixels: int = preprocessing.DEFAULT_MAX_PIXELS,
        inference_threads: int = 0,
        intra_op_threads: int = 0,
    ) -> None:
        self.root = str(root)
        self.model = model
        self.top_k = top_k
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        self.spec = preprocessing.PreprocessSpec.from_model_config(model.config)
        cores = default_workers()
        on_cpu = device == "cpu" or (device == "auto" and CUDA not in self._available_providers())
        # CPU: one batch per core, one ONNX Runtime thread each. GPU: two runs in flight, default threads.
        self.inference_threads = inference_threads or (cores if on_cpu else 2)
        if intra_op_threads == 0 and on_cpu:
            intra_op_threads = max(1, cores // self.inference_threads)
        # The decoder processes share the cores with ONNX Runtime: its idle pool threads must sleep, not spin.
        self.runtime = ModelRuntime(
            model, SessionOptions(device=device, intra_op_threads=intra_op_threads, allow_spinning=False)
        )
        self.window = 2 * (self.workers + self.inference_threads)
        self._pool: ProcessPoolExecutor | None = None
        self._inference: ThreadPoolExecutor | None = None
        self._started: Future[None] | None = None

    @staticmethod
    def _available_providers() -> list[str]:
        from cnnserve.serving.runtime import import_onnxruntime

        return list(import_onnxruntime().get_available_providers())

    @property
    def providers(self) -> list[str]:
        return self.runtime.providers

    def __enter__(self) -> LocalEngine:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["cnnserve.serving.batch_local"])
        # Workers ignore Ctrl-C: the parent stops them after writing what is done.
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=signal.signal,
            initargs=(signal.SIGINT, signal.SIG_IGN),
        )
        self._inference = ThreadPoolExecutor(self.inference_threads, thread_name_prefix="classify-folder")
        # A decoder process is ready only after a fresh interpreter's imports (~0.2 s, a fifth of decoding
        # 10,000 digits): they start in the background while ONNX Runtime warms up here and, until they are
        # up, the inference threads decode the first batches themselves (see `classify`).
        self._started = self._inference.submit(self._start_decoders)
        self.runtime.warm_up()
        LOG.info(
            "local engine: %d decoder processes (%s), %d inference threads on %s",
            self.workers,
            method,
            self.inference_threads,
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

    def _start_decoders(self) -> None:
        assert self._pool is not None
        for future in [self._pool.submit(os.getpid) for _ in range(self.workers)]:
            future.result()

    def _decode_here(self, paths: list[str]) -> list[ResultRow]:
        return self._classify(decode_batch(self.root, paths, self.spec, self.max_pixels))

    def _infer(self, decoding: Future[DecodedBatch]) -> list[ResultRow]:
        return self._classify(decoding.result())

    def _classify(self, batch: DecodedBatch) -> list[ResultRow]:
        probabilities = self.runtime.classify(batch.tensor) if len(batch.decoded) else np.empty((0, 0))
        return rows_from_probabilities(batch, probabilities, self.model.labels, self.top_k)

    def classify(self, batches: Iterator[list[str]]) -> Iterator[list[ResultRow]]:
        """Rows for each batch of relative paths, in order; decoding runs ahead of inference."""
        if self._pool is None or self._inference is None or self._started is None:
            raise RuntimeError("LocalEngine must be used as a context manager")
        pending: deque[Future[list[ResultRow]]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window:
                paths = next(batches, None)
                if paths is None:
                    exhausted = True
                    break
                if self._started.done():
                    self._started.result()  # a decoder process that could not start ends the job here
                    decoding = self._pool.submit(decode_batch, self.root, paths, self.spec, self.max_pixels)
                    pending.append(self._inference.submit(self._infer, decoding))
                else:
                    pending.append(self._inference.submit(self._decode_here, paths))
            if not pending:
                return
            yield pending.popleft().result()
