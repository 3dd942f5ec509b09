"""`cnnserve filters` and `cnnserve explain`: a layer's filters and heatmaps, from a server or a repository.

`--server ADDR` asks a running server through the client; `--repo REPO` computes the same thing in this
process with ONNX Runtime and no server. Both give the data plane's result values, printed the same way.
Only the standard library is imported here; numpy, gRPC and ONNX Runtime load inside the handlers, so
`cnnserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnserve.serving.security import client_credentials
from cnnserve.serving.settings import DEFAULT_INSIGHT_TIMEOUT_S

if TYPE_CHECKING:
    from cnnserve.serving.insight.explainer import ExplainOptions, ExplainResult, FiltersResult


def register(subparsers: argparse._SubParsersAction) -> None:
    filters = subparsers.add_parser(
        "filters",
        help="a Conv/Dense layer's kernel and bias, optionally drawn as a PNG mosaic of its filters",
        description="Print a layer's weights (Keras layout); optionally write the notebooks' filter mosaic.",
    )
    _add_source(filters)
    filters.add_argument("--layer", required=True, help="the Keras layer name, e.g. conv1")
    filters.add_argument(
        "--input-channel",
        type=int,
        default=-1,
        help="for a convolution not on RGB input: the input channel to draw (default -1: their mean)",
    )
    filters.add_argument("--png", type=Path, metavar="OUT", help="write the filter mosaic to this PNG file")
    filters.add_argument("--json", action="store_true", help="print the kernel and bias as one JSON object")
    filters.set_defaults(handler=run_filters)

    explain = subparsers.add_parser(
        "explain",
        help="which part of an image made the model answer a class: occlusion or Grad-CAM heatmaps",
        description="Explain the model's answer for each image with a heatmap at the model's input size.",
    )
    _add_source(explain)
    explain.add_argument("--method", choices=("occlusion", "gradcam"), default="occlusion")
    explain.add_argument(
        "--class",
        dest="target_class",
        type=int,
        default=None,
        metavar="C",
        help="the class index to explain (default: the top-1 class)",
    )
    explain.add_argument("--patch-size", type=int, default=None, help="occlusion patch side in pixels")
    explain.add_argument("--stride", type=int, default=None, help="occlusion stride in pixels")
    explain.add_argument(
        "--fill-value", type=float, default=0.0, help="occlusion fill, in the model's input scale (default 0)"
    )
    explain.add_argument(
        "--png",
        type=Path,
        metavar="OUT",
        help="write the heatmap over the image beside the image; with several images, OUT-<image name>.png",
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object per image")
    explain.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    explain.set_defaults(handler=run_explain)


def _add_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="ADDR", help="a cnnserve server, e.g. 127.0.0.1:8500")
    source.add_argument("--repo", type=Path, metavar="REPO", help="a model repository (runs in this process)")
    parser.add_argument("--model", required=True, help="the model name")
    parser.add_argument("--version", type=int, default=0, help="model version (default: the newest live one)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="with --repo: where ONNX Runtime runs (default: auto, CUDA when available)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_INSIGHT_TIMEOUT_S, help="with --server: seconds per call"
    )
    client_credentials.add_arguments(parser)


class CommandError(Exception):
    """A failure to report as one `error: ...` line."""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _rounded(values: Any) -> Any:
    import numpy as np

    return np.round(np.asarray(values, dtype=np.float64), 7).tolist()


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error}") from error


# -- filters ---------------------------------------------------------------------------------------------


def run_filters(args: argparse.Namespace) -> int:
    from cnnserve.serving.errors import ServingError

    try:
        result = _filters_from_server(args) if args.server else _filters_from_repo(args)
    except ServingError as error:
        return _fail(str(error))
    kernel, bias = result.filters.kernel, result.filters.bias
    try:
        if args.png:
            _write(args.png, result.mosaic_png)
    except CommandError as error:
        return _fail(str(error))
    if args.json:
        record = {
            "model": result.model,
            "version": result.version,
            "layer": result.filters.layer,
            "kernel_shape": list(kernel.shape),
            "bias_shape": list(bias.shape),
            "kernel": _rounded(kernel),
            "bias": _rounded(bias),
        }
        if args.png:
            record["png"] = str(args.png)
        print(json.dumps(record))
    else:
        print(
            f"{result.model} v{result.version} {result.filters.layer}: kernel {tuple(kernel.shape)} "
            f"[{kernel.min():.4g}, {kernel.max():.4g}], bias {tuple(bias.shape)} "
            f"[{bias.min():.4g}, {bias.max():.4g}]"
        )
        if args.png:
            print(f"filter mosaic ({kernel.shape[-1]} filters) written to {args.png}")
    return 0


def _filters_from_repo(args: argparse.Namespace) -> FiltersResult:
    from cnnserve.serving.insight.explainer import Insight
    from cnnserve.serving.model.repository import open_model_version

    model = open_model_version(args.repo, args.model, args.version or None)
    return Insight().get_filters(
        model, args.layer, mosaic=args.png is not None, input_channel=args.input_channel
    )


def _filters_from_server(args: argparse.Namespace) -> FiltersResult:
    from cnnserve.serving.grpc.client import CnnserveClient

    security = client_credentials.from_args(args)
    with CnnserveClient(args.server, timeout=args.timeout, security=security) as client:
        return client.filters(
            args.model,
            args.layer,
            version=args.version,
            input_channel=args.input_channel,
            mosaic=args.png is not None,
        )


# -- explain ---------------------------------------------------------------------------------------------


def _png_path(args: argparse.Namespace, index: int) -> Path | None:
    """OUT for one image; OUT-<image name>.png for several (OUT-<index>-<name>.png when names repeat)."""
    if args.png is None:
        return None
    if len(args.images) == 1:
        return args.png
    stems = [path.stem for path in args.images]
    name = stems[index] if len(set(stems)) == len(stems) else f"{index}-{stems[index]}"
    return args.png.with_name(f"{args.png.stem}-{name}{args.png.suffix or '.png'}")


def run_explain(args: argparse.Namespace) -> int:
    from cnnserve.serving.errors import ServingError
    from cnnserve.serving.insight.explainer import ExplainOptions

    for option in ("patch_size", "stride"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            return _fail(f"--{option.replace('_', '-')} must be positive, got {value}")
    options = ExplainOptions(
        method=args.method,
        target_class=args.target_class,
        patch_size=args.patch_size or 0,
        stride=args.stride or 0,
        fill_value=args.fill_value,
        overlay=args.png is not None,
    )
    try:
        explainer = _ServerExplainer(args, options) if args.server else _RepoExplainer(args, options)
    except ServingError as error:
        return _fail(str(error))
    try:
        for index, path in enumerate(args.images):
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CommandError(f"cannot read image {path}: {error}") from error
            try:
                result = explainer.explain(data)
            except ServingError as error:
                raise CommandError(f"image {path}: {error}") from error
            out = _png_path(args, index)
            if out is not None:
                _write(out, result.overlay_png)
            _print_explanation(args, path, result, out)
    except CommandError as error:
        return _fail(str(error))
    finally:
        explainer.close()
    return 0


def _print_explanation(args: argparse.Namespace, path: Path, result: ExplainResult, png: Path | None) -> None:
    heatmap = result.heatmap
    target = {"label": result.target_label, "index": result.target_index, "score": result.target_score}
    if args.json:
        record: dict[str, Any] = {
            "path": str(path),
            "model": result.model,
            "version": result.version,
            "method": result.method,
            "target": target,
            "heatmap_shape": list(heatmap.shape),
        }
        if png is not None:
            record["png"] = str(png)
        record["heatmap"] = _rounded(heatmap)
        print(json.dumps(record), flush=True)
        return
    print(
        f"{path}: {result.method} explains class {result.target_label} (index {result.target_index}, "
        f"score {result.target_score:.4f}); heatmap {heatmap.shape[0]}x{heatmap.shape[1]} "
        f"in [{heatmap.min():.4g}, {heatmap.max():.4g}]" + (f", written to {png}" if png is not None else ""),
        flush=True,
    )


class _RepoExplainer:
    """Explanations in this process: the repository's model on ONNX Runtime, no server."""

    def __init__(self, args: argparse.Namespace, options: ExplainOptions) -> None:
        from cnnserve.serving.insight.explainer import Insight
        from cnnserve.serving.model.preprocessing import PreprocessSpec
        from cnnserve.serving.model.repository import open_model_version
        from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

        self.model = open_model_version(args.repo, args.model, args.version or None)
        session_options = SessionOptions(device=args.device)
        self.runtime = ModelRuntime(self.model, session_options)
        self.spec = PreprocessSpec.from_model_config(self.model.config)
        self.insight = Insight(session_options)
        self.options = options

    def explain(self, data: bytes) -> ExplainResult:
        from cnnserve.serving.model.preprocessing import preprocess_encoded

        image = preprocess_encoded(data, self.spec)
        return self.insight.explain(
            self.model, image, self.options, self.runtime.classify, self.runtime.max_batch_size
        )

    def close(self) -> None:
        pass


class _ServerExplainer:
    """Explanations asked of a running server with the `Explain` RPC."""

    def __init__(self, args: argparse.Namespace, options: ExplainOptions) -> None:
        from cnnserve.serving.grpc.client import CnnserveClient

        self.args = args
        self.options = options
        self.client = CnnserveClient(
            args.server, timeout=args.timeout, security=client_credentials.from_args(args)
        )

    def explain(self, data: bytes) -> ExplainResult:
        return self.client.explain(data, self.args.model, self.options, version=self.args.version)

    def close(self) -> None:
        self.client.close()
