"""Triton's own Python clients against a running cnnserve: runs in the tritonclient environment.

    python tritonclient_checks.py GRPC_ADDRESS HTTP_ADDRESS MODEL TENSORS.npy PNG...

Prints one JSON document: for each of tritonclient.grpc and tritonclient.http, what the client saw
(health, metadata, config, FP32 and BYTES inference, the classification extension, an activation output,
statistics, the repository index, unload/load). Imports nothing of cnnserve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _error(call: Any) -> str:
    try:
        call()
    except InferenceServerException as error:
        return f"{error.status()}|{error.message()}"
    return ""


def check(module: Any, url: str, model: str, tensors: np.ndarray, pngs: list[bytes]) -> dict[str, Any]:
    client = module.InferenceServerClient(url)
    out: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_ready": client.is_model_ready(model, "1"),
    }
    metadata = (
        client.get_model_metadata(model, as_json=True)
        if module is grpcclient
        else client.get_model_metadata(model)
    )
    config = (
        client.get_model_config(model, as_json=True)
        if module is grpcclient
        else client.get_model_config(model)
    )
    config = config.get("config", config)
    out["metadata"] = metadata
    out["config"] = {k: config.get(k) for k in ("name", "platform", "max_batch_size", "input", "output")}

    def infer(inputs: list[Any], outputs: list[Any] | None = None, **kwargs: Any) -> Any:
        return client.infer(model, inputs, outputs=outputs, **kwargs)

    fp32 = module.InferInput("input", list(tensors.shape), "FP32")
    fp32.set_data_from_numpy(tensors)
    result = infer([fp32], request_id="req-42")
    response = result.get_response(as_json=True) if module is grpcclient else result.get_response()
    out["fp32_probabilities"] = result.as_numpy("probabilities").tolist()
    out["fp32_id"] = response["id"]
    out["fp32_version"] = response["model_version"]

    encoded = np.array(pngs, dtype=np.object_)
    images = module.InferInput("input", [len(pngs)], "BYTES")
    images.set_data_from_numpy(encoded)
    out["bytes_probabilities"] = infer([images]).as_numpy("probabilities").tolist()

    top3 = module.InferRequestedOutput("probabilities", class_count=3)
    out["classification"] = [
        [entry.decode() for entry in row]
        for row in infer([images], [top3]).as_numpy("probabilities").tolist()
    ]
    both = [module.InferRequestedOutput("dense1"), module.InferRequestedOutput("probabilities")]
    result = infer([fp32], both, model_version="1")
    out["dense1_shape"] = list(result.as_numpy("dense1").shape)
    out["with_dense1_probabilities"] = result.as_numpy("probabilities").tolist()

    stats = (
        client.get_inference_statistics(model, as_json=True)
        if module is grpcclient
        else client.get_inference_statistics(model)
    )
    out["inference_count"] = int(stats["model_stats"][0]["inference_count"])
    index = (
        client.get_model_repository_index(as_json=True)
        if module is grpcclient
        else client.get_model_repository_index()
    )
    out["index"] = index.get("models", index) if isinstance(index, dict) else index

    out["unknown_model"] = _error(lambda: client.infer("no_such_model", [fp32]))
    out["unknown_version"] = _error(lambda: client.infer(model, [fp32], model_version="9"))
    wrong = module.InferInput("input", [1, 28, 28], "FP32")
    wrong.set_data_from_numpy(tensors[:1, :, :, 0])
    out["wrong_shape"] = _error(lambda: client.infer(model, [wrong]))
    bad = module.InferInput("input", [2], "BYTES")
    bad.set_data_from_numpy(np.array([pngs[0], b"not an image"], dtype=np.object_))
    out["bad_image"] = _error(lambda: client.infer(model, [bad]))

    client.unload_model(model)
    out["ready_after_unload"] = client.is_model_ready(model)
    out["infer_after_unload"] = _error(lambda: client.infer(model, [fp32]))
    client.load_model(model)
    out["ready_after_load"] = client.is_model_ready(model)
    out["infer_after_load"] = infer([fp32]).as_numpy("probabilities").shape[0]
    return out


def main() -> None:
    grpc_address, http_address, model, tensors_path, *png_paths = sys.argv[1:]
    tensors = np.load(tensors_path)
    pngs = [Path(path).read_bytes() for path in png_paths]
    results = {
        "grpc": check(grpcclient, grpc_address, model, tensors, pngs),
        "http": check(httpclient, http_address, model, tensors, pngs),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
