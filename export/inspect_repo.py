"""What is in a model repository: models, versions, tensors, activation layers, parity figures, sizes.

Reads the repository the way serving does (`cnnserve.serving.model.repository`), so `cnnserve inspect` shows
exactly what a server would load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnserve.protos import model_config_pb2
from cnnserve.serving.model import repository


class InspectError(Exception):
    """The path is not a model repository or a model folder inside one."""


@dataclass(frozen=True)
class Target:
    repo: Path
    models: tuple[str, ...]


def resolve(path: Path) -> Target:
    """`REPO` (every model) or `REPO/MODEL` (one model), told apart by the model folder's config.pbtxt."""
    if (path / repository.CONFIG_FILENAME).is_file():
        return Target(path.parent, (path.name,))
    if not path.is_dir():
        raise InspectError(f"{path} is neither a model repository nor a model folder")
    try:
        models = repository.list_models(path)
    except repository.RepositoryError as error:
        raise InspectError(str(error)) from error
    return Target(path, tuple(models))


def _dims(values: Any) -> str:
    return "×".join(str(int(d)) for d in values) or "scalar"


def describe_model(repo: Path, name: str) -> dict[str, Any]:
    """A JSON-ready description of one model and each of its versions."""
    model_dir = repo / name
    try:
        config = repository.read_model_config(model_dir)
        labels = list(repository.read_labels(model_dir, config))
    except repository.RepositoryError as error:
        return {"name": name, "error": str(error)}
    versions = repository.list_versions(model_dir)
    live = repository.live_versions(config, versions)
    described = []
    for number in versions:
        folder = model_dir / str(number)
        parity = repository.read_parity(folder)
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
        described.append(
            {"version": number, "live": number in live, "files": files, "parity": _figures(parity)}
        )
    return {
        "name": name,
        "zoo_model": config.zoo_model,
        "platform": config.platform,
        "input": {
            "name": config.input.name,
            "dtype": model_config_pb2.DataType.Name(config.input.data_type),
            "dims": list(config.input.dims),
        },
        "output": {
            "name": config.output.name,
            "dtype": model_config_pb2.DataType.Name(config.output.data_type),
            "dims": list(config.output.dims),
            "kind": model_config_pb2.OutputKind.Name(config.output_kind),
        },
        "num_classes": config.num_classes,
        "labels": labels,
        "max_batch_size": config.max_batch_size,
        "scaled_decoding": config.preprocessing.scaled_decoding,
        "activation_layers": [
            {"name": a.name, "kind": a.kind, "output": a.output_name, "dims": list(a.dims)}
            for a in config.activation_layers
        ],
        "activations_file": config.activations_filename or config.execution.model_filename or "model.onnx",
        "layers_with_weights": [w.layer for w in config.layer_weights],
        "gradcam": (
            {"file": config.gradcam.filename, "layer": config.gradcam.layer}
            if config.gradcam.filename
            else {"unavailable": config.gradcam.unavailable_reason or "not exported"}
        ),
        "versions": described,
    }


def _figures(parity: dict[str, Any]) -> dict[str, Any]:
    """The parity figures worth a glance: output error, top-1, worst layer, end to end, variants."""
    if not parity:
        return {}
    output = parity.get("output", {})
    layers = parity.get("activations", {})
    worst = max(layers.items(), key=lambda item: item[1].get("max_rel_error", 0.0), default=None)
    figures: dict[str, Any] = {
        "passed": parity.get("passed"),
        "samples": parity.get("held_out", {}).get("samples"),
        "output_max_abs_error": output.get("max_abs_error"),
        "top1_agreement": output.get("top1_agreement"),
    }
    if worst is not None:
        figures["worst_layer"] = {"name": worst[0], "max_rel_error": worst[1].get("max_rel_error")}
    e2e = parity.get("end_to_end", {})
    figures["end_to_end_top1"] = {
        fmt: value.get("top1_agreement") for fmt, value in e2e.items() if isinstance(value, dict)
    }
    scaled = parity.get("scaled_decoding")
    if scaled:
        figures["scaled_decoding"] = {
            key: scaled.get(key)
            for key in ("enabled", "reason", "images", "top1_agreement", "max_abs_probability_difference")
        }
    overhead = parity.get("activation_outputs", {})
    if overhead:
        figures["activation_outputs_overhead_pct"] = overhead.get("overhead_pct")
    for key, value in parity.get("variants", {}).items():
        figures[key] = {
            "top1_agreement_vs_fp32": value.get("top1_agreement_vs_fp32"),
            "accuracy_change_points": value.get("accuracy_change_points"),
            "size_ratio_vs_fp32": value.get("size_ratio_vs_fp32"),
            "cpu_throughput_ratio_vs_fp32": value.get("cpu_throughput_ratio_vs_fp32"),
        }
    gradcam = parity.get("gradcam", {})
    if gradcam.get("available"):
        figures["gradcam_max_abs_error"] = gradcam.get("max_abs_error_normalised_map")
    return figures


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _fmt(value: Any, spec: str = ".2e") -> str:
    return format(value, spec) if isinstance(value, int | float) else "n/a"


def render_text(models: list[dict[str, Any]], repo: Path) -> str:
    """A human-readable report of `describe_model` results."""
    lines = [f"repository {repo}: {len(models)} model(s)"]
    for model in models:
        lines.append("")
        if "error" in model:
            lines.append(f"{model['name']}: error: {model['error']}")
            continue
        lines.append(f"{model['name']} (zoo: {model['zoo_model'] or '-'}, {model['platform']})")
        i, o = model["input"], model["output"]
        lines.append(
            f"  input   {i['name']} {i['dtype']} [batch ≤ {model['max_batch_size']}]×{_dims(i['dims'])}"
        )
        lines.append(
            f"  output  {o['name']} {o['dtype']} {_dims(o['dims'])} {o['kind']} → "
            f"{model['num_classes']} classes: "
            + ", ".join(model["labels"][:10])
            + (" …" if len(model["labels"]) > 10 else "")
        )
        acts = ", ".join(f"{a['name']} ({a['kind']} {_dims(a['dims'])})" for a in model["activation_layers"])
        lines.append(f"  activation layers (in {model['activations_file']}): {acts or 'none'}")
        lines.append(f"  layers with weights: {', '.join(model['layers_with_weights']) or 'none'}")
        lines.append(
            "  decoding: JPEGs at the smallest DCT scale ≥ 2× the input, then resized"
            if model["scaled_decoding"]
            else "  decoding: every image in full, then resized"
        )
        gradcam = model["gradcam"]
        lines.append(
            f"  grad-cam: {gradcam['file']} on {gradcam['layer']}"
            if "file" in gradcam
            else f"  grad-cam: unavailable ({gradcam['unavailable']})"
        )
        if not model["versions"]:
            lines.append("  no versions")
        for version in model["versions"]:
            files = ", ".join(f"{name} {_size(size)}" for name, size in version["files"].items())
            lines.append(f"  version {version['version']}{' (live)' if version['live'] else ''}: {files}")
            figures = version["parity"]
            if not figures:
                lines.append("    no parity record")
                continue
            lines.append(
                f"    parity on {figures.get('samples')} held-out samples: output max abs error "
                f"{_fmt(figures.get('output_max_abs_error'))}, top-1 agreement "
                f"{_fmt(figures.get('top1_agreement'), '.2%')}"
            )
            worst = figures.get("worst_layer")
            if worst:
                lines.append(
                    f"    worst activation layer: {worst['name']} "
                    f"(max rel error {_fmt(worst['max_rel_error'])})"
                )
            e2e = figures.get("end_to_end_top1") or {}
            if e2e:
                lines.append(
                    "    end to end from image files, top-1 agreement: "
                    + ", ".join(f"{fmt} {_fmt(value, '.2%')}" for fmt, value in e2e.items())
                )
            scaled = figures.get("scaled_decoding")
            if scaled and scaled.get("top1_agreement") is not None:
                lines.append(
                    f"    scaled JPEG decoding on {scaled['images']} photo-sized JPEGs: top-1 agreement "
                    f"{_fmt(scaled['top1_agreement'], '.2%')}, max abs probability difference "
                    f"{_fmt(scaled['max_abs_probability_difference'])} ({scaled['reason']})"
                )
            if "activation_outputs_overhead_pct" in figures:
                lines.append(
                    f"    activation outputs in the classification graph would cost "
                    f"{_fmt(figures['activation_outputs_overhead_pct'], '+.1f')}%"
                )
            for key in ("fp16", "int8"):
                if key in figures:
                    v = figures[key]
                    lines.append(
                        f"    {key}: top-1 vs fp32 {_fmt(v['top1_agreement_vs_fp32'], '.2%')}, accuracy "
                        f"{_fmt(v['accuracy_change_points'], '+.2f')} points, "
                        f"size ×{_fmt(v['size_ratio_vs_fp32'], '.2f')}, "
                        f"CPU throughput ×{_fmt(v['cpu_throughput_ratio_vs_fp32'], '.2f')}"
                    )
            if "gradcam_max_abs_error" in figures:
                lines.append(
                    f"    grad-cam map max abs error vs TensorFlow {_fmt(figures['gradcam_max_abs_error'])}"
                )
    return "\n".join(lines)


def inspect_path(path: Path) -> tuple[Path, list[dict[str, Any]]]:
    target = resolve(path)
    return target.repo, [describe_model(target.repo, name) for name in target.models]
