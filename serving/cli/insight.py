"""`cnnserve filters` and `cnnserve explain`: a layer's filters and heatmaps, from a server or a repository.

`--server ADDR` asks a running server over gRPC; `--repo REPO` computes the same thing in this process with
ONNX Runtime and no server. Only the standard library is imported here; numpy, gRPC and ONNX Runtime are
imported inside the handlers so `cnnserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 120.0
# Kernels of large Dense layers exceed gRPC's default 4 MiB receive limit.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


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
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="with --server: seconds per call"
    )


class CommandError(Exception):
    """A failure to report as one `error: ...` line."""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _rounded(values: Any) -> Any:
    import numpy as np

    return np.round(np.asarray(values, dtype=np.float64), 7).tolist()


# ---------------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------------


def run_filters(args: argparse.Namespace) -> int:
    try:
        result = _filters_from_server(args) if args.server else _filters_from_repo(args)
    except CommandError as error:
        return _fail(str(error))
    model, version, layer, kernel, bias, png = result
    if args.png:
        _write(args.png, png)
    if args.json:
        record = {
            "model": model,
            "version": version,
            "layer": layer,
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
            f"{model} v{version} {layer}: kernel {tuple(kernel.shape)} "
            f"[{kernel.min():.4g}, {kernel.max():.4g}], bias {tuple(bias.shape)} "
            f"[{bias.min():.4g}, {bias.max():.4g}]"
        )
        if args.png:
            print(f"filter mosaic ({kernel.shape[-1]} filters) written to {args.png}")
    return 0


def _filters_from_repo(args: argparse.Namespace):
    from cnnserve.serving.insight.filters import filters as insight
    from cnnserve.serving.insight.filters import explainer as insight_service
    from cnnserve.serving.model import repository

    try:
        model = repository.open_model_version(args.repo, args.model, args.version or None)
        result = insight_service.Insight().get_filters(
            model, args.layer, mosaic=args.png is not None, input_channel=args.input_channel
        )
    except (repository.RepositoryError, insight.InsightError) as error:
        raise CommandError(str(error)) from error
    return (
        model.name,
        model.version,
        args.layer,
        result.filters.kernel,
        result.filters.bias,
        result.mosaic_png,
    )


def _filters_from_server(args: argparse.Namespace):
    import grpc

    from cnnserve.protos import inference_pb2
    from cnnserve.serving.grpc.converters import tensor_array

    request = inference_pb2.FiltersRequest(
        model=args.model,
        version=args.version,
        layer=args.layer,
        mosaic=args.png is not None,
        input_channel=args.input_channel,
    )
    response = _call(args, "GetFilters", request, grpc)
    return (
        response.model,
        response.version,
        response.layer,
        tensor_array(response.kernel),
        tensor_array(response.bias),
        response.mosaic_png,
    )


def _call(args: argparse.Namespace, method: str, request: Any, grpc: Any) -> Any:
    from cnnserve.protos import inference_pb2_grpc

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(args.server, options=options) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=args.timeout)
        except grpc.RpcError as error:
            raise CommandError(f"{error.code().name}: {error.details()}") from error


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error}") from error


# ---------------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------------


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
    for option in ("patch_size", "stride"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            return _fail(f"--{option.replace('_', '-')} must be positive, got {value}")
    try:
        explainer = _ServerExplainer(args) if args.server else _RepoExplainer(args)
        for index, path in enumerate(args.images):
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CommandError(f"cannot read image {path}: {error}") from error
            record = explainer.explain(path, data)
            out = _png_path(args, index)
            if out is not None:
                _write(out, record.pop("overlay_png"))
                record["png"] = str(out)
            else:
                record.pop("overlay_png")
            _print_explanation(args, record)
    except CommandError as error:
        return _fail(str(error))
    return 0


def _print_explanation(args: argparse.Namespace, record: dict[str, Any]) -> None:
    heatmap = record.pop("heatmap_array")
    if args.json:
        record["heatmap"] = _rounded(heatmap)
        print(json.dumps(record), flush=True)
        return
    target = record["target"]
    print(
        f"{record['path']}: {record['method']} explains class {target['label']} (index {target['index']}, "
        f"score {target['score']:.4f}); heatmap {heatmap.shape[0]}x{heatmap.shape[1]} "
        f"in [{heatmap.min():.4g}, {heatmap.max():.4g}]"
        + (f", written to {record['png']}" if "png" in record else ""),
        flush=True,
    )


class _RepoExplainer:
    """Explanations in this process: the repository's model on ONNX Runtime, no server."""

    def __init__(self, args: argparse.Namespace) -> None:
        from cnnserve.serving.insight.filters import explainer as insight_service
        from cnnserve.serving.model import preprocessing
        from cnnserve.serving.model import repository
        from cnnserve.serving.model import runtime

        self.args = args
        try:
            self.model = repository.open_model_version(args.repo, args.model, args.version or None)
            options = runtime.SessionOptions(device=args.device)
            self.runtime = runtime.ModelRuntime(self.model, options)
            self.spec = preprocessing.PreprocessSpec.from_model_config(self.model.config)
        except (repository.RepositoryError, runtime.ModelLoadError, runtime.DeviceUnavailableError) as error:
            raise CommandError(str(error)) from error
        self.insight = insight_service.Insight(options)
        self.options = insight_service.ExplainOptions(
            method=args.method,
            target_class=args.target_class,
            patch_size=args.patch_size or 0,
            stride=args.stride or 0,
            fill_value=args.fill_value,
            overlay=args.png is not None,
        )

    def explain(self, path: Path, data: bytes) -> dict[str, Any]:
        from cnnserve.serving.insight.filters import filters as insight
        from cnnserve.serving.model import preprocessing

        try:
            image = preprocessing.preprocess_encoded(data, self.spec)
            result = self.insight.explain(
                self.model, image, self.options, self.runtime.classify, self.runtime.max_batch_size
            )
        except preprocessing.ImageDecodeError as error:
            raise CommandError(f"image {path}: {error}") from error
        except insight.InsightError as error:
            raise CommandError(str(error)) from error
        return {
            "path": str(path),
            "model": result.model,
            "version": result.version,
            "method": result.method,
            "target": {
                "label": result.target_label,
                "index": result.target_index,
                "score": result.target_score,
            },
            "heatmap_shape": list(result.heatmap.shape),
            "heatmap_array": result.heatmap,
            "overlay_png": result.overlay_png,
        }


class _ServerExplainer:
    """Explanations asked of a running server with the `Explain` RPC."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def explain(self, path: Path, data: bytes) -> dict[str, Any]:
        import grpc

        from cnnserve.protos import inference_pb2
        from cnnserve.serving.grpc.converters import tensor_array

        args = self.args
        request = inference_pb2.ExplainRequest(
            model=args.model,
            version=args.version,
            image=inference_pb2.Image(encoded=data),
            method=inference_pb2.GRADCAM if args.method == "gradcam" else inference_pb2.OCCLUSION,
            overlay=args.png is not None,
            occlusion=inference_pb2.OcclusionOptions(
                patch_size=args.patch_size or 0, stride=args.stride or 0, fill_value=args.fill_value
            ),
        )
        if args.target_class is not None:
            request.target_class = args.target_class
            request.has_target_class = True
        try:
            response = _call(args, "Explain", request, grpc)
        except CommandError as error:
            raise CommandError(f"image {path}: {error}") from error
        heatmap = tensor_array(response.heatmap)
        return {
            "path": str(path),
            "model": response.model,
            "version": response.version,
            "method": "gradcam" if response.method == inference_pb2.GRADCAM else "occlusion",
            "target": {
                "label": response.target.label,
                "index": response.target.index,
                "score": response.target.score,
            },
            "heatmap_shape": list(heatmap.shape),
            "heatmap_array": heatmap,
            "overlay_png": response.overlay_png,
        }
