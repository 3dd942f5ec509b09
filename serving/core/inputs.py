"""A request's images as the model's input batch: encoded bytes decoded, raw tensors checked, limits kept.

Every invalid input raises InvalidRequestError naming the image index: an undecodable image, a tensor of
the wrong type or shape, or one holding NaN or infinity. Encoded images are first opened to read their
headers only, so that what a request would cost is known before any pixel is decoded: an image over
`max_pixels`, or a request whose images declare more than `max_request_pixels` in all, is refused
then, and a request that will be decoded holds its pixels of the worker's `DecodeBudget` while it is
(big requests take turns). A request whose deadline passes before its images are decoded is dropped.

A tiny request is decoded inline, where a thread hop would cost more than the decode (and a tiny Classify
request is decoded when its batch starts, back to back with the batch's other images, whose decoder code
and tables are then still in the CPU's caches: see the data plane). A big one is decoded either in an
executor, where Pillow's decoders run in parallel with the GIL released (a worker process with several
cores to itself), or on the event loop a slice at a time, yielding between slices so other calls go on
(a worker per core: a second thread adds no core, only GIL hand-offs with the event loop). Whatever the
worker, an image declaring more than BIG_IMAGE_PIXELS is decoded in the executor: one such decode cannot
be sliced and would stall the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from cnnserve.protos import model_config_pb2
from cnnserve.serving.core.decode_budget import DecodeBudget
from cnnserve.serving.errors import DeadlineExpiredError, ImageDecodeError, InvalidRequestError
from cnnserve.serving.model.decoding import Header, decode, open_header
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_decoded
from cnnserve.serving.settings import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

# A request whose encoded images total fewer bytes than this, and declare fewer pixels than
# INLINE_DECODE_PIXELS, is decoded on the event loop in one go.
INLINE_DECODE_BYTES = 8_192
INLINE_DECODE_PIXELS = 1_000_000
# An image declaring more pixels than this is decoded in the executor, never on the event loop.
BIG_IMAGE_PIXELS = 1_000_000
# Decoding on the event loop yields to other callbacks after about this long.
DECODE_SLICE_S = 0.001

NUMPY_DTYPES: dict[int, np.dtype] = {
    model_config_pb2.TYPE_FP32: np.dtype("<f4"),
    model_config_pb2.TYPE_FP16: np.dtype("<f2"),
    model_config_pb2.TYPE_UINT8: np.dtype("u1"),
    model_config_pb2.TYPE_INT32: np.dtype("<i4"),
    model_config_pb2.TYPE_INT64: np.dtype("<i8"),
}


@dataclass(frozen=True)
class RequestLimits:
    max_images: int = DEFAULT_MAX_IMAGES  # images per request
    max_pixels: int = DEFAULT_MAX_PIXELS  # pixels per image, checked from the header before decoding
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # pixels of all of a request's images


@dataclass(frozen=True)
class RawTensor:
    """An already preprocessed image as it came off the wire: dtype, shape, little-endian C-order bytes."""

    data_type: int  # model_config_pb2.DataType
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class OpenedImage:
    """An encoded image whose header has been read: its size is known, its pixels not decoded yet."""

    image: Header
    pixels: int


ImageInput = bytes | RawTensor | np.ndarray | OpenedImage


def _dtype_name(data_type: int) -> str:
    try:
        return model_config_pb2.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def tensor_array(tensor: RawTensor, spec: PreprocessSpec, index: int) -> np.ndarray:
    """A zero-copy float32 view of a raw tensor, after checking dtype, shape and byte length."""
    if tensor.data_type != model_config_pb2.TYPE_FP32:
        raise InvalidRequestError(
            f"image {index}: tensor has data type {_dtype_name(tensor.data_type)}, the model takes TYPE_FP32",
            index,
        )
    if tensor.shape != spec.input_dims:
        raise InvalidRequestError(
            f"image {index}: tensor has shape {list(tensor.shape)}, the model takes {list(spec.input_dims)}",
            index,
        )
    expected = int(np.prod(spec.input_dims)) * 4
    if len(tensor.data) != expected:
        raise InvalidRequestError(
            f"image {index}: tensor holds {len(tensor.data)} bytes, shape {list(tensor.shape)} of "
            f"TYPE_FP32 needs {expected}",
            index,
        )
    return check_finite(np.frombuffer(tensor.data, dtype="<f4").reshape(spec.input_dims), index)


def check_finite(array: np.ndarray, index: int) -> np.ndarray:
    """The array, if every value is finite: NaN or infinity in an input would be answered as garbage."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InvalidRequestError(
            f"image {index}: the tensor holds {array.size - int(np.count_nonzero(finite))} values that are "
            "not finite (NaN or infinity); every input value must be a finite number",
            index,
        )
    return array


def check_finite_batch(batch: np.ndarray) -> np.ndarray:
    """A batch of tensors (first axis: images), if every value is finite; else the first bad image named."""
    finite = np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        check_finite(batch[index], index)
    return batch


def open_image_header(image: bytes, index: int, max_pixels: int) -> OpenedImage:
    try:
        opened = open_header(bytes(image), max_pixels)
    except ImageDecodeError as error:
        raise InvalidRequestError(f"image {index}: {error}", index) from error
    width, height = opened.size
    return OpenedImage(opened, width * height)


def open_headers(images: Sequence[ImageInput], limits: RequestLimits) -> tuple[list[ImageInput], int]:
    """Every encoded image opened to its header (OpenedImage), and the pixels they declare in all; a
    request declaring more than `limits.max_request_pixels` is refused before any pixel is decoded."""
    opened: list[ImageInput] = []
    pixels = 0
    for index, image in enumerate(images):
        if isinstance(image, bytes | bytearray | memoryview):
            image = open_image_header(bytes(image), index, limits.max_pixels)
        if isinstance(image, OpenedImage):
            pixels += image.pixels
        opened.append(image)
    if pixels > limits.max_request_pixels:
        raise InvalidRequestError(
            f"the request's {len(images)} images declare {pixels:,} pixels in all, more than the limit of "
            f"{limits.max_request_pixels:,} pixels per request (--max-request-pixels)"
        )
    return opened, pixels


def image_array(image: ImageInput, spec: PreprocessSpec, index: int, max_pixels: int) -> np.ndarray:
    """One request image as the model's float32 input (without the batch dimension)."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = open_image_header(bytes(image), index, max_pixels)
    if isinstance(image, OpenedImage):
        try:
            return preprocess_decoded(decode(image.image, spec.min_decoded_size), spec)
        except ImageDecodeError as error:
            raise InvalidRequestError(f"image {index}: {error}", index) from error
    if isinstance(image, RawTensor):
        return tensor_array(image, spec, index)
    if isinstance(image, np.ndarray):
        if image.dtype != np.float32 or image.shape != spec.input_dims:
            raise InvalidRequestError(
                f"image {index}: array of {image.dtype} {list(image.shape)}, the model takes float32 "
                f"{list(spec.input_dims)}",
                index,
            )
        return check_finite(image, index)
    raise InvalidRequestError(f"image {index}: no image content (neither encoded bytes nor a tensor)", index)


def check_count(images: Sequence[ImageInput], limits: RequestLimits) -> None:
    if not images:
        raise InvalidRequestError("the request holds no image")
    if len(images) > limits.max_images:
        raise InvalidRequestError(
            f"the request holds {len(images)} images, more than the limit of {limits.max_images} per request"
        )


def build_batch(
    images: Sequence[ImageInput], spec: PreprocessSpec, limits: RequestLimits, deadline: float | None = None
) -> np.ndarray:
    """Decode/validate every image into one (N, *input_dims) float32 batch; `deadline` (time.monotonic)
    passed before an image is decoded drops the request."""
    check_count(images, limits)
    if len(images) == 1:
        _check_deadline(deadline)
        return image_array(images[0], spec, 0, limits.max_pixels)[np.newaxis]
    batch = np.empty((len(images), *spec.input_dims), dtype=np.float32)
    for index, image in enumerate(images):
        _check_deadline(deadline)
        batch[index] = image_array(image, spec, index, limits.max_pixels)
    return batch


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExpiredError("the deadline passed before the request's images were decoded")


def monotonic_deadline(deadline: float | None) -> float | None:
    """An event-loop deadline as a time.monotonic() one, which threads can check."""
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time() + time.monotonic()


def is_small(images: Sequence[ImageInput], pixels: int) -> bool:
    """Whether a request (its headers read) is decoded on the event loop in one go."""
    return encoded_bytes(images) <= INLINE_DECODE_BYTES and pixels <= INLINE_DECODE_PIXELS


async def prepare_batch(
    images: Sequence[ImageInput],
    spec: PreprocessSpec,
    limits: RequestLimits,
    executor: Executor | None,
    *,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
    offload: Executor | None = None,
) -> np.ndarray:
    """build_batch: inline if the request is tiny, else in `executor`, or on the loop in slices (None;
    its big images then in `offload`); `deadline` is event-loop time."""
    check_count(images, limits)
    opened, pixels = open_headers(images, limits)
    if is_small(images, pixels):
        return build_batch(opened, spec, limits)
    return await build_big_batch(
        opened, pixels, spec, limits, executor, budget=budget, deadline=deadline, offload=offload
    )


async def build_big_batch(
    images: Sequence[ImageInput],
    pixels: int,
    spec: PreprocessSpec,
    limits: RequestLimits,
    executor: Executor | None,
    *,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
    offload: Executor | None = None,
) -> np.ndarray:
    """build_batch for a request past the inline size (headers read, declaring `pixels`), holding its
    pixels of `budget` meanwhile: in `executor`, or on the loop in slices (None)."""
    if budget is None:
        return await _build_big_batch(images, spec, limits, executor, deadline, offload)
    async with budget.hold(pixels, deadline):
        return await _build_big_batch(images, spec, limits, executor, deadline, offload)


async def _build_big_batch(
    images: Sequence[ImageInput],
    spec: PreprocessSpec,
    limits: RequestLimits,
    executor: Executor | None,
    deadline: float | None,
    offload: Executor | None,
) -> np.ndarray:
    if executor is None:
        return await _build_batch_in_slices(images, spec, limits, deadline, offload)
    return await asyncio.get_running_loop().run_in_executor(
        executor, build_batch, images, spec, limits, monotonic_deadline(deadline)
    )


def encoded_bytes(images: Sequence[ImageInput]) -> int:
    return sum(len(image) for image in images if isinstance(image, bytes))


async def _build_batch_in_slices(
    images: Sequence[ImageInput],
    spec: PreprocessSpec,
    limits: RequestLimits,
    deadline: float | None,
    offload: Executor | None,
) -> np.ndarray:
    """build_batch on the event loop, letting other callbacks run every DECODE_SLICE_S; an image past
    BIG_IMAGE_PIXELS is decoded in `offload` (when given) while the loop goes on."""
    loop = asyncio.get_running_loop()
    batch = np.empty((len(images), *spec.input_dims), dtype=np.float32)
    slice_end = time.perf_counter() + DECODE_SLICE_S
    for index, image in enumerate(images):
        if deadline is not None and loop.time() > deadline:
            raise DeadlineExpiredError("the deadline passed before the request's images were decoded")
        if offload is not None and isinstance(image, OpenedImage) and image.pixels > BIG_IMAGE_PIXELS:
            batch[index] = await loop.run_in_executor(
                offload, image_array, image, spec, index, limits.max_pixels
            )
            slice_end = time.perf_counter() + DECODE_SLICE_S
            continue
        batch[index] = image_array(image, spec, index, limits.max_pixels)
        if time.perf_counter() >= slice_end:
            await asyncio.sleep(0)
            slice_end = time.perf_counter() + DECODE_SLICE_S
    return batch
