"""Repository polling: health follows what is loaded, new versions load without a restart, broken ones
are reported while the old version serves, a corrupt model leaves the others serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from cnnserve.serving.grpc.client import CnnserveClient, ServerError

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


def _states(client: CnnserveClient) -> dict[str, list[tuple[int, str, str]]]:
    return {m.name: [(v.version, v.state, v.reason) for v in m.versions] for m in client.list_models().models}


def test_empty_repository_then_a_model_appears(start_server, model_repository, tmp_path, digits) -> None:
    repo = tmp_path / "repo"
    server = start_server(repo)  # the folder does not even exist yet
    with CnnserveClient(server.address) as client:
        assert client.health() == "NOT_SERVING"
        repo.mkdir()
        server.poll()
        assert client.health() == "NOT_SERVING"
        shutil.copytree(model_repository / MODEL, repo / MODEL)
        server.poll()
        assert client.health() == "SERVING"
        assert client.health(MODEL) == "SERVING"
        assert client.classify(digits.png[:1], MODEL).version == 1
        assert server.metric("cnnserve_model_versions_available", {"model": MODEL}) == 1
        shutil.rmtree(repo / MODEL)
        server.poll()
        assert client.health() == "NOT_SERVING"
        assert client.health(MODEL) == "NOT_SERVING"
        assert server.metric("cnnserve_model_versions_available", {"model": MODEL}) == 0
        with pytest.raises(ServerError) as caught:
            client.classify(digits.png[:1], MODEL)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_new_version_is_served_and_a_broken_one_is_reported(start_server, repo_copy, digits) -> None:
    server = start_server(repo_copy)
    model_dir = repo_copy / MODEL
    with CnnserveClient(server.address) as client:
        before = client.classify(digits.png[:3], MODEL, top_k=2)
        shutil.copytree(model_dir / "1", model_dir / "2")
        server.poll()
        after = client.classify(digits.png[:3], MODEL, top_k=2)
        assert (after.version, client.metadata(MODEL).version) == (2, 2)
        assert after.predictions == before.predictions
        assert _states(client)[MODEL] == [(2, "AVAILABLE", "")]  # the policy serves the newest only
        with pytest.raises(ServerError) as caught:
            client.classify(digits.png[:1], MODEL, version=1)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

        (model_dir / "3").mkdir()
        (model_dir / "3" / "model.onnx").write_bytes(b"this is not an ONNX model")
        server.poll()
        states = _states(client)[MODEL]
        assert states[0] == (2, "AVAILABLE", "")
        assert states[1][:2] == (3, "UNAVAILABLE") and "model.onnx" in states[1][2]
        assert client.classify(digits.png[:1], MODEL).version == 2  # the old version keeps serving
        with pytest.raises(ServerError) as caught:
            client.classify(digits.png[:1], MODEL, version=3)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "model.onnx" in caught.value.message
        assert client.health(MODEL) == "SERVING"

        shutil.rmtree(model_dir / "3")  # the broken version withdrawn: back to version 2 alone
        server.poll()
        assert _states(client)[MODEL] == [(2, "AVAILABLE", "")]


def test_corrupt_models_are_unavailable_and_the_others_serve(start_server, repo_copy, digits) -> None:
    shutil.copytree(repo_copy / MODEL, repo_copy / "bad_onnx")
    config = (repo_copy / "bad_onnx" / "config.pbtxt").read_text().replace(f'"{MODEL}"', '"bad_onnx"', 1)
    (repo_copy / "bad_onnx" / "config.pbtxt").write_text(config)
    (repo_copy / "bad_onnx" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    shutil.copytree(repo_copy / MODEL, repo_copy / "bad_config")
    (repo_copy / "bad_config" / "config.pbtxt").write_text("name: 'bad_config'\nthis is { not pbtxt")
    server = start_server(repo_copy)
    with CnnserveClient(server.address) as client:
        states = _states(client)
        assert states[MODEL] == [(1, "AVAILABLE", "")]
        assert states["bad_onnx"][0][:2] == (1, "UNAVAILABLE") and "model.onnx" in states["bad_onnx"][0][2]
        assert states["bad_config"][0][1] == "UNAVAILABLE" and "config.pbtxt" in states["bad_config"][0][2]
        for name in ("bad_onnx", "bad_config"):
            with pytest.raises(ServerError) as caught:
                client.classify(digits.png[:1], name)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert client.health(name) == "NOT_SERVING"
        assert client.health() == "SERVING"
        assert len(client.classify(digits.png[:2], MODEL).predictions) == 2


def test_polling_runs_on_its_own(start_server, repo_copy: Path, digits) -> None:
    server = start_server(repo_copy, poll_interval=0.2)
    model_dir = repo_copy / MODEL
    shutil.copytree(model_dir / "1", model_dir / "5")
    with CnnserveClient(server.address) as client:
        import time

        deadline = time.monotonic() + 30
        while client.metadata(MODEL).version != 5:
            assert time.monotonic() < deadline, "version 5 was never loaded"
            time.sleep(0.1)
        assert client.classify(digits.png[:1], MODEL).version == 5


def test_a_model_folder_with_no_version_folder_is_unavailable_until_one_appears(
    start_server, repo_copy: Path, digits
) -> None:
    model_dir = repo_copy / MODEL
    shutil.move(model_dir / "1", repo_copy.parent / "version-1")
    server = start_server(repo_copy)
    with CnnserveClient(server.address) as client:
        # Clients read the folder relative to the repository: never the server's path.
        assert _states(client)[MODEL] == [(0, "UNAVAILABLE", f"no version folder in {MODEL}/")]
        assert client.health(MODEL) == "NOT_SERVING"
        with pytest.raises(ServerError) as caught:
            client.classify(digits.png[:1], MODEL)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.message == f"model {MODEL!r} is unavailable: no version folder in {MODEL}/"
        shutil.move(repo_copy.parent / "version-1", model_dir / "1")
        server.poll()
        assert _states(client)[MODEL] == [(1, "AVAILABLE", "")]
        assert client.classify(digits.png[:1], MODEL).version == 1


def test_a_failed_version_is_not_retried_until_its_files_change(
    start_server, repo_copy: Path, digits, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = repo_copy / MODEL
    caplog.set_level("INFO", logger="cnnserve.serving.core.registry")
    server = start_server(repo_copy)
    (model_dir / "2").mkdir()
    (model_dir / "2" / "model.onnx").write_bytes(b"this is not an ONNX model")

    def attempts() -> int:
        return sum(r.getMessage() == f"loading model {MODEL} version 2" for r in caplog.records)

    with CnnserveClient(server.address) as client:
        for _ in range(3):
            server.poll()
        assert attempts() == 1  # polled three times, loaded once: the same broken files are not retried
        assert _states(client)[MODEL][1][:2] == (2, "UNAVAILABLE")
        assert client.classify(digits.png[:1], MODEL).version == 1  # the newest loadable version serves
        shutil.copytree(model_dir / "1", model_dir / "2", dirs_exist_ok=True)  # repaired
        server.poll()
        assert attempts() == 2
        assert _states(client)[MODEL] == [(2, "AVAILABLE", "")]
        assert client.classify(digits.png[:1], MODEL).version == 2


def test_a_live_version_reexported_with_force_is_reloaded_without_a_failed_call(
    start_server, repo_copy: Path, digits
) -> None:
    """`cnnserve export --force` replaces the files of the version being served; the next poll loads them
    while calls keep being answered, by the old files until the new ones are in."""
    import threading

    from cnnserve.export.publish import publish_version
    from cnnserve.serving.model.repository import read_model_config

    model_dir = repo_copy / MODEL
    server = start_server(repo_copy)
    renamed = [f"digit {i}" for i in range(10)]
    errors: list[BaseException] = []
    labels_seen: set[str] = set()
    stop = threading.Event()

    def keep_calling() -> None:
        with CnnserveClient(server.address) as client:
            while not stop.is_set():
                try:
                    labels_seen.add(client.classify(digits.png[:2], MODEL).predictions[0][0].label)
                except BaseException as error:
                    errors.append(error)
                    return

    with CnnserveClient(server.address) as client:
        before = client.classify(digits.png[:4], MODEL)
        caller = threading.Thread(target=keep_calling)
        caller.start()
        try:
            staging = repo_copy.parent / "re-export"
            shutil.copytree(model_dir / "1", staging)
            files = {path.name: path for path in staging.iterdir()}
            publish_version(repo_copy, read_model_config(model_dir), renamed, files, version=1, force=True)
            server.poll()
            after = client.classify(digits.png[:4], MODEL)
        finally:
            stop.set()
            caller.join(30)
        assert not errors, errors[0]
        assert after.version == 1
        assert [p[0].label for p in after.predictions] == [f"digit {p[0].index}" for p in before.predictions]
        assert [p[0].index for p in after.predictions] == [p[0].index for p in before.predictions]
        assert _states(client)[MODEL] == [(1, "AVAILABLE", "")]
