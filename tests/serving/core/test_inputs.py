"""Decoding a request's images: inline, in the executor, or on the event loop in slices."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cnnserve.serving.batching import loop_load
from cnnserve.serving.core import inputs
from cnnserve.serving.core.inputs import RequestLimits, build_batch, prepare_batch
from cnnserve.serving.errors import DeadlineExpiredError, InvalidRequestError
from cnnserve.serving.grpc.server import InferenceServer
from cnnserve.serving.model.preprocessing import PreprocessSpec
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.settings import ServerSettings

MODEL = "mnist_cnn"


@pytest.fixture(scope="module")
def spec(model_repository: Path) -> PreprocessSpec:
    return PreprocessSpec.from_model_config(open_model_version(model_repository, MODEL).config)


def _big_request(digits) -> list[bytes]:
    images = (digits.png * 64)[:64]
    assert sum(map(len, images)) > inputs.INLINE_DECODE_BYTES  # not the inline path
    return images


def test_decoding_on_the_loop_in_slices_lets_other_calls_run(
    digits, spec: PreprocessSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "DECODE_SLICE_S", 0.0)  # yield after every image
    images = _big_request(digits)
    limits = RequestLimits()

    async def scenario() -> tuple[np.ndarray, int]:
        ticks = 0
        done = False

        async def other_call() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        other = asyncio.ensure_future(other_call())
        await asyncio.sleep(0)
        batch = await prepare_batch(images, spec, limits, None)
        done = True
        await other
        return batch, ticks

    batch, ticks = asyncio.run(scenario())
    np.testing.assert_array_equal(batch, build_batch(images, spec, limits))
    assert ticks >= len(images) - 1  # the other coroutine ran between the images


@pytest.mark.parametrize("where", ["loop", "executor"])
def test_a_bad_image_in_a_big_request_names_its_index(digits, spec: PreprocessSpec, where: str) -> None:
    images = _big_request(digits)
    images[37] = b"\x89PNG\r\n\x1a\n not really"

    async def scenario(executor: ThreadPoolExecutor | None) -> None:
        await prepare_batch(images, spec, RequestLimits(), executor)

    with ThreadPoolExecutor(1) as executor, pytest.raises(InvalidRequestError, match="image 37") as error:
        asyncio.run(scenario(executor if where == "executor" else None))
    assert error.value.index == 37


@pytest.mark.parametrize(("workers", "cpus", "on_loop"), [(2, 2, True), (4, 2, True), (1, 2, False)])
def test_a_worker_with_one_core_decodes_and_runs_quick_batches_on_its_loop(
    model_repository: Path, workers: int, cpus: int, on_loop: bool
) -> None:
    server = InferenceServer(ServerSettings(repo=model_repository, workers=workers), cpu_count=cpus)
    assert (server.dataplane.decode_executor is None) is on_loop
    assert (server.registry.overrides.inline_compute_s > 0) is on_loop  # quick batches on the loop too
    server.executor.shutdown()


def test_a_server_on_a_metered_loop_hands_its_batchers_the_loop_load(model_repository: Path) -> None:
    async def scenario():
        settings = ServerSettings(repo=model_repository, host="127.0.0.1", port=0, workers=1)
        server = InferenceServer(settings, cpu_count=1)
        await server.start()
        try:
            return server.registry.get(MODEL).batcher
        finally:
            await server.stop(0)

    with asyncio.Runner(loop_factory=loop_load.new_event_loop) as runner:  # as run_server makes it
        batcher = runner.run(scenario())
    load = batcher.policy.load  # type: ignore[attr-defined]
    assert load is not None and 0.0 <= load() <= 1.0
    assert batcher.settings.inline_compute_s > 0  # one core, a CPU session: quick batches on the loop


def test_a_request_whose_deadline_passed_is_not_decoded(digits, spec: PreprocessSpec) -> None:
    """The last image's header is sound but its pixel data broken: had the images been decoded, the
    answer would name it."""
    broken = bytearray(digits.png[0])
    broken[-30:-14] = bytes(16)
    images = [*_big_request(digits), bytes(broken)]

    async def scenario(executor: ThreadPoolExecutor | None) -> None:
        past = asyncio.get_running_loop().time() - 1
        await prepare_batch(images, spec, RequestLimits(), executor, deadline=past)

    for executor in (None, ThreadPoolExecutor(1)):
        with pytest.raises(DeadlineExpiredError):
            asyncio.run(scenario(executor))


def test_non_finite_tensors_are_refused_naming_the_image(spec: PreprocessSpec) -> None:
    good = np.zeros(spec.input_dims, dtype=np.float32)
    bad = good.copy()
    bad.flat[3] = np.nan
    with pytest.raises(InvalidRequestError, match="image 1: the tensor holds 1 values that are not finite"):
        build_batch([good, bad], spec, RequestLimits())


def test_a_request_over_its_pixel_budget_is_refused_from_the_headers(spec: PreprocessSpec) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buffer, format="PNG")
    limits = RequestLimits(max_pixels=1_000_000, max_request_pixels=2_500_000)
    with pytest.raises(InvalidRequestError, match=r"declare 3,000,000 pixels in all.*--max-request-pixels"):
        asyncio.run(prepare_batch([buffer.getvalue()] * 3, spec, limits, None))
