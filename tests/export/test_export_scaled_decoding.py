"""Export turns DCT-scaled JPEG decoding on only when its parity check on real photographs holds, says so,
and records the figures; the command line can bound it or turn it off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_runs import fast_options, make_run

from cnnserve.cli import main
from cnnserve.export.exporter import export_run
from cnnserve.export.verify import Thresholds
from cnnserve.serving.model.repository import read_model_config

MODEL = "cats_dogs_small"  # RGB 64×64: the photos are decoded at 1/2 to 1/8 of their size
SMALL = "mnist_dense30"  # the zoo's smallest model, for the paths that turn it off


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("scaled-small") / "run", SMALL)


@pytest.fixture(scope="module")
def rgb_run(rgb_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("scaled") / "run", MODEL, data_root=rgb_data_root)


@pytest.mark.slow
def test_scaled_decoding_follows_its_parity_check(rgb_run: Path, tmp_path: Path) -> None:
    options = fast_options(photo_samples=3, gradcam=False)
    on = export_run(rgb_run, tmp_path / "repo", options).parity["scaled_decoding"]
    assert on["images"] == 3 and [p["dct_scale"] for p in on["photos"]] == [8, 2, 8]
    held = on["top1_agreement"] == 1.0 and on["max_abs_probability_difference"] <= 1e-2
    assert (
        on["enabled"] == held
        and read_model_config(tmp_path / "repo" / MODEL).preprocessing.scaled_decoding == held
    )
    assert on["reason"] == ("parity held within the bounds" if held else on["reason"])
    assert 0.0 < on["mean_abs_input_difference"] < 2 / 255


def test_a_bound_the_check_cannot_meet_exports_with_full_decoding(small_run: Path, tmp_path: Path) -> None:
    never = Thresholds(scaled_decoding_max_abs_probability_difference=0.0)
    result = export_run(small_run, tmp_path / "repo", fast_options(gradcam=False, thresholds=never))
    record = result.parity["scaled_decoding"]
    assert result.parity["passed"] is True and record["enabled"] is False
    assert record["reason"].startswith("parity outside the bounds: max abs probability difference")
    assert record["bounds"]["max_abs_probability_difference"] == 0.0
    assert read_model_config(tmp_path / "repo" / SMALL).preprocessing.scaled_decoding is False


def test_the_command_line_turns_it_off_and_says_why(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    arguments = ["export", str(small_run), "--repo", str(repo), "--samples", "16", "--image-samples", "1"]
    code = main([*arguments, "--photo-samples", "2", "--no-gradcam", "--no-scaled-decoding"])
    out = capsys.readouterr().out
    assert code == 0
    held = "scaled JPEG decoding off: parity held, but scaled decoding was turned off at export" in out
    assert held or "scaled JPEG decoding off: parity outside the bounds" in out
    assert "on 2 photo-sized JPEGs vs training preprocessing + Keras: top-1" in out
    assert json.loads((repo / SMALL / "1" / "parity.json").read_text())["scaled_decoding"]["enabled"] is False
    assert read_model_config(repo / SMALL).preprocessing.scaled_decoding is False
    assert main(["inspect", str(repo)]) == 0
    assert "decoding: every image in full, then resized" in capsys.readouterr().out
