"""docker/k8s/kserve/: a KServe InferenceService valid against KServe's own API schema, strictly."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerimage import DOCKER_DIR
from kserve_schema import SDK_WHEEL, inference_service_validator

KSERVE_DIR = DOCKER_DIR / "k8s" / "kserve"
INFERENCE_SERVICE = KSERVE_DIR / "inferenceservice.yaml"


@pytest.fixture(scope="module")
def validator(tool_folder: Callable[[str], Path]) -> jsonschema.protocols.Validator:
    """KServe's InferenceService schema from the SDK wheel (downloaded once into pytest's cache folder)."""
    folder = tool_folder("kserve-sdk")
    wheels = sorted(folder.glob("kserve-*.whl"))
    if not wheels:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                str(folder),
                SDK_WHEEL,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        wheels = sorted(folder.glob("kserve-*.whl"))
    return inference_service_validator(wheels[0])


def inference_service() -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all(INFERENCE_SERVICE.read_text(encoding="utf-8")) if d]
    return document


def test_every_kserve_manifest_is_an_inference_service() -> None:
    paths = sorted(KSERVE_DIR.glob("*.yaml"))
    assert paths == [INFERENCE_SERVICE]
    document = inference_service()
    assert (document["apiVersion"], document["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")


def test_the_inference_service_validates_strictly(validator: jsonschema.protocols.Validator) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(inference_service())]
    assert not errors, "\n".join(errors)


def _break(document: dict[str, Any], mutation: str) -> None:
    predictor = document["spec"]["predictor"]
    container = predictor["containers"][0]
    if mutation == "misplaced replicas":
        predictor["replicas"] = 2
    elif mutation == "min replicas as text":
        predictor["minReplicas"] = "one"
    elif mutation == "unknown container field":
        container["healthcheck"] = {"httpGet": {"path": "/v2/health/ready"}}
    elif mutation == "probe port as a list":
        container["readinessProbe"]["httpGet"]["port"] = [8080]
    elif mutation == "container without a name":
        del container["name"]


@pytest.mark.parametrize(
    "mutation",
    [
        "misplaced replicas",
        "min replicas as text",
        "unknown container field",
        "probe port as a list",
        "container without a name",
    ],
)
def test_the_schema_rejects_broken_inference_services(
    mutation: str, validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(inference_service())
    _break(broken, mutation)
    assert list(validator.iter_errors(broken)), mutation


def test_the_schema_is_kserves_own(validator: jsonschema.protocols.Validator) -> None:
    """Built from the SDK's tables, not written by hand: KServe's runtime specs are all there."""
    predictor = validator.schema["$defs"]["V1beta1PredictorSpec"]["properties"]
    assert {"model", "containers", "triton", "onnx", "minReplicas", "scaleMetric"} <= set(predictor)
    assert Path(validator.schema["$defs"]["V1beta1InferenceService"]["properties"]["spec"]["$ref"]).name


def test_the_inference_service_matches_the_image(cpu_dockerfile: Any) -> None:
    """The predictor runs the image's own command; its HTTP port, probes and settings match the server."""
    from cnnserve.serving.settings import resolve

    (container,) = inference_service()["spec"]["predictor"]["containers"]
    assert "command" not in container and "args" not in container
    env = {item["name"]: item["value"] for item in container["env"]}
    settings = resolve(
        {}, {**cpu_dockerfile.final.env(), **{k: v for k, v in env.items() if k != "STORAGE_URI"}}
    )
    assert str(settings.repo) == "/mnt/models" and env["STORAGE_URI"].startswith("pvc://")
    assert [p["containerPort"] for p in container["ports"]] == [settings.http_port]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": settings.http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": settings.http_port}
    assert settings.workers == int(container["resources"]["limits"]["cpu"])
