"""`cnnserve serve`, `cnnserve classify`, `cnnserve activations`.

Standard library only at import time; gRPC, numpy and ONNX Runtime load inside the handlers.
Every `serve` option can also come from a CNNSERVE_* environment variable (the flag wins).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    _register_serve(subparsers)
    _register_classify(subparsers)
    _register_activations(subparsers)


def _register_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over gRPC (ONNX Runtime, dynamic batching)",
        description="Serve a model repository over gRPC. Every option defaults to its CNNSERVE_* "
        "environment variable (e.g. CNNSERVE_PORT), then to the value shown.",
    )
    add = parser.add_argument
    add("--repo", type=Path, help="model repository folder [CNNSERVE_REPO]")
    add("--host", help="address to bind (default 0.0.0.0) [CNNSERVE_HOST]")
    add("--port", help="gRPC port, 0 = ephemeral (default 8500) [CNNSERVE_PORT]")
    add("--workers", help="server processes sharing the port (default: CPU count) [CNNSERVE_WORKERS]")
    add("--threads", help="ONNX Runtime threads per worker (default: cores / workers) [CNNSERVE_THREADS]")
    add("--device", help="auto, cpu or cuda (default auto) [CNNSERVE_DEVICE]")
    add(
        "--metrics-port",
        help="Prometheus /metrics port, 0 = ephemeral (default: off) [CNNSERVE_METRICS_PORT]",
    )
    add(
        "--poll-interval",
        help="seconds between repository polls, 0 = never (default 5) [CNNSERVE_POLL_INTERVAL]",
    )
    add("--max-batch-size", help="override every config's max_batch_size [CNNSERVE_MAX_BATCH_SIZE]")
    add("--max-queue-delay-us", help="override the batching delay in µs [CNNSERVE_MAX_QUEUE_DELAY_US]")
    add("--max-queue-size", help="override the queue bound in images [CNNSERVE_MAX_QUEUE_SIZE]")
    add(
        "--no-batching",
        dest="batching",
        action="store_const",
        const="false",
        help="run every request alone, never merged [CNNSERVE_BATCHING=false]",
    )
    add(
        "--batch-wait",
        help="adaptive: a batch waits, at most max_queue_delay, only while more requests are to be expected "
        "(some are being decoded, or traffic is concurrent and not every recent client has one waiting), "
        "and under concurrent traffic only as much of the delay as the worker is busy (default); "
        "fixed: always waits max_queue_delay to fill [CNNSERVE_BATCH_WAIT]",
    )
    add("--max-message-bytes", help="largest request accepted (default 64 MiB) [CNNSERVE_MAX_MESSAGE_BYTES]")
    add("--max-images", help="images per request (default 256) [CNNSERVE_MAX_IMAGES]")
    add("--max-pixels", help="pixels per image, checked before decoding (default 50M) [CNNSERVE_MAX_PIXELS]")
    add("--grace-seconds", help="how long calls in flight may finish at shutdown (default 30)")
    add("--port-file", type=Path, help="write the bound port to this file once serving")
    add(
        "--echo", action="store_true", default=None, help="answer Classify without work (transport benchmark)"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cnnserve.serving.settings import FIELDS, SettingsError, resolve

    flags = {name: getattr(args, name, None) for name in FIELDS}
    flags["echo"] = args.echo
    flags["port_file"] = args.port_file
    try:
        settings = resolve(flags)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from cnnserve.serving.model.runtime import DeviceUnavailableError, choose_providers

    try:
        providers = choose_providers(settings.device)
    except DeviceUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    LOG.info(
        "serving %s with %d worker(s) on %s, execution providers %s",
        settings.repo,
        settings.workers,
        settings.device,
        ", ".join(providers),
    )
    if settings.workers > 1:
        from cnnserve.serving.grpc.supervisor import run_supervisor

        return run_supervisor(settings)
    from cnnserve.serving.grpc.server import run_server

    try:
        return run_server(settings)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="server address, HOST:PORT")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, default=0, help="model version (default: the newest live one)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _register_classify(subparsers: Any) -> None:
    parser = subparsers.add_parser("classify", help="classify images with a running server")
    _add_client_options(parser)
    parser.add_argument("--top-k", type=int, default=1, help="classes per image (default: %(default)s)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.set_defaults(handler=run_classify)


def _register_activations(subparsers: Any) -> None:
    parser = subparsers.add_parser("activations", help="layer activations of an image from a running server")
    _add_client_options(parser)
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        dest="layers",
        help="activation layer (repeatable; default all)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        help="write each layer's feature-map mosaic as OUT (one layer) or OUT-stem_<layer>.png (several)",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE")
    parser.set_defaults(handler=run_activations)


def _read_images(paths: list[Path]) -> list[bytes] | None:
    images = []
    for path in paths:
        try:
            images.append(path.read_bytes())
        except OSError as error:
            print(f"error: cannot read {path}: {error.strerror or error}", file=sys.stderr)
            return None
    return images


def run_classify(args: argparse.Namespace) -> int:
    images = _read_images(args.images)
    if images is None:
        return 2
    from cnnserve.serving.grpc.client import CnnserveClient, ServerError

    try:
        with CnnserveClient(args.server, timeout=args.timeout) as client:
            result = client.classify(images, args.model, top_k=args.top_k, version=args.version)
    except ServerError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    for path, predictions in zip(args.images, result.predictions, strict=True):
        if args.json:
            record = {
                "path": str(path),
                "model": result.model,
                "version": result.version,
                "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in predictions],
            }
            print(json.dumps(record))
        else:
            best = ", ".join(f"{p.label} ({p.score:.4f})" for p in predictions)
            print(f"{path}: {best}")
    return 0


def _png_paths(out: Path, layers: list[str]) -> dict[str, Path]:
    if len(layers) == 1:
        return {layers[0]: out}
    return {layer: out.with_name(f"{out.stem}_{layer}{out.suffix or '.png'}") for layer in layers}


def run_activations(args: argparse.Namespace) -> int:
    images = _read_images([args.image])
    if images is None:
        return 2
    from cnnserve.serving.grpc.client import CnnserveClient, ServerError

    try:
        with CnnserveClient(args.server, timeout=args.timeout) as client:
            result = client.activations(
                images, args.model, layers=args.layers, version=args.version, mosaic=args.png is not None
            )
    except ServerError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    written: dict[str, str] = {}
    if args.png is not None:
        for layer, path in _png_paths(args.png, list(result.layers)).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(result.layers[layer].mosaic_png)
            written[layer] = str(path)
    for layer, values in result.layers.items():
        array = values.values[0]
        if args.json:
            record = {
                "path": str(args.image),
                "model": result.model,
                "version": result.version,
                "layer": layer,
                "shape": list(array.shape),
                "min": float(array.min()),
                "max": float(array.max()),
                "mean": float(array.mean()),
                "values": array.tolist(),
            }
            if layer in written:
                record["png"] = written[layer]
            print(json.dumps(record))
        else:
            where = f" → {written[layer]}" if layer in written else ""
            print(
                f"{layer}: shape {list(array.shape)} min {array.min():.4g} max {array.max():.4g} "
                f"mean {array.mean():.4g}{where}"
            )
    return 0
