"""protos/inference/ is wire-compatible with Triton's own modules of the Open Inference Protocol.

Every RPC, message, field (name, number, type, cardinality, message type) and enum value cnnserve defines
must be defined the same way by tritonclient's generated modules (run in their own environment):
a subset, never a divergence. That is what lets tritonclient and perf_analyzer talk to cnnserve unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

DUMP = Path(__file__).with_name("descriptor_dump.py")


def _dump(python: Path | str, which: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), str(DUMP), which], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_definition_matches_tritonclient(tritonclient_python: Path) -> None:
    ours = _dump(sys.executable, "cnnserve")
    theirs = _dump(tritonclient_python, "tritonclient")
    assert "inference.GRPCInferenceService" in ours
    mismatches = []
    for name, members in ours.items():
        if name not in theirs:
            mismatches.append(f"{name}: not in tritonclient")
            continue
        for member, definition in members.items():
            if theirs[name].get(member) != definition:
                mismatches.append(
                    f"{name}.{member}: ours {definition}, tritonclient {theirs[name].get(member)}"
                )
    assert not mismatches, "\n".join(mismatches)


def test_the_service_offers_what_tritonclient_and_perf_analyzer_call() -> None:
    service = _dump(sys.executable, "cnnserve")["inference.GRPCInferenceService"]
    assert set(service) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
