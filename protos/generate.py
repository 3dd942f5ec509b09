"""Generate the Python modules of `protos/cnnserve/v1/*.proto` with grpcio-tools.

protoc writes imports from the proto path (`from cnnserve.v1 import model_config_pb2`); the modules are
installed as `cnnserve.protos.cnnserve.v1`, so those imports are rewritten to that package. The generated
files are committed; `tests/protos/test_generated.py` regenerates them and checks they match.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_DIR = PROTO_ROOT / "cnnserve" / "v1"
_IMPORT = re.compile(r"^from cnnserve\.v1 import ", re.MULTILINE)


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto under cnnserve/v1, writing the modules under out_root/cnnserve/v1."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    out_root.mkdir(parents=True, exist_ok=True)
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
    written = sorted((out_root / "cnnserve" / "v1").glob("*_pb2*.py*"))
    for path in written:
        text = _IMPORT.sub("from cnnserve.protos.cnnserve.v1 import ", path.read_text())
        path.write_text(text)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed modules are stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(PROTO_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            path.name
            for path in generate(Path(tmp))
            if path.read_bytes() != (PROTO_DIR / path.name).read_bytes()
        ]
    if stale:
        print(f"stale generated modules: {stale}; run `make protos`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
