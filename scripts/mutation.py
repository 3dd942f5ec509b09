"""Mutation testing of cnnserve's core modules with mutmut: how many injected bugs the tests catch.

`make mutation` runs this. mutmut injects one small bug (a mutant: `>` for `>=`, `+` for `-`, a dropped
argument, another constant, ...) at a time into the modules below and runs the tests that reach the changed
function; a mutant the tests fail on is killed, one they pass on survived. Each module's kill rate is
killed / all mutants, and must reach TARGET. Survivors are listed with their diffs; docs/mutation.md says
why each one that remains is equivalent to the original or acceptable.

mutmut imports the package from a copy of the source. cnnserve's packages live at the top of the
repository and install beneath `cnnserve` (setuptools' package-dir mapping), so the copy is laid out as
installed, `cnnserve/<package>/...`, in build/mutation/ (with the tests and pyproject.toml), and mutmut
runs there; the working tree is never modified.

Usage: python scripts/mutation.py [MODULE ...]   (default: every module below; names as in the table)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
TARGET = 0.90


@dataclass(frozen=True)
class Module:
    """One core module under mutation: its source files (as installed) and the tests that guard it."""

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]


MODULES = (
    Module(
        "batcher",
        ("cnnserve/serving/batching/batcher.py", "cnnserve/serving/batching/policy.py"),
        ("tests/serving/batching/test_batcher.py",),
    ),
    Module(
        "preprocessing",
        ("cnnserve/serving/model/preprocessing.py",),
        ("tests/serving/model/test_preprocessing.py",),
    ),
    Module(
        "status mapping",
        ("cnnserve/serving/errors.py", "cnnserve/serving/grpc/interceptors.py"),
        ("tests/serving/test_errors.py", "tests/serving/grpc/test_interceptors.py"),
    ),
    Module(
        "parity verification",
        ("cnnserve/export/verify.py", "cnnserve/export/parity.py"),
        ("tests/export/test_verify.py",),
    ),
    Module(
        "batch-job resume",
        (
            "cnnserve/serving/jobs/sinks/base.py",
            "cnnserve/serving/jobs/sinks/csv.py",
            "cnnserve/serving/jobs/sinks/jsonl.py",
        ),
        ("tests/serving/jobs/test_sinks.py",),
    ),
)

# mutmut's exit codes of a mutant's test run, as in mutmut.stats.status_by_exit_code.
_STATUS = {
    **{1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"},
    **{code: "timeout" for code in (36, -24, 24, 152, 255)},
    **{code: "segfault" for code in (-11, -9)},
}


def stage(modules: list[Module]) -> None:
    """Copy the packages (laid out as installed), the tests and a pyproject.toml configuring mutmut."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(ROOT / folder, STAGE / package.replace(".", "/"), ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=ignore)
    files = [f for module in modules for f in module.files]
    tests = sorted({t for module in modules for t in module.tests})
    settings = {
        "source_paths": ["cnnserve"],
        "only_mutate": files,
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x"],
    }
    config = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (STAGE / "pyproject.toml").write_text(f"{text}\n[tool.mutmut]\n{config}", encoding="utf-8")


def statuses(file: str) -> dict[str, str]:
    """Mutant name → status, from the results mutmut keeps next to each mutated file."""
    meta = json.loads((STAGE / "mutants" / f"{file}.meta").read_text(encoding="utf-8"))
    return {name: _STATUS.get(code, "suspicious") for name, code in meta["exit_code_by_key"].items()}


def diff(name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=STAGE, capture_output=True, text=True, check=False
    )
    lines = [
        line for line in shown.stdout.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return "\n".join(f"      {line.strip()}" for line in lines)


def report(modules: list[Module]) -> bool:
    """Print each module's kill rate and its survivors; True when every module reaches TARGET."""
    print(f"\n{'module':<24} {'mutants':>8} {'killed':>7} {'survived':>9} {'timeout':>8}  kill rate")
    survivors: list[tuple[str, str]] = []
    passed = True
    for module in modules:
        counts: Counter[str] = Counter()
        for file in module.files:
            for name, status in statuses(file).items():
                counts[status] += 1
                if status not in ("killed", "timeout"):
                    survivors.append((name, status))
        total = sum(counts.values())
        detected = counts["killed"] + counts["timeout"]
        rate = detected / total if total else 1.0
        passed = passed and rate >= TARGET
        print(
            f"{module.name:<24} {total:>8} {counts['killed']:>7} {total - detected:>9} {counts['timeout']:>8}"
            f"  {rate:6.1%}{'' if rate >= TARGET else f'  (below {TARGET:.0%})'}"
        )
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (docs/mutation.md says why each is acceptable):")
        for name, status in survivors:
            print(f"  {name} ({status})\n{diff(name)}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all)")
    parser.add_argument("--jobs", type=int, default=None, help="mutants tested at once (default: CPU count)")
    args = parser.parse_args(argv)
    by_name = {module.name: module for module in MODULES}
    unknown = [name for name in args.modules if name not in by_name]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {sorted(by_name)}")
    modules = [by_name[name] for name in args.modules] if args.modules else list(MODULES)
    stage(modules)
    started = time.perf_counter()
    command = [sys.executable, "-m", "mutmut", "run"]
    if args.jobs:
        command += ["--max-children", str(args.jobs)]
    run = subprocess.run(command, cwd=STAGE, stdout=subprocess.DEVNULL, check=False)
    if run.returncode != 0:
        print(f"mutmut run failed with exit code {run.returncode}", file=sys.stderr)
        return run.returncode
    print(f"mutmut ran in {time.perf_counter() - started:.0f} s")
    return 0 if report(modules) else 1


if __name__ == "__main__":
    sys.exit(main())
