"""The committed generated modules are exactly what grpcio-tools makes of the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_service_has_the_issue_rpcs() -> None:
    from cnnserve.protos import inference_pb2

    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
    assert service.full_name == "cnnserve.v1.InferenceService"
    methods = {m.name for m in service.methods}
    assert {"Classify", "GetActivations", "ListModels", "GetModelMetadata"} <= methods
