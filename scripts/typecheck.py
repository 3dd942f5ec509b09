"""Type-check the project with mypy, through the same `cnnserve.*` names the package-dir mapping installs.

The wings live at the top of the repository (`serving/`, `export/`, ...) but are imported as
`cnnserve.serving`, `cnnserve.export`, ...; an editable install maps them with an import hook that static
checkers cannot follow. So this builds that layout as a tree of symbolic links (build/typecheck/cnnserve,
straight from pyproject.toml's package-dir table) and checks it, printing paths as they are in the
repository. Used by `make typecheck` and by the test suite.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def link_tree() -> Path:
    """build/typecheck/<package path> -> the repository folder of each package-dir entry."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = TREE / "cnnserve"
    top.mkdir(parents=True, exist_ok=True)
    for package, folder in mapping.items():
        source = ROOT / folder
        if package == "cnnserve":
            for file in source.glob("*.py"):
                _link(top / file.name, file)
            continue
        _link(TREE / Path(*package.split(".")), source)
    return TREE


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def main(argv: list[str] | None = None) -> int:
    tree = link_tree()
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "cnnserve"]
    result = subprocess.run([*command, *(argv or [])], cwd=tree, capture_output=True, text=True)
    # Report repository paths (serving/x.py), not the link tree's (cnnserve/serving/x.py).
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    output = result.stdout + result.stderr
    for package, folder in sorted(mapping.items(), key=lambda item: -len(item[0])):
        output = output.replace(package.replace(".", "/") + "/", f"{folder}/")
    print(output, end="")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
