"""Mutation testing of cnnserve's core modules with mutmut: how many injected bugs the tests catch.

`make mutation` runs this. mutmut injects one small bug (a mutant: `>` for `>=`, `+` for `-`, a dropped
argument, another constant, ...) at a time into the modules below and runs the tests that reach the changed
function; a mutant the tests fail on is killed, one they pass on survived. Each module's kill rate is
killed / all mutants, and must reach TARGET. Survivors are listed with their diffs; docs/mutation.md says
why each one that remains is equivalent to the original or acceptable.

mutmut imports the package from a copy of the source. cnnserve's packages live at the top of the
repository and install beneath `cnnserve` (setuptools' package-dir mapping), so each module's copy is
laid out as installed, `cnnserve/<package>/...`, in build/mutation/<module>/ (with the tests and
pyproject.toml), and mutmut runs there; the working tree is never modified. Mutants run in processes
forked from one that ran the tests once; a module whose tests start gRPC servers forks them from a clean
fork server instead (gRPC's threads do not survive a fork).

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
    isolation: str = "fork"  # or "forkserver", for tests that start gRPC

    @property
    def stage(self) -> Path:
        return STAGE / self.name.replace(" ", "-")


MODULES = (
    Module(
        "batcher",
        ("cnnserve/serving/batching/batcher.py", "cnnserve/serving/batching/policy.py"),
        ("tests/serving/batching/test_batcher.py", "tests/serving/batching/test_policy.py"),
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
        isolation="forkserver",
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
        ("tests/serving/jobs/test_sinks.py", "tests/serving/jobs/test_resume.py"),
    ),
)

# mutmut's exit codes of a mutant's test run, as in mutmut.stats.status_by_exit_code.
_STATUS = {
    **{1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"},
    **{code: "timeout" for code in (36, -24, 24, 152, 255)},
    **{code: "segfault" for code in (-11, -9)},
}


def stage(module: Module) -> None:
    """Copy the packages (laid out as installed), the tests and a pyproject.toml configuring mutmut."""
    if module.stage.exists():
        shutil.rmtree(module.stage)
    module.stage.mkdir(parents=True)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        target = module.stage / package.replace(".", "/")
        shutil.copytree(ROOT / folder, target, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests", module.stage / "tests", ignore=ignore)
    settings = {
        "source_paths": ["cnnserve"],
        "only_mutate": list(module.files),
        "pytest_add_cli_args_test_selection": list(module.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x"],
        "process_isolation": module.isolation,
    }
    config = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (module.stage / "pyproject.toml").write_text(f"{text}\n[tool.mutmut]\n{config}", encoding="utf-8")


def run(module: Module, jobs: int | None) -> float:
    """Stage the module and let mutmut test every mutant; the seconds it took."""
    stage(module)
    started = time.perf_counter()
    command = [sys.executable, "-m", "mutmut", "run"]
    if jobs:
        command += ["--max-children", str(jobs)]
    result = subprocess.run(command, cwd=module.stage, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise SystemExit(f"mutmut run failed for {module.name} with exit code {result.returncode}")
    return time.perf_counter() - started


def statuses(module: Module, file: str) -> dict[str, str]:
    """Mutant name → status, from the results mutmut keeps next to each mutated file."""
    meta = json.loads((module.stage / "mutants" / f"{file}.meta").read_text(encoding="utf-8"))
    return {name: _STATUS.get(code, "suspicious") for name, code in meta["exit_code_by_key"].items()}


def diff(module: Module, name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name],
        cwd=module.stage,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [
        line for line in shown.stdout.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return "\n".join(f"      {line.strip()}" for line in lines)


def report(modules: list[Module], seconds: dict[str, float]) -> bool:
    """Print each module's kill rate and its survivors; True when every module reaches TARGET."""
    header = f"{'module':<22} {'mutants':>8} {'killed':>7} {'survived':>9} {'timeout':>8}  kill rate"
    print(f"\n{header}  {'time':>6}")
    survivors: list[tuple[Module, str, str]] = []
    passed = True
    for module in modules:
        counts: Counter[str] = Counter()
        for file in module.files:
            for name, status in statuses(module, file).items():
                counts[status] += 1
                if status not in ("killed", "timeout"):
                    survivors.append((module, name, status))
        total = sum(counts.values())
        detected = counts["killed"] + counts["timeout"]
        rate = detected / total if total else 1.0
        passed = passed and rate >= TARGET
        print(
            f"{module.name:<22} {total:>8} {counts['killed']:>7} {total - detected:>9} {counts['timeout']:>8}"
            f"  {rate:8.1%}  {seconds[module.name]:5.0f}s{'' if rate >= TARGET else f'  below {TARGET:.0%}'}"
        )
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (docs/mutation.md says why each is acceptable):")
        for module, name, status in survivors:
            print(f"  {name} ({status})\n{diff(module, name)}")
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
    seconds = {}
    for module in modules:
        print(f"mutating {module.name}: {', '.join(module.files)}", flush=True)
        seconds[module.name] = run(module, args.jobs)
    return 0 if report(modules, seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
