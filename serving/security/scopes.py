"""Which scope each method needs: `infer` (answers), `explain` (the expensive insight calls), `admin`.

Methods are named as the call hooks see them (`Call.method`), whatever the protocol. A method not listed
needs `admin`, so a method added later is closed until someone decides otherwise. Health checks (gRPC
health, the Open Inference Protocol's live/ready) need no credentials at all, so probes work.
"""

from __future__ import annotations

INFER = "infer"
EXPLAIN = "explain"
ADMIN = "admin"
SCOPES: tuple[str, ...] = (INFER, EXPLAIN, ADMIN)
OPEN = ""  # needs no credentials

METHOD_SCOPES: dict[str, str] = {
    # cnnserve.v1
    "Classify": INFER,
    "GetActivations": INFER,
    "ListModels": INFER,
    "GetModelMetadata": INFER,
    "GetFilters": EXPLAIN,
    "Explain": EXPLAIN,
    # The Open Inference Protocol (gRPC and HTTP): liveness and readiness are health checks; metadata,
    # configuration, statistics and inference are `infer`; repository control (index, load, unload) is
    # `admin` like every method not listed.
    "ServerLive": OPEN,
    "ServerReady": OPEN,
    "ModelReady": OPEN,
    "ServerMetadata": INFER,
    "ModelMetadata": INFER,
    "ModelConfig": INFER,
    "ModelStatistics": INFER,
    "ModelInfer": INFER,
}


def parse_scopes(text: str) -> frozenset[str]:
    """`infer,explain` -> the scopes; an unknown name raises ValueError naming it and the known ones."""
    scopes = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    if not scopes:
        raise ValueError(f"no scope given (known: {', '.join(SCOPES)})")
    return scopes


def required_scope(method: str) -> str | None:
    """The scope a method needs; None when it needs no credentials."""
    return METHOD_SCOPES.get(method, ADMIN) or None
