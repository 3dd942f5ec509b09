"""The serving image's files, installed as its build stage does, import and run without TensorFlow."""

from __future__ import annotations

import filecmp
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from dockerimage import REPO_ROOT, ServingInstall, image_environment

pytestmark = pytest.mark.timeout(300)

# Imports every module of the serving install, then reports what got loaded and what is unreachable.
PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import cnnserve, cnnserve.serving, cnnserve.protos
    failed = {}
    for package in (cnnserve, cnnserve.serving, cnnserve.protos):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue  # runs the command line when imported
            try:
                importlib.import_module(info.name)
            except Exception as error:
                failed[info.name] = f"{type(error).__name__}: {error}"
    absent = {}
    for name in ("cnnserve.training", "cnnserve.export", "tensorflow", "keras", "tf2onnx", "onnx"):
        try:
            importlib.import_module(name)
            absent[name] = False
        except ModuleNotFoundError:
            absent[name] = True
    print(json.dumps({
        "failed": failed,
        "absent": absent,
        "loaded": sorted({m.split(".")[0] for m in sys.modules}),
        "cnnserve_file": cnnserve.__file__,
    }))
    """
)


def run_in_image(install: ServingInstall, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = image_environment(install.dockerfile.final, install)
    return subprocess.run(
        [str(install.python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=240
    )


def test_every_serving_module_imports_without_tensorflow(
    serving_install: ServingInstall, tmp_path: Path
) -> None:
    result = run_in_image(serving_install, "-c", PROBE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == {}, "modules of the serving image fail to import there:\n" + "\n".join(
        f"  {name}: {error}" for name, error in report["failed"].items()
    )
    assert all(report["absent"].values()), f"reachable in the serving image: {report['absent']}"
    for heavy in ("tensorflow", "keras", "tf2onnx", "onnx", "mlxtend", "matplotlib"):
        assert heavy not in report["loaded"], f"{heavy} was imported"
    assert report["cnnserve_file"].startswith(str(serving_install.venv)), report["cnnserve_file"]


def test_installed_files_are_the_repository_files(serving_install: ServingInstall) -> None:
    """What the image runs is byte for byte what the repository holds (and what the other tests run)."""
    site = next(serving_install.venv.glob("lib/python*/site-packages/cnnserve"))
    pairs = {"cnnserve": site, "serving": site / "serving", "protos": site / "protos"}
    compared = 0
    for folder, installed in pairs.items():
        sources = [*(REPO_ROOT / folder).rglob("*.py"), *(REPO_ROOT / folder).rglob("*.proto")]
        sources += [path for path in (REPO_ROOT / folder).rglob("static/*") if path.is_file()]  # the explorer
        for source in sources:
            if "__pycache__" in source.parts:
                continue
            relative = source.relative_to(REPO_ROOT / folder)
            target = installed / relative
            assert target.is_file(), f"{folder}/{relative} is not in the serving image"
            assert filecmp.cmp(source, target, shallow=False), f"{folder}/{relative} differs"
            compared += 1
    assert compared > 20
    assert not (site / "training").exists() and not (site / "export").exists()


def test_cli_offers_the_serving_commands_only(serving_install: ServingInstall, tmp_path: Path) -> None:
    env = image_environment(serving_install.dockerfile.final, serving_install)
    result = subprocess.run(
        ["cnnserve", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "classify", "activations", "classify-folder", "filters", "explain"):
        assert command in result.stdout
    for command in ("train", "export", "zoo"):
        assert f"\n    {command} " not in result.stdout, f"`{command}` offered by the serving image"


def test_dependencies_are_consistent(serving_install: ServingInstall, tmp_path: Path) -> None:
    """The build stage's `pip check`, on the same set of distributions."""
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(serving_install.python), "check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("project_file", ["pyproject.toml", "docker/serving-pyproject.toml"])
def test_every_serving_package_is_in_the_project_file(project_file: str) -> None:
    """A new folder under serving/ must be listed, or neither the wheel nor the image would contain it."""
    import tomllib

    serving = REPO_ROOT / "serving"
    expected = {
        ".".join(("cnnserve", "serving", *init.parent.relative_to(serving).parts))
        for init in serving.rglob("__init__.py")
    }
    listed = set(tomllib.loads((REPO_ROOT / project_file).read_text())["tool"]["setuptools"]["packages"])
    assert expected - listed == set(), f"{project_file} does not list {sorted(expected - listed)}"
