"""A batch classification job over an image folder: discovery → engine → result table, resumable.

The job is engine-agnostic: it walks the folder (streaming, stable order), drops files the output already
holds, cuts the rest into batches, hands them to an engine (local worker processes decoding + ONNX Runtime, a
running server, or Ray Data) that yields one row per file in order, and appends the rows to the output as
they come. Everything that can be wrong with the request (missing folder, unknown model, unreachable
server, an output that cannot be resumed) is checked before the first image is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cnnserve.serving.errors import JobError
from cnnserve.serving.jobs import discovery
from cnnserve.serving.jobs.progress import Progress
from cnnserve.serving.jobs.sinks import RowBatch, open_sink, output_format, path_text
from cnnserve.serving.observability.jobs import ChunkSpans
from cnnserve.serving.observability.tracing import Tracing
from cnnserve.serving.security.client_credentials import ClientSecurity
from cnnserve.serving.settings import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS

LOG = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class JobConfig:
    folder: Path
    output: Path
    model: str
    repo: Path | None = None
    server: str | None = None
    security: ClientSecurity | None = None  # remote engine: TLS and token for the server
    version: int = 0  # 0 = the newest live version
    engine: str = "local"
    ray_address: str | None = None
    batch_size: int = 0  # 0 = the engine's choice (local: 16 on a CPU, the model's max_batch_size on a GPU)
    workers: int = 0  # 0 = one per core (worker processes / calls in flight / Ray actors)
    top_k: int = 1
    device: str = "auto"
    recursive: bool = True
    resume: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    connect_timeout_s: float = 10.0  # remote engine: how long to wait for the server at start
    retries: int = 6  # remote engine: retries with backoff while the server is UNAVAILABLE
    progress: str = "auto"  # auto (bar on a terminal, log lines otherwise), bar, log, none
    report: bool = True  # labelled-folder metrics and pictures


@dataclass
class JobSummary:
    """What the job did; `files` counts the images found, `resumed` those already in the output."""

    files: int = 0
    classified: int = 0
    failed: int = 0
    resumed: int = 0
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    denied_folders: int = 0
    wall_s: float = 0.0
    model: str = ""
    version: int = 0
    engine: str = ""
    output: str = ""
    report: dict[str, Any] | None = None
    pictures: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.skipped_hidden + self.skipped_non_image

    @property
    def images_per_s(self) -> float:
        return (self.classified + self.failed) / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        lines = [
            f"files: {self.files} (classified {self.classified}, failed {self.failed}, "
            f"already in the output {self.resumed})",
            f"skipped: {self.skipped} (hidden {self.skipped_hidden}, not an image {self.skipped_non_image}); "
            f"unreadable folders: {self.denied_folders}",
            f"wall time: {self.wall_s:.1f} s, {self.images_per_s:.1f} images/s "
            f"({self.engine} engine, {self.model} v{self.version})",
            f"output: {self.output}",
        ]
        if self.report:
            lines.append(
                f"accuracy: {self.report['accuracy']:.4f} over {self.report['evaluated']} labelled images"
            )
            for label, metrics in self.report["per_class"].items():
                lines.append(
                    f"  {label}: precision {metrics['precision']:.3f} recall {metrics['recall']:.3f} "
                    f"(support {metrics['support']})"
                )
        lines.extend(f"picture: {path}" for path in self.pictures)
        return lines


class Engine(Protocol):
    def __enter__(self) -> Engine: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def classify(self, batches: Iterator[list[str]]) -> Iterator[RowBatch]: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    labels: tuple[str, ...]
    batch_size: int  # files per batch handed to the engine when --batch-size is not given


def chunked(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _validate(config: JobConfig) -> None:
    discovery.check_folder(config.folder)
    output_format(config.output)
    if (config.repo is None) == (config.server is None):
        raise JobError("give exactly one of --repo (run the model here) or --server (use a running server)")
    if config.engine not in ENGINES:
        raise JobError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    if config.engine == "ray" and config.server is not None:
        raise JobError("--engine ray runs the model on the Ray cluster: give --repo, not --server")
    if config.top_k < 1:
        raise JobError(f"--top-k must be at least 1, got {config.top_k}")
    if config.batch_size < 0 or config.workers < 0:
        raise JobError("--batch-size and --workers must be positive")


def _open_engine(config: JobConfig) -> tuple[Engine, ModelInfo]:
    """Load the model (or reach the server) and build the engine: every failure here precedes any work."""
    if config.server is not None:
        from cnnserve.serving.jobs.engines.remote import RemoteEngine

        remote = RemoteEngine(
            config.folder,
            config.server,
            config.model,
            version=config.version,
            top_k=config.top_k,
            workers=config.workers,
            retries=config.retries,
            connect_timeout_s=config.connect_timeout_s,
            security=config.security,
        )
        # The job's batches are the engine's calls.
        info = ModelInfo(remote.model_name, remote.model_version, remote.labels, remote.call_images)
        return remote, info

    from cnnserve.serving.model.repository import open_model_version

    assert config.repo is not None
    model = open_model_version(config.repo, config.model, config.version or None)
    info = ModelInfo(
        model.name, model.version, model.labels, model.config.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    )
    if config.engine == "ray":
        from cnnserve.serving.jobs.engines.ray import RayEngine

        return (
            RayEngine(
                config.folder,
                config.repo,
                model,
                top_k=config.top_k,
                workers=config.workers,
                device=config.device,
                max_pixels=config.max_pixels,
                address=config.ray_address,
            ),
            info,
        )
    from cnnserve.serving.jobs.engines.local import LocalEngine

    local = LocalEngine(
        config.folder,
        model,
        top_k=config.top_k,
        workers=config.workers,
        device=config.device,
        max_pixels=config.max_pixels,
        batch_size=config.batch_size,
    )
    return local, info


def run_job(config: JobConfig, tracing: Tracing | None = None) -> JobSummary:
    """Classify every image under the folder into the output, resuming what a previous run wrote; with
    `tracing`, in a span of its own with one span per chunk (see observability/jobs.py)."""
    if tracing is None:
        return _run_job(config, None)
    attributes = {"cnnserve.job.folder": str(config.folder), "cnnserve.model": config.model}
    with tracing.tracer.start_as_current_span("classify-folder", attributes=attributes) as span:
        summary = _run_job(config, ChunkSpans(tracing))
        span.set_attributes(
            {
                "cnnserve.model.version": summary.version,
                "cnnserve.job.engine": summary.engine,
                "cnnserve.job.classified": summary.classified,
                "cnnserve.job.failed": summary.failed,
                "cnnserve.job.resumed": summary.resumed,
            }
        )
        return summary


def _run_job(config: JobConfig, chunk_spans: ChunkSpans | None) -> JobSummary:
    _validate(config)
    engine, info = _open_engine(config)
    try:
        table = open_sink(config.output, config.top_k, info.name, info.version, resume=config.resume)
    except BaseException:
        engine.__exit__(None, None, None)  # let go of the server channel / Ray before reporting
        raise
    summary = JobSummary(
        model=info.name, version=info.version, engine=config.engine if config.server is None else "remote"
    )
    summary.output = str(config.output)
    done_before = frozenset(table.done)  # file names as the output writes them (`path_text`)
    if done_before:
        LOG.info("resuming: %d files are already in %s", len(done_before), config.output)
    # The total only feeds the progress bar or log: without progress, skip a second walk of the folder.
    total = (
        0
        if config.progress == "none"
        else discovery.count_images(config.folder, config.recursive, exclude=done_before, key=path_text)
    )
    batch_size = config.batch_size or info.batch_size or DEFAULT_MAX_BATCH_SIZE
    stats = discovery.DiscoveryStats()

    def pending() -> Iterator[str]:
        for path in discovery.iter_images(config.folder, config.recursive, stats):
            if path_text(path) in done_before:
                summary.resumed += 1
                continue
            yield path

    progress = Progress(total, config.progress)
    start = time.monotonic()
    finished = False
    chunks = chunked(pending(), batch_size)
    if chunk_spans is not None:
        chunks = chunk_spans.wrap(chunks)
    failure: BaseException | None = None
    try:
        with engine:
            for batch in engine.classify(chunks):
                if chunk_spans is not None:
                    chunk_spans.rows_back(batch)
                table.write(batch)
                summary.failed += batch.failed
                summary.classified += len(batch) - batch.failed
                progress.update(len(batch))
        finished = True
    except BaseException as error:
        failure = error
        raise
    finally:
        if chunk_spans is not None:
            chunk_spans.close(failure)
        progress.close()
        table.close(finished=finished)
        summary.wall_s = time.monotonic() - start
        summary.files = stats.images
        summary.skipped_hidden = stats.skipped_hidden
        summary.skipped_non_image = stats.skipped_non_image
        summary.denied_folders = stats.denied_folders
        if not finished:
            LOG.error(
                "job stopped after %d files; they are in %s and a rerun resumes from there",
                summary.classified + summary.failed + summary.resumed,
                config.output,
            )
    if config.report:
        from cnnserve.serving.jobs import report

        result = report.evaluate_output(config.folder, config.output, info.labels, config.top_k)
        if result is not None:
            summary.report = result.metrics
            summary.pictures = [str(p) for p in result.pictures]
    return summary
