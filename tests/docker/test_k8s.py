"""docker/k8s/: valid against the Kubernetes schemas (offline, strict), in step with the image and server."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerimage import DOCKER_DIR, IMAGE_REPO, REPO_ROOT, Dockerfile

K8S_DIR = DOCKER_DIR / "k8s"
# kserve/ holds KServe custom resources, which test_kserve.py validates against KServe's own API schema.
MANIFESTS = sorted(path for path in K8S_DIR.rglob("*.yaml") if path.parent.name != "kserve")
# The newest schemas kubernetes-validate ships, and the oldest release the manifests support (the
# preStop `sleep` action is on by default from 1.30).
VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]


def load_all() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents.append((path, document))
    return documents


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in load_all() if document["kind"] == kind]


def deployment(name: str) -> dict[str, Any]:
    return next(d for d in of_kind("Deployment") if d["metadata"]["name"] == name)


def server_container(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def test_every_expected_manifest_is_there() -> None:
    kinds = {document["kind"] for _, document in load_all()}
    expected = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    }
    assert expected <= kinds
    assert {d["metadata"]["name"] for d in of_kind("Deployment")} == {"cnnserve", "cnnserve-gpu"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S_DIR).as_posix())
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents, f"{path} holds no manifest"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    "mutation", ["unknown container field", "probe port as a list", "misspelt HPA field"]
)
def test_the_schemas_reject_broken_manifests(mutation: str) -> None:
    version = VERSIONS[0]
    if mutation == "misspelt HPA field":
        broken = copy.deepcopy(of_kind("HorizontalPodAutoscaler")[0])
        broken["spec"]["metrics"][0]["resource"]["target"]["averageUtilisation"] = 70
    else:
        broken = copy.deepcopy(deployment("cnnserve"))
        container = server_container(broken)
        if mutation == "unknown container field":
            container["healthcheck"] = {"grpc": {"port": 8500}}
        else:
            container["readinessProbe"]["grpc"]["port"] = [8500]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.parametrize("name", ["cnnserve", "cnnserve-gpu"])
def test_deployment_matches_the_image(
    name: str, cpu_dockerfile: Dockerfile, gpu_dockerfile: Dockerfile
) -> None:
    from cnnserve.serving.settings import DEFAULT_GRACE_SECONDS, resolve

    dockerfile = gpu_dockerfile if name.endswith("gpu") else cpu_dockerfile
    image_env = dockerfile.final.env()
    manifest = deployment(name)
    pod = manifest["spec"]["template"]["spec"]
    container = server_container(manifest)

    # Labels: the selector picks the template's pods; the Services and the PDB pick them too.
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert manifest["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in of_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
    for pdb in of_kind("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # The image, its command and its environment: every variable valid for `cnnserve serve`.
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert container["image"].split(":")[1].startswith(version)
    assert "command" not in container and "args" not in container
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    settings = resolve({}, {**image_env, **env})
    if name == "cnnserve":
        assert settings.device in ("cpu", "auto")
        # The server sees the node's cores, not the limit: workers must be set to the CPU limit.
        assert settings.workers == int(container["resources"]["limits"]["cpu"])
    else:
        assert settings.device == "cuda"
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["image"].endswith("-gpu")

    # Ports, and the native gRPC probes on the plaintext health-only port (they cannot do TLS).
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
        "http": settings.http_port,
        "health": settings.health_port,
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == settings.health_port, probe
    assert container["readinessProbe"]["grpc"].get("service", "") == ""  # overall: models loaded
    liveness = container["livenessProbe"]["grpc"].get("service", "")
    assert liveness and container["startupProbe"]["grpc"]["service"] == liveness  # alive, models or not

    # Non-root as the image's user, read-only root filesystem with a writable /tmp for metrics files.
    uid, _, gid = dockerfile.final.last("USER").arguments.partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["runAsGroup"] == int(
        gid
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    # TLS and the token file from Secrets, mounted whole (a subPath mount would never see a renewal).
    assert settings.tls and settings.auth_tokens is not None
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for path in (settings.tls_cert, settings.tls_key, settings.auth_tokens):
        assert path is not None
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True and "subPath" not in mount and mount["name"] in secrets, path
    assert secrets[mounts[str(settings.tls_cert.parent)]["name"]] == "cnnserve-tls"  # type: ignore[union-attr]

    # The model repository: mounted read-only where CNNSERVE_REPO points, from the PVC of pvc.yaml.
    assert str(settings.repo) == IMAGE_REPO
    assert mounts[IMAGE_REPO]["readOnly"] is True
    claim = volumes[mounts[IMAGE_REPO]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {pvc["metadata"]["name"] for pvc in of_kind("PersistentVolumeClaim")}

    # Graceful shutdown fits: preStop pause + the server's grace period < Kubernetes' kill deadline.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + DEFAULT_GRACE_SECONDS


def test_services_offer_connection_and_client_side_balancing(cpu_dockerfile: Dockerfile) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    grpc_port = int(cpu_dockerfile.final.env()["CNNSERVE_PORT"])
    headless = services["cnnserve-headless"]["spec"]
    assert headless["clusterIP"] == "None"  # DNS answers every ready pod: `dns:///` + round_robin
    assert headless.get("publishNotReadyAddresses", False) is False
    for service in services.values():
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == grpc_port and grpc["targetPort"] == "grpc"


def test_autoscalers_target_the_deployments() -> None:
    deployments = {d["metadata"]["name"] for d in of_kind("Deployment")}
    autoscalers = of_kind("HorizontalPodAutoscaler")
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers} == deployments
    for hpa in autoscalers:
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
