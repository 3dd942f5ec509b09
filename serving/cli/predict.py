"""`cnnserve classify` and `cnnserve activations`: ask a running server about image files.

Standard library only at import time; gRPC and numpy load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnnserve.serving.security import client_credentials
from cnnserve.serving.settings import DEFAULT_CLIENT_TIMEOUT_S


def register(subparsers: Any) -> None:
    _register_classify(subparsers)
    _register_activations(subparsers)


def _add_client_options(parser: argparse.ArgumentParser, server_required: bool = True) -> None:
    parser.add_argument("--server", required=server_required, help="server address (gRPC), HOST:PORT")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, default=0, help="model version (default: the newest live one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CLIENT_TIMEOUT_S,
        help="seconds per call (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    client_credentials.add_arguments(parser)


def _register_classify(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="classify images with a running server",
        description="Classify image files with a running server: over gRPC with cnnserve's own API "
        "(--server) or the Open Inference Protocol, KServe v2 (--server with --protocol v2), or over the "
        "Open Inference Protocol's HTTP/REST endpoint (--url).",
    )
    _add_client_options(parser, server_required=False)
    parser.add_argument(
        "--url",
        help="the server's Open Inference Protocol HTTP endpoint, http://HOST:PORT (instead of --server)",
    )
    parser.add_argument(
        "--protocol",
        choices=["cnnserve", "v2"],
        default=None,
        help="over gRPC: cnnserve.v1 (default) or the Open Inference Protocol (v2); --url is always v2",
    )
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
    if (args.server is None) == (args.url is None):
        print(
            "error: give the server as --server HOST:PORT (gRPC) or --url http://HOST:PORT", file=sys.stderr
        )
        return 2
    if args.url is not None and args.protocol == "cnnserve":
        print(
            "error: --url speaks the Open Inference Protocol (v2) only; use --server for cnnserve.v1",
            file=sys.stderr,
        )
        return 2
    images = _read_images(args.images)
    if images is None:
        return 2
    from cnnserve.serving.errors import ServingError
    from cnnserve.serving.grpc.client import ClassifyResult, CnnserveClient, ServerError

    result: ClassifyResult
    try:
        security = client_credentials.from_args(args)
        if args.url is not None:
            from cnnserve.serving.http.client import HttpServerError, OipHttpClient

            try:
                client = OipHttpClient(args.url, timeout=args.timeout, security=security)
                result = client.classify(images, args.model, top_k=args.top_k, version=args.version)
            except (HttpServerError, ValueError) as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
        elif args.protocol == "v2":
            from cnnserve.serving.grpc.oip_client import OipGrpcClient

            with OipGrpcClient(args.server, timeout=args.timeout, security=security) as oip_client:
                result = oip_client.classify(images, args.model, top_k=args.top_k, version=args.version)
        else:
            with CnnserveClient(args.server, timeout=args.timeout, security=security) as cnnserve_client:
                result = cnnserve_client.classify(images, args.model, top_k=args.top_k, version=args.version)
    except ServerError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
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
    from cnnserve.serving.errors import ServingError
    from cnnserve.serving.grpc.client import CnnserveClient, ServerError

    try:
        security = client_credentials.from_args(args)
        with CnnserveClient(args.server, timeout=args.timeout, security=security) as client:
            result = client.activations(
                images, args.model, layers=args.layers, version=args.version, mosaic=args.png is not None
            )
    except ServerError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except ServingError as error:  # the TLS files or the token cannot be read
        print(f"error: {error}", file=sys.stderr)
        return 2
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
