"""The batch job's Ray engine: the same decode + ONNX Runtime work, scheduled by Ray Data.

Paths go in as a Ray Dataset; `map_batches` over an actor pool (`ActorPoolStrategy`) runs the server's own
preprocessing and `ModelRuntime` in each actor, one ONNX Runtime session per actor created once. With
`--device cuda`, decoding runs as CPU tasks and the actors are GPU actors (one GPU each), so the GPUs only
do inference. The driver streams the results back in order and the job writes them exactly as the local
engine does, so both outputs hold the same rows.

With no address a local Ray instance is started (and stopped at the end); with `--ray-address` the job
runs on that cluster, whose workers must see the model repository and the image folder at the same paths
(a shared file system) and have cnnserve installed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.serving.errors import DeviceUnavailableError, MissingExtraError
from cnnserve.serving.jobs.engines.local import decode_batch, default_workers
from cnnserve.serving.jobs.sinks.base import Prediction, ResultRow, RowBatch
from cnnserve.serving.model import preprocessing
from cnnserve.serving.model.repository import ModelVersion

LOG = logging.getLogger(__name__)

# Paths per Ray Dataset: each chunk is one streaming execution; bigger chunks amortise actor start-up,
# smaller ones bound the driver's memory for the path list.
CHUNK_PATHS = 100_000


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingExtraError(
            "--engine ray needs Ray Data: pip install 'cnnserve[ray]' (ray[data])"
        ) from error
    return ray


def _decode_columns(root: str, paths: list[str], spec: preprocessing.PreprocessSpec, max_pixels: int) -> dict:
    """Decode one batch into columns: path, error ('' when decoded) and the tensor (zeros where failed)."""
    decoded = decode_batch(root, paths, spec, max_pixels)
    tensor = np.zeros((len(paths), *spec.input_dims), dtype=np.float32)
    if len(decoded.decoded):
        tensor[list(decoded.decoded)] = decoded.tensor
    errors = np.array([decoded.errors.get(i, "") for i in range(len(paths))], dtype=object)
    return {"path": np.array(paths, dtype=object), "error": errors, "tensor": tensor}


def ray_decode(
    batch: dict[str, np.ndarray], root: str, spec: preprocessing.PreprocessSpec, max_pixels: int
) -> dict[str, np.ndarray]:
    """A Ray Data batch function: decode files (CPU tasks feeding the GPU actors)."""
    return _decode_columns(root, [str(p) for p in batch["path"]], spec, max_pixels)


class RayClassifier:
    """An actor of the pool: holds one ONNX Runtime session, classifies (and decodes, on CPU) batches."""

    def __init__(
        self,
        repo: str,
        model: str,
        version: int,
        root: str,
        top_k: int,
        device: str,
        max_pixels: int,
        decode: bool,
        intra_op_threads: int,
    ) -> None:
        from cnnserve.serving.model.repository import open_model_version
        from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

        model_version = open_model_version(Path(repo), model, version)
        self.spec = preprocessing.PreprocessSpec.from_model_config(model_version.config)
        self.runtime = ModelRuntime(
            model_version,
            SessionOptions(device=device, intra_op_threads=intra_op_threads),
            with_activations=False,
        )
        self.root, self.top_k, self.max_pixels, self.decode = root, top_k, max_pixels, decode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cnnserve.serving.model.runtime import top_k

        if self.decode:
            batch = _decode_columns(self.root, [str(p) for p in batch["path"]], self.spec, self.max_pixels)
        count = len(batch["path"])
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.array([not e for e in errors], dtype=bool)
        indices = np.full((count, self.top_k), -1, dtype=np.int64)
        scores = np.full((count, self.top_k), np.nan, dtype=np.float32)
        if ok.any():
            probabilities = self.runtime.classify(np.ascontiguousarray(batch["tensor"][ok], dtype=np.float32))
            best, best_scores = top_k(probabilities, self.top_k)
            indices[ok, : best.shape[1]] = best
            scores[ok, : best.shape[1]] = best_scores
        return {
            "path": np.asarray(batch["path"], dtype=object),
            "error": errors,
            "indices": indices,
            "scores": scores,
        }


class RayEngine:
    """Classify batches of files with Ray Data over an actor pool of ONNX Runtime sessions."""

    def __init__(
        self,
        root: Path,
        repo: Path,
        model: ModelVersion,
        top_k: int = 1,
        workers: int = 0,
        device: str = "auto",
        max_pixels: int = preprocessing.DEFAULT_MAX_PIXELS,
        address: str | None = None,
        chunk_paths: int | None = None,  # None: CHUNK_PATHS
    ) -> None:
        self.ray = import_ray()
        self.root = str(Path(root).resolve())
        self.repo = str(Path(repo).resolve())
        self.model = model
        self.top_k = top_k
        self.device = device
        self.max_pixels = max_pixels
        self.address = address
        self.chunk_paths = chunk_paths or CHUNK_PATHS
        self.spec = preprocessing.PreprocessSpec.from_model_config(model.config)
        self.workers = workers
        self._started_here = False

    def __enter__(self) -> RayEngine:
        ray = self.ray
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.workers or default_workers(), include_dashboard=False, log_to_driver=False
                )
                self._started_here = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.use_gpu = self.device == "cuda" or (self.device == "auto" and gpus > 0)
        if self.device == "cuda" and gpus == 0:
            raise DeviceUnavailableError("--device cuda with --engine ray, but the Ray cluster has no GPU")
        if self.use_gpu:
            self.actors = self.workers or gpus
        else:
            self.actors = self.workers or max(1, int(resources.get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        LOG.info(
            "ray engine: %s, %d %s actors (cluster: %s)",
            "cluster " + self.address if self.address else "local instance",
            self.actors,
            "GPU" if self.use_gpu else "CPU",
            {k: v for k, v in resources.items() if k in ("CPU", "GPU")},
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def _dataset(self, paths: list[str], batch_size: int) -> Any:
        ray = self.ray
        blocks = max(1, min(len(paths) // batch_size + 1, 4 * self.actors))
        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        actor_args = {
            "repo": self.repo,
            "model": self.model.name,
            "version": self.model.version,
            "root": self.root,
            "top_k": self.top_k,
            # cuda when asked (fails loudly without it); auto on a GPU cluster takes CUDA where available.
            "device": self.device if self.use_gpu else "cpu",
            "max_pixels": self.max_pixels,
            "decode": not self.use_gpu,
            "intra_op_threads": 0 if self.use_gpu else 1,
        }
        if self.use_gpu:
            dataset = dataset.map_batches(
                ray_decode,
                fn_kwargs={"root": self.root, "spec": self.spec, "max_pixels": self.max_pixels},
                batch_size=batch_size,
                batch_format="numpy",
            )
        return dataset.map_batches(
            RayClassifier,
            fn_constructor_kwargs=actor_args,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=1 if self.use_gpu else 0,
        )

    def _rows(self, batch: dict[str, np.ndarray]) -> list[ResultRow]:
        names = self.model.class_names
        rows = []
        for path, error, indices, scores in zip(
            batch["path"], batch["error"], batch["indices"], batch["scores"], strict=True
        ):
            if error:
                rows.append(ResultRow(path=str(path), error=str(error)))
                continue
            predictions = tuple(
                Prediction(
                    label=names[int(i)],
                    index=int(i),
                    score=float(s),
                )
                for i, s in zip(indices, scores, strict=True)
                if int(i) >= 0
            )
            rows.append(ResultRow(path=str(path), predictions=predictions))
        return rows

    def classify(self, batches: Iterator[list[str]]) -> Iterator[RowBatch]:
        """Rows in input order; paths are gathered into chunks, each run as one streaming Ray Dataset."""
        batch_size = 0
        chunk: list[str] = []
        for paths in batches:
            batch_size = max(batch_size, len(paths))
            chunk.extend(paths)
            if len(chunk) >= self.chunk_paths:
                yield from self._run_chunk(chunk, batch_size)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk, batch_size)

    def _run_chunk(self, paths: list[str], batch_size: int) -> Iterator[RowBatch]:
        dataset = self._dataset(paths, batch_size)
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            yield RowBatch.from_rows(self._rows(batch))
