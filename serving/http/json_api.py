"""cnnserve.v1 over HTTP as JSON: the same six methods as the gRPC service, in protobuf's JSON mapping.

    GET  /v1/models                                             ListModels
    GET  /v1/models/{m}[/versions/{v}]                          GetModelMetadata
    POST /v1/models/{m}[/versions/{v}]/classify                 Classify        (ClassifyRequest body)
    POST /v1/models/{m}[/versions/{v}]/activations              GetActivations  (ActivationsRequest body)
    GET  /v1/models/{m}[/versions/{v}]/filters/{layer}          GetFilters      (?mosaic=true&input_channel=N)
    POST /v1/models/{m}[/versions/{v}]/explain                  Explain         (ExplainRequest body)

A body is the request message as JSON (field names as in the .proto; `bytes` such as an encoded image are
base64; enums by name), query parameters set scalar fields, and the path sets `model`, `version` and
`layer`. The answer is the response message as JSON (64-bit integers as numbers; `bytes` such as PNG
mosaics and tensor data as base64). `?fields=a,b.c` keeps only the named fields of the answer (through
repeated fields too), e.g. `fields=layers.layer,layers.mosaic_png` drops the activation tensors when only
the pictures are wanted. Each request runs `InferenceMethods` -- what the gRPC servicer runs -- between
the server's call hooks, under the RPC's name, so scopes, metrics and drain treat both transports alike;
errors come back as `{"error": "..."}` with the HTTP status the serving error tree gives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from cnnserve.protos import inference_pb2
from cnnserve.serving.core.calls import Call, CallHooks
from cnnserve.serving.core.oip import parse_version
from cnnserve.serving.errors import InvalidRequestError
from cnnserve.serving.grpc.methods import SPECS, InferenceMethods, MethodSpec
from cnnserve.serving.http.calls import run_call
from cnnserve.serving.http.server import Handler, HttpRequest, HttpResponse, Router

PROTOCOL = "cnnserve.v1-json"
PREFIX = "/v1/models"
FIELDS_PARAMETER = "fields"
PATH_FIELDS = ("model", "version", "layer")  # set by the path, not the query

_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")

Params = Mapping[str, str]


class JsonEndpoints:
    """The routes above over the cnnserve.v1 methods, for serving/http/server.py's Router."""

    def __init__(self, methods: InferenceMethods, hooks: CallHooks) -> None:
        self.methods = methods
        self.hooks = hooks

    def add_routes(self, router: Router) -> None:
        router.add("GET", PREFIX, self._endpoint("ListModels"))
        for base in (f"{PREFIX}/{{model}}", f"{PREFIX}/{{model}}/versions/{{version}}"):
            router.add("GET", base, self._endpoint("GetModelMetadata"))
            router.add("POST", f"{base}/classify", self._endpoint("Classify"))
            router.add("POST", f"{base}/activations", self._endpoint("GetActivations"))
            router.add("GET", f"{base}/filters/{{layer}}", self._endpoint("GetFilters"))
            router.add("POST", f"{base}/explain", self._endpoint("Explain"))

    def _endpoint(self, name: str) -> Handler:
        spec = SPECS[name]
        method = self.methods.method(name)
        output = _SERVICE.methods_by_name[name].output_type

        async def endpoint(request: HttpRequest, params: Params) -> HttpResponse:
            async def handle(call: Call) -> HttpResponse:
                # Read inside the call: a caller the hooks refuse learns nothing about its request.
                message = request_message(spec, request, params)
                fields = response_fields(request.query, output)
                return json_answer(await method(message, call, None), fields)

            return await run_call(self.hooks, PROTOCOL, request, name, params.get("model", ""), handle)

        return endpoint


# -- requests -------------------------------------------------------------------------------------------


def request_message(spec: MethodSpec, request: HttpRequest, params: Params) -> Message:
    """The request message: the JSON body, then the query's scalar fields, then the path's."""
    message = spec.request_type()
    kind = message.DESCRIPTOR.name
    if request.body.strip():
        if request.method != "POST":
            raise InvalidRequestError(f"{request.method} {spec.name} takes no body; use query parameters")
        try:
            document = json.loads(request.body)
        except (UnicodeDecodeError, ValueError) as error:
            raise InvalidRequestError(f"the request body is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise InvalidRequestError(f"the request body must be a JSON object ({kind})")
        try:
            json_format.ParseDict(document, message)
        except json_format.ParseError as error:
            raise InvalidRequestError(f"the request body is not a valid {kind}: {error}") from None
    for name, value in parse_qsl(request.query, keep_blank_values=True):
        if name != FIELDS_PARAMETER:
            _set_query_field(message, name, value)
    if "model" in params:
        message.model = params["model"]
        message.version = parse_version(params["model"], params.get("version", ""))
    if "layer" in params:
        message.layer = params["layer"]
    return message


def _set_query_field(message: Message, name: str, text: str) -> None:
    descriptor = message.DESCRIPTOR
    field = descriptor.fields_by_name.get(name)
    scalars = [f.name for f in descriptor.fields if f.message_type is None and f.name not in PATH_FIELDS]
    if field is None or field.message_type is not None:
        raise InvalidRequestError(
            f"unknown query parameter {name!r}; {descriptor.name} takes "
            f"{', '.join([*scalars, FIELDS_PARAMETER])}"
        )
    value = _scalar(field, name, text)
    if field.is_repeated:
        getattr(message, name).append(value)
    else:
        setattr(message, name, value)


def _scalar(field: FieldDescriptor, name: str, text: str) -> Any:
    """A query parameter's text as the field's type; a bad value names the parameter."""
    kind = field.type
    try:
        if kind == FieldDescriptor.TYPE_BOOL:
            lowered = text.strip().lower()
            if lowered in _TRUE or lowered == "":
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("must be true or false")
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            if text not in field.enum_type.values_by_name:
                names = ", ".join(field.enum_type.values_by_name)
                raise ValueError(f"must be one of {names}")
            return field.enum_type.values_by_name[text].number
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return float(text)
        if kind == FieldDescriptor.TYPE_STRING:
            return text
        return int(text)
    except ValueError as error:
        reason = str(error) if str(error).startswith("must") else "is not a valid value"
        raise InvalidRequestError(f"query parameter {name}={text[:40]!r} {reason}") from None


# -- answers --------------------------------------------------------------------------------------------


FieldTree = dict[str, "FieldTree"]  # a field name -> the sub-fields kept ({} = the whole field)


def response_fields(query: str, descriptor: Descriptor) -> FieldTree | None:
    """The `fields` query parameter as a tree, checked against the response type (None = every field)."""
    paths = [
        path.strip()
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name == FIELDS_PARAMETER
        for path in value.split(",")
        if path.strip()
    ]
    if not paths:
        return None
    tree: FieldTree = {}
    for path in paths:
        node, kind = tree, descriptor
        parts = path.split(".")
        for depth, part in enumerate(parts):
            field = kind.fields_by_name.get(part) if kind is not None else None
            if field is None:
                where = kind.name if kind is not None else ".".join(parts[:depth])
                known = ", ".join(kind.fields_by_name) if kind is not None else "no sub-fields"
                raise InvalidRequestError(f"fields: {where} has no field {part!r} (it has {known})")
            if part in node and not node[part] and depth < len(parts) - 1:
                break  # the whole field is already kept
            child = node.setdefault(part, {})
            if depth == len(parts) - 1:
                child.clear()  # the whole field
            node, kind = child, field.message_type
    return tree


def _keep(message: Message, tree: FieldTree) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in tree:
            message.ClearField(field.name)
            continue
        subtree = tree[field.name]
        if not subtree:
            continue
        if field.is_repeated:
            for item in getattr(message, field.name):
                _keep(item, subtree)
        elif message.HasField(field.name):
            _keep(getattr(message, field.name), subtree)


def _keep_keys(document: dict[str, Any], tree: FieldTree) -> None:
    """What `_keep` does to a message, on its JSON (where cleared fields show with default values)."""
    for key in list(document):
        if key not in tree:
            del document[key]
        elif tree[key]:
            value = document[key]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    _keep_keys(item, tree[key])


def json_answer(message: Message, fields: FieldTree | None = None) -> HttpResponse:
    """A response message as a JSON answer (only `fields`, when given: the others are dropped from the
    message before it is converted, so big tensors nobody asked for are never encoded)."""
    if fields is not None:
        _keep(message, fields)
    document = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
    if fields is not None:
        _keep_keys(document, fields)
    return HttpResponse(200, json.dumps(document, separators=(",", ":")).encode())
