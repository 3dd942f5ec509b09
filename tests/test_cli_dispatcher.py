"""The `cnnserve` dispatcher: every wing's subcommands are registered, and --help stays TensorFlow-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnnserve import cli

SUBCOMMANDS = (
    "zoo",
    "train",
    "export",
    "inspect",
    "serve",
    "classify",
    "activations",
    "classify-folder",
    "filters",
    "explain",
)


def test_every_subcommand_is_registered() -> None:
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert set(SUBCOMMANDS) <= set(choices)


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "classify-folder" in capsys.readouterr().out


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from cnnserve import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'grpc', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
