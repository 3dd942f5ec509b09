"""The Open Inference Protocol's HTTP/REST bodies <-> the core's values: JSON tensors and binary data.

An inference request is a JSON document, optionally followed by binary tensor data (Triton's binary
tensor extension): the header `Inference-Header-Content-Length` says how long the JSON part is, and each
input with a `binary_data_size` parameter takes that many bytes of what follows, in input order. Outputs
come back as JSON `data`, or as binary data after the JSON when the request asks for it (the request
parameter `binary_data_output`, or an output's `binary_data`). BYTES elements in JSON are strings; an
input with the parameter `"content_type": "base64"` carries them base64-encoded (an encoded image in plain
JSON, for curl). Every malformed body is an InvalidRequestError naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnserve.serving.core import oip_tensors
from cnnserve.serving.core.oip import (
    BYTES,
    DATATYPE_SIZES,
    FP32,
    InferInput,
    InferOutput,
    InferRequest,
    InferResult,
    RequestedOutput,
)
from cnnserve.serving.errors import InvalidRequestError

HEADER_LENGTH = "inference-header-content-length"  # request headers arrive with lower-case names
HEADER_LENGTH_OUT = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class HttpInferRequest:
    request: InferRequest
    binary_outputs: frozenset[str]  # the outputs to answer as binary data


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _parameters(holder: Mapping[str, Any], what: str) -> dict[str, Any]:
    return _object(holder.get("parameters", {}), f"{what} parameters")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{what} must be an integer, not {json.dumps(value)[:40]}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be true or false, not {json.dumps(value)[:40]}")
    return value


def parse_infer(model: str, version: str, body: bytes, headers: Mapping[str, str]) -> HttpInferRequest:
    """An HTTP inference request body (JSON, or JSON + binary data) as the core's InferRequest."""
    header_length = headers.get(HEADER_LENGTH)
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not header_length.isdigit():
            raise InvalidRequestError(f"{HEADER_LENGTH} must be a byte count, not {header_length[:40]!r}")
        length = int(header_length)
        if length > len(body):
            raise InvalidRequestError(
                f"{HEADER_LENGTH} is {length} but the body holds only {len(body)} bytes"
            )
        json_part, binary = body[:length], memoryview(body)[length:]
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequestError(f"the request body is not valid JSON: {error}") from error
    document = _object(document, "the request")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequestError("the request id must be a string")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("the request must have a non-empty list of inputs")
    inputs = []
    offset = 0
    for index, raw_input in enumerate(raw_inputs):
        tensor, used = _input(_object(raw_input, f"input {index}"), binary[offset:], index)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - offset} bytes of binary data follow the JSON that no binary_data_size claims"
        )
    parameters = _parameters(document, "request")
    binary_default = _bool(parameters.get("binary_data_output", False), "binary_data_output")
    outputs = []
    binary_outputs = set()
    raw_outputs = document.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidRequestError("the request's outputs must be a list")
    for index, raw_output in enumerate(raw_outputs):
        output = _object(raw_output, f"output {index}")
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError(f"output {index} has no name")
        parameters = _parameters(output, f"output {name!r}")
        count = _int(parameters.get("classification", 0), f"output {name!r}: classification")
        outputs.append(RequestedOutput(name, count))
        if _bool(parameters.get("binary_data", binary_default), f"output {name!r}: binary_data"):
            binary_outputs.add(name)
    request = InferRequest(model, version, request_id, tuple(inputs), tuple(outputs))
    if not outputs and binary_default:
        binary_outputs.add("*")
    return HttpInferRequest(request, frozenset(binary_outputs))


def _input(document: dict[str, Any], binary: memoryview, index: int) -> tuple[InferInput, int]:
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"input {index} has no name")
    datatype = document.get("datatype")
    if datatype != BYTES and datatype not in DATATYPE_SIZES:
        raise InvalidRequestError(
            f"input {name!r} has datatype {json.dumps(datatype)[:40]}, not one of the protocol's"
        )
    shape = document.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidRequestError(f"input {name!r}: shape must be a list of integers")
    parameters = _parameters(document, f"input {name!r}")
    size = parameters.get("binary_data_size")
    if size is not None:
        size = _int(size, f"input {name!r}: binary_data_size")
        if size < 0 or size > len(binary):
            raise InvalidRequestError(
                f"input {name!r}: binary_data_size {size} is past the end of the body "
                f"({len(binary)} bytes left)"
            )
        return oip_tensors.input_from_raw(name, datatype, shape, binary[:size]), size
    if "data" not in document:
        raise InvalidRequestError(f"input {name!r} has neither data nor a binary_data_size parameter")
    return _json_input(name, datatype, tuple(shape), document["data"], parameters), 0


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_input(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, parameters: Mapping[str, Any]
) -> InferInput:
    dims = oip_tensors.check_shape(name, shape)
    count = oip_tensors.element_count(dims)
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidRequestError(
            f"input {name!r}: shape {list(dims)} needs {count} elements, data holds {len(flat)}"
        )
    if datatype == BYTES:
        base64_encoded = parameters.get("content_type") == "base64"
        elements = []
        for i, element in enumerate(flat):
            if not isinstance(element, str):
                raise InvalidRequestError(f"input {name!r}: BYTES element {i} must be a string", i)
            if base64_encoded:
                try:
                    elements.append(base64.b64decode(element, validate=True))
                except binascii.Error as error:
                    message = f"input {name!r}: element {i} is not valid base64: {error}"
                    raise InvalidRequestError(message, i) from error
            else:
                elements.append(element.encode("utf-8"))
        return InferInput(name, datatype, dims, elements)
    if datatype != FP32:
        return InferInput(name, datatype, dims, np.empty(0))  # the core names what the model takes
    values = np.asarray(flat)
    if values.dtype.kind not in "iuf":
        raise InvalidRequestError(f"input {name!r}: FP32 data must be numbers")
    return InferInput(name, datatype, dims, values.astype(np.float32).reshape(dims))


def infer_response(result: InferResult, binary_outputs: frozenset[str]) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary data follows it (else None)."""
    outputs = []
    tail = []
    for output in result.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.name in binary_outputs or "*" in binary_outputs:
            raw = oip_tensors.output_raw(output.datatype, output.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_data(output)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": result.model, "model_version": result.version}
    if result.id:
        document["id"] = result.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)


def _json_data(output: InferOutput) -> list[Any]:
    if output.datatype == BYTES:
        return [bytes(element).decode("utf-8", errors="replace") for element in output.data]
    return np.asarray(output.data, dtype=np.float32).reshape(-1).tolist()


def tensor_metadata(tensors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """An optional JSON object body (empty = {})."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequestError(f"the {what} body is not valid JSON: {error}") from error
    return _object(document, f"the {what} body")
