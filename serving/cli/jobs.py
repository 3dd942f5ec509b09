"""`cnnserve classify-folder`: classify every image of a folder tree into a CSV/JSONL/Parquet table.

Standard library only at import time; the job (numpy, Pillow, ONNX Runtime, gRPC, Ray) loads in the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cnnserve.serving.security import client_credentials

LOG = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify-folder",
        help="classify every image under a folder into a CSV, JSON Lines or Parquet table",
        description="Classify every image under DIR (recursively by default) and write one row per file to "
        "--output (format from its extension: .csv, .jsonl, .parquet). Reruns resume: files already in the "
        "output are skipped. When DIR's sub-folders are named after the model's labels, the summary adds "
        "accuracy and per-class precision/recall, and confusion_matrix.png and misclassified.png are written "
        "next to the output.",
    )
    parser.add_argument("folder", metavar="DIR", type=Path, help="folder of images")
    parser.add_argument("--model", required=True, help="model name in the repository or on the server")
    parser.add_argument("--model-version", type=int, default=0, help="model version (default: newest live)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--repo", type=Path, help="model repository: run the model on this machine")
    source.add_argument("--server", metavar="ADDR", help="host:port of a running `cnnserve serve`")
    parser.add_argument(
        "--output", "-o", required=True, type=Path, help="result table (.csv/.jsonl/.parquet)"
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local worker processes decoding and running ONNX Runtime (default), or Ray Data",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to run on (e.g. ray://head:10001 or auto); default: a local instance",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="images per ONNX Runtime call (default: 16 on a CPU, the model's max_batch_size on a GPU); with "
        "--server, images per call (default: up to 256)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (local; default: one per core), calls in flight (--server; default: 4) "
        "or ONNX Runtime actors (ray; default: one per CPU of the cluster, one per GPU with --device cuda)",
    )
    parser.add_argument("--top-k", type=int, default=1, help="predictions per image (default: 1)")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        default="auto",
        help="where ONNX Runtime runs (local and ray engines; default: auto)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=6,
        help="--server: retries with exponential backoff "
        "while the server is unavailable, before the job stops (default: 6, about 24 s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="--server: seconds to wait for the server to answer at start (default: 10)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this (default: 50,000,000; with --server the "
        "server's own --max-pixels applies)",
    )
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="walk sub-folders (default: yes)",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="skip files already in the output (default)",
    )
    resume.add_argument(
        "--restart", dest="resume", action="store_false", help="overwrite the output and start over"
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "log", "none"],
        default="auto",
        help="progress bar (terminal), log lines, or nothing (default: auto)",
    )
    client_credentials.add_arguments(parser)
    parser.set_defaults(handler=handle_classify_folder)


def handle_classify_folder(args: argparse.Namespace) -> int:
    from cnnserve.serving.errors import ServingError
    from cnnserve.serving.jobs.job import JobConfig, run_job
    from cnnserve.serving.settings import DEFAULT_MAX_PIXELS

    try:
        security = client_credentials.from_args(args) if args.server else None
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = JobConfig(
        folder=args.folder,
        output=args.output,
        model=args.model,
        repo=args.repo,
        server=args.server,
        security=security,
        version=args.model_version,
        engine=args.engine,
        ray_address=args.ray_address,
        batch_size=args.batch_size,
        workers=args.workers,
        top_k=args.top_k,
        device=args.device,
        recursive=args.recursive,
        resume=args.resume,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        retries=args.retries,
        connect_timeout_s=args.connect_timeout,
        progress=args.progress,
    )
    from cnnserve.serving.observability.tracing import require_exporters, start_tracing, tracing_settings

    try:
        settings = tracing_settings(default_service="cnnserve-classify-folder")
        require_exporters(settings)
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tracing = start_tracing(settings)
    try:
        summary = run_job(config, tracing)
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if tracing is not None:
            tracing.shutdown()  # exports the spans still buffered
    for line in summary.lines():
        print(line)
    return 0
