"""A request's images as the model's input batch: encoded bytes decoded, raw tensors checked, limits kept.

Every invalid input raises InvalidRequestError naming the image index. A tiny request is decoded inline,
where a thread hop would cost more than the decode (and a tiny Classify request is decoded when its batch
starts, back to back with the batch's other images, whose decoder code and tables are then still in the
CPU's caches: see the data plane). A big one is decoded either in an executor, where Pillow's decoders run
in parallel with the GIL released (a worker process with several cores to itself), or on the event loop a
slice at a time, yielding between slices so other calls go on (a worker per core: a second thread adds no
core, only GIL hand-offs with the event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import ImageDecodeError, InvalidRequestError
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.settings import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS

# A request whose encoded images total fewer bytes than this is decoded on the event loop in one go.
INLINE_DECODE_BYTES = 8_192
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


@dataclass(frozen=True)
class RawTensor:
    """An already preprocessed image as it came off the wire: dtype, shape, little-endian C-order bytes."""

    data_type: int  # model_config_pb2.DataType
    shape: tuple[int, ...]
    data: bytes


ImageInput = bytes | RawTensor | np.ndarray


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
    return np.frombuffer(tensor.data, dtype="<f4").reshape(spec.input_dims)


def image_array(image: ImageInput, spec: PreprocessSpec, index: int, max_pixels: int) -> np.ndarray:
    """One request image as the model's float32 input (without the batch dimension)."""
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            return preprocess_encoded(bytes(image), spec, max_pixels)
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
        return image
    raise InvalidRequestError(f"image {index}: no image content (neither encoded bytes nor a tensor)", index)


def check_count(images: Sequence[ImageInput], limits: RequestLimits) -> None:
    if not images:
        raise InvalidRequestError("the request holds no image")
    if len(images) > limits.max_images:
        raise InvalidRequestError(
            f"the request holds {len(images)} images, more than the limit of {limits.max_images} per request"
        )


def build_batch(images: Sequence[ImageInput], spec: PreprocessSpec, limits: RequestLimits) -> np.ndarray:
    """Decode/validate every image into one (N, *input_dims) float32 batch."""
    check_count(images, limits)
    if len(images) == 1:
        return image_array(images[0], spec, 0, limits.max_pixels)[np.newaxis]
    batch = np.empty((len(images), *spec.input_dims), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = image_array(image, spec, index, limits.max_pixels)
    return batch


async def prepare_batch(
    images: Sequence[ImageInput], spec: PreprocessSpec, limits: RequestLimits, executor: Executor | None
) -> np.ndarray:
    """build_batch: inline if the request is tiny, else in `executor`, or on the loop in slices (None)."""
    check_count(images, limits)
    if encoded_bytes(images) <= INLINE_DECODE_BYTES:
        return build_batch(images, spec, limits)
    return await build_big_batch(images, spec, limits, executor)


async def build_big_batch(
    images: Sequence[ImageInput], spec: PreprocessSpec, limits: RequestLimits, executor: Executor | None
) -> np.ndarray:
    """build_batch for a request past INLINE_DECODE_BYTES: in `executor`, or on the loop in slices (None)."""
    if executor is None:
        return await _build_batch_in_slices(images, spec, limits)
    return await asyncio.get_running_loop().run_in_executor(executor, build_batch, images, spec, limits)


def encoded_bytes(images: Sequence[ImageInput]) -> int:
    return sum(len(image) for image in images if isinstance(image, bytes))


async def _build_batch_in_slices(
    images: Sequence[ImageInput], spec: PreprocessSpec, limits: RequestLimits
) -> np.ndarray:
    """build_batch on the event loop, letting other callbacks run every DECODE_SLICE_S."""
    batch = np.empty((len(images), *spec.input_dims), dtype=np.float32)
    slice_end = time.perf_counter() + DECODE_SLICE_S
    for index, image in enumerate(images):
        batch[index] = image_array(image, spec, index, limits.max_pixels)
        if time.perf_counter() >= slice_end:
            await asyncio.sleep(0)
            slice_end = time.perf_counter() + DECODE_SLICE_S
    return batch
