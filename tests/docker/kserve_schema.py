"""KServe's InferenceService API as a strict JSON schema, built offline from the KServe Python SDK's models.

The SDK (`kserve` on PyPI, Apache-2.0) is generated from the same Go API types as KServe's CRDs: every
model class lists its fields (`openapi_types`: Python name -> type, `attribute_map`: Python name -> the
YAML key) and raises on the ones that must not be empty. This module reads those tables straight out of
the wheel (nothing of the SDK is imported, so none of its dependencies is needed) and turns them into a
JSON schema: one object per class, no property beyond the ones KServe defines, types checked, and the
Kubernetes types it embeds (containers, volumes, object metadata) resolved to kubernetes-validate's
strict schemas. A misspelt or misplaced key in docker/k8s/kserve/ fails validation, as the API server
would reject it.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
from referencing.jsonschema import DRAFT202012

SDK_WHEEL = "kserve==0.21.0"
K8S_ID = "https://kubernetes.io/api/_definitions.json"
ROOT_CLASS = "V1beta1InferenceService"
_MODELS = re.compile(r"^kserve/models/v1(alpha|beta)1_\w+\.py$")
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"}}
_SCALARS |= {"float": {"type": "number"}, "object": {}, "datetime": {"type": "string"}}


def _class_tables(source: str) -> tuple[str, dict[str, str], dict[str, str], list[str]]:
    tree = ast.parse(source)
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    tables: dict[str, dict[str, str]] = {}
    for node in cls.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            tables[target.id] = ast.literal_eval(node.value)  # type: ignore[union-attr]
    return cls.name, tables["openapi_types"], tables["attribute_map"], _REQUIRED.findall(source)


def _k8s_definition(name: str, k8s: dict[str, Any]) -> str | None:
    """The kubernetes-validate definition of an SDK type (V1Container, K8sIoApiAppsV1DeploymentStrategy)
    (None for a type Kubernetes does not define: Knative's and KEDA's, which only KServe's status uses)."""
    if name == "ResourceQuantity":
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if name == "V1Time":
        return "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
    grouped = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w+)", name)
    if grouped:
        group, version, kind = grouped.groups()
        candidates = [f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"]
    else:
        core = re.fullmatch(r"(V\d(?:alpha\d|beta\d)?)([A-Z]\w+)", name)
        if core is None:
            return None
        version, kind = core.groups()
        prefixes = ("io.k8s.api.core", "io.k8s.apimachinery.pkg.apis.meta", "io.k8s.api.apps")
        candidates = [f"{prefix}.{version.lower()}.{kind}" for prefix in prefixes]
    return next((key for key in candidates if key in k8s), None)


def _type_schema(spec: str, classes: set[str], k8s: dict[str, Any]) -> dict[str, Any]:
    if spec in _SCALARS:
        return _SCALARS[spec]
    if spec.startswith("list[") and spec.endswith("]"):
        return {"type": "array", "items": _type_schema(spec[5:-1], classes, k8s)}
    if spec.startswith("dict(str, ") and spec.endswith(")"):
        return {"type": "object", "additionalProperties": _type_schema(spec[10:-1], classes, k8s)}
    if spec in classes:
        return {"$ref": f"#/$defs/{spec}"}
    if spec == "V1beta1MetricQuantity":  # KServe's int-or-string quantity
        return {"type": ["integer", "number", "string"]}
    definition = _k8s_definition(spec, k8s)
    return {} if definition is None else {"$ref": f"{K8S_ID}#/$defs/{definition}"}


def inference_service_validator(sdk_wheel: Path) -> jsonschema.protocols.Validator:
    """A validator for one InferenceService document, from the SDK wheel and kubernetes-validate."""
    schema_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    latest = f"v{kubernetes_validate.latest_version()}-local-strict"
    k8s_document = json.loads((schema_dir / latest / "_definitions.json").read_text(encoding="utf-8"))
    k8s = k8s_document["$defs"]
    with zipfile.ZipFile(sdk_wheel) as wheel:
        tables = [
            _class_tables(wheel.read(name).decode("utf-8"))
            for name in wheel.namelist()
            if _MODELS.match(name)
        ]
    classes = {name for name, *_ in tables}
    definitions = {}
    for name, types, keys, required in tables:
        definitions[name] = {
            "type": "object",
            "properties": {keys[field]: _type_schema(spec, classes, k8s) for field, spec in types.items()},
            "required": [keys[field] for field in required if field in keys],
            "additionalProperties": False,
        }
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cnnserve.invalid/kserve-inferenceservice.json",
        "$ref": f"#/$defs/{ROOT_CLASS}",
        "$defs": definitions,
    }
    registry = referencing.Registry().with_resource(K8S_ID, DRAFT202012.create_resource(k8s_document))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, registry=registry)
