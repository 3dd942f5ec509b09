"""`cnnserve export` and `cnnserve inspect`: standard library only at import, the export wing in handlers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnserve.export.photos import PHOTOS
from cnnserve.serving.settings import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="convert a run directory to ONNX, verify parity and write it into a model repository",
        description="Convert RUN_DIR/model.keras to ONNX with tf2onnx, verify on real held-out samples, edge "
        "cases, every activation layer and real image files that ONNX Runtime computes what Keras computes, "
        "and write REPO/<model>/config.pbtxt, labels.txt and <version>/model.onnx + parity.json atomically. "
        "A failed check leaves the repository untouched and keeps its report next to RUN_DIR.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a `cnnserve train` run directory")
    export.add_argument("--repo", required=True, metavar="REPO", help="model repository folder")
    export.add_argument("--name", metavar="NAME", help="model name in the repository (default: the zoo name)")
    export.add_argument("--version", type=int, metavar="N", help="version number (default: next free)")
    export.add_argument("--force", action="store_true", help="replace an existing --version")
    export.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default 17)")
    export.add_argument(
        "--samples", type=int, default=256, metavar="N", help="held-out samples for parity (default 256)"
    )
    export.add_argument(
        "--image-samples",
        type=int,
        default=8,
        metavar="N",
        help="dataset images written as PNG and JPEG for the end-to-end check (default 8)",
    )
    export.add_argument(
        "--photo-samples",
        type=int,
        default=len(PHOTOS),
        metavar="N",
        help="photo-sized JPEGs made from real photographs for the scaled-decoding check "
        f"(default all {len(PHOTOS)}; 0 leaves scaled decoding off)",
    )
    export.add_argument(
        "--no-scaled-decoding",
        action="store_true",
        help="decode every image in full when served, even where the scaled-decoding check holds",
    )
    export.add_argument(
        "--scaled-max-probability-difference",
        type=float,
        default=1e-2,
        metavar="P",
        help="turn scaled JPEG decoding on only if no class probability on the photo check set moves more "
        "than this (and top-1 always agrees; default 1e-2)",
    )
    export.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (float16, for GPUs)")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ int8)")
    export.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="refuse an fp16/int8 variant losing more test accuracy than this (default 1.0 point)",
    )
    export.add_argument(
        "--max-abs-error", type=float, default=1e-4, help="parity bound on probabilities (default 1e-4)"
    )
    export.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        metavar="N",
        help=f"config max_batch_size (default {DEFAULT_MAX_BATCH_SIZE})",
    )
    export.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        metavar="US",
        help=f"dynamic batching: longest wait for a batch to fill (default {DEFAULT_MAX_QUEUE_DELAY_US} µs)",
    )
    export.add_argument("--no-gradcam", action="store_true", help="do not export the Grad-CAM gradient graph")
    export.add_argument("--json", action="store_true", help="print the parity record as JSON")
    export.set_defaults(handler=export_command)

    inspect = subparsers.add_parser(
        "inspect",
        help="show what is in a model repository",
        description="List models, versions, inputs, outputs, activation layers, parity figures and sizes.",
    )
    inspect.add_argument("path", metavar="REPO[/MODEL]", help="a model repository or one model folder in it")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=inspect_command)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def export_command(args: argparse.Namespace) -> int:
    from cnnserve.export.errors import ExportError
    from cnnserve.export.exporter import ExportOptions, export_run
    from cnnserve.export.verify import Thresholds

    options = ExportOptions(
        model_name=args.name,
        version=args.version,
        force=args.force,
        opset=args.opset,
        samples=args.samples,
        image_samples=args.image_samples,
        photo_samples=args.photo_samples,
        scaled_decoding=not args.no_scaled_decoding,
        fp16=args.fp16,
        int8=args.int8,
        max_batch_size=args.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_us,
        gradcam=not args.no_gradcam,
        thresholds=Thresholds(
            max_abs_error=args.max_abs_error,
            max_accuracy_drop=args.max_accuracy_drop,
            scaled_decoding_max_abs_probability_difference=args.scaled_max_probability_difference,
        ),
    )
    try:
        result = export_run(Path(args.run_dir), Path(args.repo), options)
    except ExportError as error:
        return _error(str(error))
    if args.json:
        print(json.dumps(result.parity, indent=2))
        return 0
    print(summary(result.model_name, result.version, result.version_dir, result.parity))
    return 0


def summary(name: str, version: int, version_dir: Path, parity: dict) -> str:
    """The parity figures of one export, a few lines for people."""
    output = parity["output"]
    layers = parity.get("activations", {})
    worst = max(layers.items(), key=lambda item: item[1]["max_rel_error"], default=None)
    lines = [
        f"exported {name} version {version} to {version_dir}",
        f"  parity on {parity['held_out']['samples']} held-out samples + edge cases: output max abs error "
        f"{output['max_abs_error']:.2e}, top-1 agreement {output['top1_agreement']:.2%}",
    ]
    if worst is not None:
        lines.append(
            f"  {len(layers)} activation layers, worst {worst[0]}: "
            f"max rel error {worst[1]['max_rel_error']:.2e}"
        )
    e2e = {k: v for k, v in parity.get("end_to_end", {}).items() if isinstance(v, dict)}
    if e2e:
        lines.append(
            "  end to end from image files (serving preprocessing + ONNX vs training preprocessing + Keras): "
            + ", ".join(
                f"{check} top-1 {v['top1_agreement']:.2%} (input tensors differ by at most "
                f"{v['max_abs_input_difference']:.2g}, bound {v['bound']['max_input_difference']:g})"
                for check, v in e2e.items()
            )
        )
    scaled = parity.get("scaled_decoding")
    if scaled:
        lines.append(f"  scaled JPEG decoding {'on' if scaled['enabled'] else 'off'}: {scaled['reason']}")
        if "top1_agreement" in scaled:
            lines.append(
                f"    on {scaled['images']} photo-sized JPEGs vs training preprocessing + Keras: top-1 "
                f"{scaled['top1_agreement']:.2%}, max abs probability difference "
                f"{scaled['max_abs_probability_difference']:.2e}, mean abs input difference "
                f"{scaled['mean_abs_input_difference']:.2e}"
            )
    overhead = parity.get("activation_outputs", {})
    if overhead:
        where = "activations.onnx" if overhead.get("separate_activations_graph") else "model.onnx"
        lines.append(
            f"  activation outputs would cost {overhead['overhead_pct']:+.1f}% at batch {overhead['batch']}: "
            f"they live in {where}"
        )
    for key, value in parity.get("variants", {}).items():
        lines.append(
            f"  {key}: top-1 vs fp32 {value['top1_agreement_vs_fp32']:.2%}, test accuracy "
            f"{value['test_accuracy_fp32']:.4f} → {value['test_accuracy']:.4f} "
            f"({value['accuracy_change_points']:+.2f} points), size ×{value['size_ratio_vs_fp32']:.2f}, "
            f"CPU throughput ×{value['cpu_throughput_ratio_vs_fp32']:.2f}"
        )
    gradcam = parity.get("gradcam", {})
    if gradcam.get("available"):
        lines.append(
            f"  grad-cam on {gradcam['layer']}: normalised map max abs error vs TensorFlow "
            f"{gradcam['max_abs_error_normalised_map']:.2e}"
        )
    elif gradcam:
        lines.append(f"  grad-cam unavailable: {gradcam.get('reason')}")
    return "\n".join(lines)


def inspect_command(args: argparse.Namespace) -> int:
    from cnnserve.export.inspect_repo import InspectError, inspect_path, render_text

    try:
        repo, models = inspect_path(Path(args.path))
    except InspectError as error:
        return _error(str(error))
    if args.json:
        print(json.dumps({"repository": str(repo), "models": models}, indent=2))
    else:
        print(render_text(models, repo))
    return 0 if all("error" not in model for model in models) else 1
