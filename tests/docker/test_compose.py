"""docker/compose.yaml: valid against the Compose specification (offline), and in step with the image."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerimage import DOCKER_DIR, IMAGE_REPO, REPO_ROOT, Dockerfile

# Vendored from check-jsonschema's copy of compose-spec/compose-spec schema/compose-spec.json (Apache-2.0).
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


def interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` with nothing set in the environment: the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def volume(entry: str) -> tuple[str, str, str]:
    """A short-syntax volume `SOURCE:TARGET[:MODE]` as (source, target, mode)."""
    source, target, *mode = interpolate(entry).split(":")
    return source, target, mode[0] if mode else "rw"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_matches_the_compose_spec(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutation",
    ["unknown service key", "ports as a string", "unknown depends_on condition"],
)
def test_the_schema_rejects_broken_compose_files(
    mutation: str, compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(compose)
    server = broken["services"]["server"]
    if mutation == "unknown service key":
        server["healthcheck_command"] = "true"
    elif mutation == "ports as a string":
        server["ports"] = "8500:8500"
    else:
        broken["services"]["classify"]["depends_on"]["server"]["condition"] = "service_ready"
    assert list(validator.iter_errors(broken)), f"{mutation} was accepted"


def test_server_service_builds_and_runs_the_serving_image(
    compose: dict[str, Any], cpu_dockerfile: Dockerfile
) -> None:
    server = compose["services"]["server"]
    build = server["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).resolve() == (DOCKER_DIR / "Dockerfile").resolve()
    assert build["target"] == cpu_dockerfile.final.name
    assert "command" not in server and "entrypoint" not in server  # the image's own command
    env = cpu_dockerfile.final.env()
    published = {entry.split(":")[-1].split("/")[0] for entry in server["ports"]}
    assert published == {env["CNNSERVE_PORT"], env["CNNSERVE_METRICS_PORT"], env["CNNSERVE_HTTP_PORT"]}
    mounts = [volume(entry) for entry in server["volumes"]]
    assert [(target, mode) for _, target, mode in mounts if target == IMAGE_REPO] == [(IMAGE_REPO, "ro")]
    assert server["init"] is True  # SIGTERM forwarded, worker processes reaped
    assert int(server["environment"]["CNNSERVE_WORKERS"]) >= 1


def test_prometheus_scrapes_the_server_metrics_port(
    compose: dict[str, Any], cpu_dockerfile: Dockerfile
) -> None:
    prometheus = compose["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    config_mount = next(v for v in prometheus["volumes"] if v.endswith("prometheus.yml:ro"))
    config = yaml.safe_load((DOCKER_DIR / config_mount.split(":")[0]).read_text(encoding="utf-8"))
    targets = [
        t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]
    ]
    metrics_port = cpu_dockerfile.final.env()["CNNSERVE_METRICS_PORT"]
    assert f"server:{metrics_port}" in targets


def test_batch_job_is_a_valid_classify_folder_command_against_the_server(
    compose: dict[str, Any], cpu_dockerfile: Dockerfile
) -> None:
    """The one-shot job's command parses with the real `cnnserve` parser and targets the server service."""
    from cnnserve.cli import build_parser

    job = compose["services"]["classify"]
    assert job["image"] == compose["services"]["server"]["image"]
    assert job["profiles"] == ["job"]  # one-shot: `docker compose run --rm classify`, not part of `up`
    assert job["depends_on"]["server"]["condition"] == "service_healthy"
    argv = [interpolate(arg) for arg in job["command"]]
    args = build_parser().parse_args(cpu_dockerfile.final.exec_form("ENTRYPOINT")[1:] + argv)
    assert args.command == "classify-folder"
    assert args.server == f"server:{cpu_dockerfile.final.env()['CNNSERVE_PORT']}"
    mounts = {target: mode for _, target, mode in map(volume, job["volumes"])}
    assert mounts.get(str(args.folder)) == "ro"
    assert mounts.get(str(args.output.parent)) == "rw"


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f overlay`: mappings merge, an overlay's list or scalar wins."""
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def test_the_tls_overlay_secures_server_and_job(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator, cpu_dockerfile: Dockerfile
) -> None:
    """compose.tls.yaml: a valid Compose file once merged, whose paths the server and the job really read."""
    from cnnserve.cli import build_parser
    from cnnserve.serving.security.client_credentials import TLS_CA_ENV, TOKEN_FILE_ENV
    from cnnserve.serving.settings import resolve

    overlay = yaml.safe_load((DOCKER_DIR / "compose.tls.yaml").read_text(encoding="utf-8"))
    full = merged(compose, overlay)
    errors = sorted(validator.iter_errors(full), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)

    def secret_paths(service: dict[str, Any]) -> dict[str, str]:
        return {f"/run/secrets/{s['target']}": s["source"] for s in service["secrets"]}

    server = full["services"]["server"]
    environment = {key: interpolate(str(value)) for key, value in server["environment"].items()}
    settings = resolve({}, {**cpu_dockerfile.final.env(), **environment})
    assert settings.tls and settings.auth_tokens is not None
    server_secrets = secret_paths(server)
    for path in (settings.tls_cert, settings.tls_key, settings.auth_tokens):
        assert str(path) in server_secrets, path

    job = full["services"]["classify"]
    job_secrets = secret_paths(job)
    assert {job["environment"][TLS_CA_ENV], job["environment"][TOKEN_FILE_ENV]} <= set(job_secrets)
    argv = [interpolate(arg) for arg in job["command"]]
    build_parser().parse_args(cpu_dockerfile.final.exec_form("ENTRYPOINT")[1:] + argv)
    for source in {*server_secrets.values(), *job_secrets.values()}:
        assert interpolate(full["secrets"][source]["file"]).startswith("../secrets/")
