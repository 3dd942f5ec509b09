"""Generate the Python modules of the .proto files under `protos/` with grpcio-tools.

Two contracts live here: cnnserve's own API (`cnnserve/v1/*.proto`) and the Open Inference Protocol
(`inference/*.proto`, the KServe v2 gRPC service with Triton's extensions). protoc writes imports from
the proto path (`from cnnserve.v1 import model_config_pb2`, `from inference import model_config_pb2`);
the modules are installed as `cnnserve.protos.<folder>`, so those imports are rewritten to that package.
The generated files are committed; `tests/protos/test_generated.py` regenerates them and checks they match.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
# Each proto folder, as a path under PROTO_ROOT, and the Python package its modules are imported as.
PROTO_PACKAGES = {
    "cnnserve/v1": "cnnserve.protos.cnnserve.v1",
    "inference": "cnnserve.protos.inference",
}


def _rewrite_imports(text: str) -> str:
    for folder, package in PROTO_PACKAGES.items():
        proto_module = re.escape(folder.replace("/", "."))
        text = re.sub(rf"^from {proto_module} import ", f"from {package} import ", text, flags=re.MULTILINE)
    return text


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto under PROTO_PACKAGES' folders, writing the modules under out_root."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    out_root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for folder in PROTO_PACKAGES:
        protos = sorted((PROTO_ROOT / folder).glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[p.name for p in protos]}")
        for path in sorted((out_root / folder).glob("*_pb2*.py*")):
            path.write_text(_rewrite_imports(path.read_text()))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed modules are stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(PROTO_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out_root = Path(tmp)
        stale = [
            str(path.relative_to(out_root))
            for path in generate(out_root)
            if not (PROTO_ROOT / path.relative_to(out_root)).exists()
            or path.read_bytes() != (PROTO_ROOT / path.relative_to(out_root)).read_bytes()
        ]
    if stale:
        print(f"stale generated modules: {stale}; run `make protos`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
