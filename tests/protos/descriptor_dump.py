"""Print the Open Inference Protocol's messages, enums and RPCs of one set of generated modules as JSON.

Runs in two interpreters: cnnserve's (`cnnserve`: protos/inference/) and the tritonclient virtual
environment (`tritonclient`: Triton's own modules), so it imports nothing of cnnserve at module level.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _message(descriptor: Any, out: dict[str, Any]) -> None:
    out[descriptor.full_name] = {
        field.name: [field.number, field.type, _label(field), _type_name(field)]
        for field in descriptor.fields
    }
    for nested in descriptor.nested_types:
        _message(nested, out)
    for enum in descriptor.enum_types:
        out[enum.full_name] = {value.name: value.number for value in enum.values}


def _label(field: Any) -> str:
    if getattr(field, "is_repeated", None) is not None:
        return "repeated" if field.is_repeated else "single"
    return "repeated" if field.label == field.LABEL_REPEATED else "single"


def _type_name(field: Any) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return ""


def dump(files: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for file in files:
        for message in file.message_types_by_name.values():
            _message(message, out)
        for enum in file.enum_types_by_name.values():
            out[enum.full_name] = {value.name: value.number for value in enum.values}
        for service in file.services_by_name.values():
            out[service.full_name] = {
                method.name: [method.input_type.full_name, method.output_type.full_name]
                for method in service.methods
            }
    return out


def main() -> None:
    if sys.argv[1] == "tritonclient":
        from tritonclient.grpc import model_config_pb2, service_pb2
    else:
        from cnnserve.protos import oip_model_config_pb2 as model_config_pb2
        from cnnserve.protos import oip_pb2 as service_pb2
    print(json.dumps(dump([service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR])))


if __name__ == "__main__":
    main()
