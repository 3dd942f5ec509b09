"""The `cnnserve` command: one dispatcher, subcommands registered by each wing.

Each wing exposes a command module with `register(subparsers)`. Those modules import only the standard
library at import time and load their wing (TensorFlow, ONNX Runtime, gRPC) inside the handler, so
`cnnserve --help` and every serving command start without TensorFlow. A wing that is not installed (the
serving Docker image has `serving/` and `protos/` only) simply contributes no subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cnnserve import __version__

# The one place that knows every wing's command module, in the order they appear in `--help`.
COMMAND_MODULES: tuple[str, ...] = (
    "cnnserve.training.cli",
    "cnnserve.export.cli",
    "cnnserve.serving.cli",
)


def _load_command_modules() -> list[object]:
    modules: list[object] = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            # Only a wing that is absent from this install is skipped; a broken import inside it is a bug.
            if error.name is not None and name.startswith(error.name):
                continue
            raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnserve",
        description="Train Keras image classifiers, export them to ONNX with verified parity, "
        "and serve them over gRPC with ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"cnnserve {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text, or as one JSON object per line with the active trace's ids "
        "(default: $CNNSERVE_LOG_FORMAT, else text)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_command_modules():
        module.register(subparsers)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from cnnserve.serving.observability.logs import LogFormatError, configure_logging, resolve_log_format

    try:
        log_format = resolve_log_format(args.log_format)
    except LogFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(getattr(logging, args.log_level), log_format)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
