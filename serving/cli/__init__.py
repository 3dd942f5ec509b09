"""The serving subcommands: `serve`, `classify`, `activations`, `classify-folder`, `filters`, `explain`,
`token`.

Each module imports only the standard library at import time and loads gRPC, numpy and ONNX Runtime in its
handlers, so `cnnserve --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from cnnserve.serving.cli import insight, jobs, predict, serve, tokens


def register(subparsers: Any) -> None:
    """Add the serving subcommands, in the order `cnnserve --help` lists them."""
    serve.register(subparsers)
    predict.register(subparsers)
    jobs.register(subparsers)
    insight.register(subparsers)
    tokens.register(subparsers)
