"""The reliability harness: seeded mutators, hostile requests for every RPC, a real server process, probes.

Shared by the fast tests beside this file (a few hundred payloads, a few kills) and by
`bench/reliability.py` (the long runs whose figures are published), so both judge the server by the
same rules:

- `Mutator`: seeded byte-level mutation of encoded images (bit flips, interesting bytes, cut, splice,
  repeated chunks) plus format-aware edits that keep the checksums right (a PNG IHDR with new
  dimensions and a valid CRC) so the decoders are reached, not just the CRC check;
- `hostile_requests`: for every cnnserve.v1 RPC, requests with mutated fields (odd names, huge names,
  non-finite tensors, wrong shapes, bad options) and raw request bytes (a valid message mutated on the
  wire);
- `verdict`: what counts as a failure of the server: INTERNAL, UNKNOWN, CANCELLED or DATA_LOSS, a stack
  trace, a heap address, a server path or a Python class name in a message, a NaN in an answer;
- `ServerProcess`: `cnnserve serve` in its own process group, with its workers' pids, RSS and fds;
- `kill_job_until_done`: SIGKILL `cnnserve classify-folder` at seeded random moments, rerun it until it
  finishes, and count the rows lost and duplicated.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from cnnserve.protos import inference_pb2, inference_pb2_grpc, model_config_pb2

SERVICE = "/cnnserve.v1.InferenceService/"
RPCS = ("Classify", "GetActivations", "GetFilters", "Explain", "ListModels", "GetModelMetadata")
REQUEST_TYPES: dict[str, type[Any]] = {
    "Classify": inference_pb2.ClassifyRequest,
    "GetActivations": inference_pb2.ActivationsRequest,
    "GetFilters": inference_pb2.FiltersRequest,
    "Explain": inference_pb2.ExplainRequest,
    "ListModels": inference_pb2.ListModelsRequest,
    "GetModelMetadata": inference_pb2.ModelMetadataRequest,
}
# Codes a server may answer a hostile request with; anything else is a server fault.
FAULT_CODES = {"INTERNAL", "UNKNOWN", "CANCELLED", "DATA_LOSS"}
# "at 0x7f..." in a repr; not the "x" between an image's two dimensions ("36520x2691629084").
HEAP_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}")
CLASS_NAME = re.compile(r"<class '|google\.protobuf|Traceback|File \"")
MAX_MESSAGE_CHARS = 2048
MODEL = "mnist_cnn"


# ------------------------------------------------------------------------------------------------
# Seed images and the mutator
# ------------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seed_images(pixels: Sequence[np.ndarray]) -> list[bytes]:
    """Valid images of many kinds from 28x28 greyscale digits: the mutator's starting points."""
    seeds: list[bytes] = []
    for index, array in enumerate(pixels):
        grey = Image.fromarray(np.asarray(array, dtype=np.uint8).reshape(28, 28), "L")
        kind = index % 8
        if kind == 0:
            seeds.append(encode(grey, "PNG"))
        elif kind == 1:
            seeds.append(encode(grey, "JPEG", quality=90))
        elif kind == 2:
            seeds.append(encode(grey.convert("RGB").resize((56, 56)), "JPEG", progressive=True))
        elif kind == 3:
            wide = np.asarray(grey, dtype=np.uint16) * 257
            seeds.append(encode(Image.fromarray(wide), "PNG"))  # 16-bit greyscale
        elif kind == 4:
            seeds.append(encode(grey.convert("P"), "GIF"))
        elif kind == 5:
            seeds.append(encode(grey.convert("RGBA"), "PNG"))
        elif kind == 6:
            seeds.append(encode(grey, "BMP"))
        else:
            seeds.append(encode(grey.convert("RGB"), "WEBP", quality=80))
    return seeds


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def big_png(width: int, height: int, bits: int = 8) -> bytes:
    """A valid PNG of a large blank image, compressed to almost nothing (a decompression bomb)."""
    row_bytes = width * (2 if bits == 16 else 1)
    raw = zlib.compress(bytes((row_bytes + 1) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")
    )


class Mutator:
    """Seeded mutations of encoded images; the same seed gives the same payloads."""

    INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)

    def __init__(self, seed: int, seeds: Sequence[bytes]) -> None:
        self.random = random.Random(seed)
        self.seeds = list(seeds)

    def image(self) -> bytes:
        data = bytearray(self.random.choice(self.seeds))
        for _ in range(self.random.choice((1, 1, 2, 3, 8))):
            data = self.mutate(data)
        return bytes(data)

    def mutate(self, data: bytearray) -> bytearray:
        r = self.random
        operation = r.randrange(9)
        if not data:
            return bytearray(r.randbytes(r.randrange(1, 64)))
        position = r.randrange(len(data))
        if operation == 0:  # flip a bit
            data[position] ^= 1 << r.randrange(8)
        elif operation == 1:  # an interesting byte
            data[position] = r.choice(self.INTERESTING)
        elif operation == 2:  # cut the tail
            del data[position:]
        elif operation == 3:  # drop a chunk
            del data[position : position + r.randrange(1, 64)]
        elif operation == 4:  # repeat a chunk
            chunk = data[position : position + r.randrange(1, 64)]
            data[position:position] = chunk * r.randrange(1, 16)
        elif operation == 5:  # random bytes
            data[position : position + 4] = r.randbytes(4)
        elif operation == 6:  # splice another seed in
            other = r.choice(self.seeds)
            data = data[:position] + bytearray(other[r.randrange(len(other)) :])
        elif operation == 7:  # new PNG dimensions with a valid CRC (reaches the decoder)
            data = self._png_dimensions(data)
        else:  # a 32-bit field set to a boundary value
            data[position : position + 4] = struct.pack(">I", r.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF)))
        return data

    def _png_dimensions(self, data: bytearray) -> bytearray:
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 33 or data[12:16] != b"IHDR":
            return data
        r = self.random
        width = r.choice((0, 1, 27, 29, 4096, 65535, 1 << 20))
        height = r.choice((0, 1, 27, 29, 4096, 65535, 1 << 20))
        body = struct.pack(">II", width, height) + bytes(data[24:29])
        data[16:29] = body
        data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body))
        return data


# ------------------------------------------------------------------------------------------------
# Hostile requests for every RPC
# ------------------------------------------------------------------------------------------------


def tensor_image(array: np.ndarray, data_type: int = model_config_pb2.TYPE_FP32) -> inference_pb2.Image:
    array = np.ascontiguousarray(array)
    return inference_pb2.Image(
        tensor=inference_pb2.Tensor(data_type=data_type, shape=list(array.shape), data=array.tobytes())
    )


@dataclass(frozen=True)
class HostileRequest:
    """One payload: an RPC name and either a request message or raw request bytes."""

    rpc: str
    message: Any = None
    raw: bytes | None = None
    what: str = ""

    def wire_bytes(self) -> bytes:
        return self.raw if self.raw is not None else self.message.SerializeToString()


class RequestFuzzer:
    """Seeded hostile requests for every RPC of cnnserve.v1 against one model."""

    def __init__(self, seed: int, model: str, layers: Sequence[str], mutator: Mutator) -> None:
        self.random = random.Random(seed)
        self.model = model
        self.layers = list(layers)
        self.mutator = mutator

    def _name(self, real: str) -> str:
        r = self.random
        return r.choice(
            (
                real,
                real,
                real,
                real,
                real,
                real,
                real,
                "",
                real + "\0",
                real.upper(),
                "../" + real,
                "é" * r.randrange(1, 300),
                "m" * r.choice((257, 4096, 1_000_000)),
                "%s%n\x7f",
            )
        )

    def _image(self) -> inference_pb2.Image:
        r = self.random
        kind = r.randrange(6)
        if kind <= 2:
            return inference_pb2.Image(encoded=self.mutator.image())
        if kind == 3:  # a tensor with non-finite or huge values
            values = np.zeros((28, 28, 1), dtype="<f4")
            values.flat[r.randrange(values.size)] = r.choice(
                (float("nan"), float("inf"), -float("inf"), 3e38)
            )
            return tensor_image(values)
        if kind == 4:  # a tensor of the wrong shape, type or length
            shape = r.choice(([28, 28], [28, 28, 1, 1], [0], [1 << 30, 1 << 30], [28, 28, 3]))
            image = tensor_image(np.zeros((28, 28, 1), dtype="<f4"))
            del image.tensor.shape[:]
            image.tensor.shape.extend(shape)
            image.tensor.data_type = r.choice(
                (model_config_pb2.TYPE_FP32, 0, 99, model_config_pb2.TYPE_UINT8)
            )
            return image
        return inference_pb2.Image()  # no content

    def request(self) -> HostileRequest:
        r = self.random
        rpc = r.choice(RPCS)
        message = self._message(rpc)
        if r.random() < 0.35:  # raw bytes: the message mutated on the wire
            raw = bytearray(message.SerializeToString())
            for _ in range(r.randrange(1, 4)):
                raw = self.mutator.mutate(raw)
            return HostileRequest(rpc, raw=bytes(raw), what="raw")
        return HostileRequest(rpc, message=message, what="message")

    def _message(self, rpc: str) -> Any:
        r = self.random
        version = r.choice((0, 0, 0, 1, 2, -1, 1 << 40))
        model = self._name(self.model)
        images = [self._image() for _ in range(r.choice((0, 1, 1, 1, 2, 3)))]
        if rpc == "Classify":
            return inference_pb2.ClassifyRequest(
                model=model, version=version, images=images, top_k=r.choice((0, 1, 3, 10, 11, -1, 1 << 30))
            )
        if rpc == "GetActivations":
            layers = [self._name(r.choice(self.layers)) for _ in range(r.randrange(0, 3))]
            return inference_pb2.ActivationsRequest(
                model=model, version=version, images=images, layers=layers, mosaic=r.random() < 0.3
            )
        if rpc == "GetFilters":
            return inference_pb2.FiltersRequest(
                model=model,
                version=version,
                layer=self._name(r.choice(self.layers)),
                mosaic=r.random() < 0.5,
                input_channel=r.choice((-1, 0, 1, 1000, -5)),
            )
        if rpc == "Explain":
            request = inference_pb2.ExplainRequest(
                model=model, version=version, image=self._image(), overlay=r.random() < 0.3
            )
            request.method = r.choice((0, 1, 2, 77))
            request.occlusion.patch_size = r.choice((0, 0, 1, 7, 28, 29, -1))
            request.occlusion.stride = r.choice((0, 0, 1, 7, 100, -3))
            request.occlusion.fill_value = r.choice((0.0, 0.5, float("nan"), float("inf"), 3e38, -3e38))
            if r.random() < 0.5:
                request.target_class = r.choice((0, 9, 10, -1, 1 << 30))
            return request
        if rpc == "ListModels":
            return inference_pb2.ListModelsRequest()
        return inference_pb2.ModelMetadataRequest(model=model, version=version)


# ------------------------------------------------------------------------------------------------
# Calling and judging
# ------------------------------------------------------------------------------------------------


CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def stub(address: str) -> inference_pb2_grpc.InferenceServiceStub:
    """A stub on a channel of its own (closed when the stub is garbage collected)."""
    return stub_on(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))


def stub_on(channel: grpc.Channel) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(channel)


def classify_request(*images: inference_pb2.Image, model: str = MODEL) -> inference_pb2.ClassifyRequest:
    return inference_pb2.ClassifyRequest(model=model, images=list(images))


def status_of(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """(code name, details) of a call; ('OK', '') when it succeeded."""
    try:
        function(*args, **kwargs)
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""  # type: ignore[attr-defined]
    return "OK", ""


# ------------------------------------------------------------------------------------------------
# Judging
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    rpc: str
    code: str
    message: str
    response: bytes = b""
    what: str = ""


def raw_callables(channel: grpc.Channel) -> dict[str, Callable[..., Any]]:
    """Every RPC as a callable taking and returning raw bytes (no client-side (de)serialisation)."""
    return {
        rpc: channel.unary_unary(SERVICE + rpc, request_serializer=None, response_deserializer=None)
        for rpc in RPCS
    }


def call(callables: dict[str, Callable[..., Any]], request: HostileRequest, timeout: float = 30.0) -> Outcome:
    try:
        response = callables[request.rpc](request.wire_bytes(), timeout=timeout)
    except grpc.RpcError as error:
        return Outcome(request.rpc, error.code().name, error.details() or "", what=request.what)  # type: ignore[attr-defined]
    return Outcome(request.rpc, "OK", "", bytes(response), request.what)


RESPONSE_TYPES: dict[str, type[Any]] = {
    "Classify": inference_pb2.ClassifyResponse,
    "GetActivations": inference_pb2.ActivationsResponse,
    "GetFilters": inference_pb2.FiltersResponse,
    "Explain": inference_pb2.ExplainResponse,
    "ListModels": inference_pb2.ListModelsResponse,
    "GetModelMetadata": inference_pb2.ModelMetadataResponse,
}


def _non_finite_in(rpc: str, response: bytes) -> bool:
    if rpc not in RESPONSE_TYPES:  # another service's answer: its own tests judge its values
        return False
    message = RESPONSE_TYPES[rpc].FromString(response)
    if rpc == "Classify":
        return any(not np.isfinite(p.score) for c in message.results for p in c.predictions)
    if rpc == "Explain":
        heat = np.frombuffer(message.heatmap.data, dtype="<f4")
        return not np.isfinite(message.target.score) or not np.isfinite(heat).all()
    if rpc == "GetActivations":
        return any(
            not np.isfinite(np.frombuffer(layer.activations.data, "<f4")).all() for layer in message.layers
        )
    return False


def verdict(outcome: Outcome, server_paths: Sequence[str] = ()) -> str:
    """Why this outcome is a server fault ('' when it is a fair answer)."""
    if outcome.code in FAULT_CODES:
        return f"status {outcome.code}"
    text = outcome.message
    if len(text) > MAX_MESSAGE_CHARS:
        return f"a message of {len(text)} characters"
    if HEAP_ADDRESS.search(text):
        return "a heap address in the message"
    if CLASS_NAME.search(text):
        return "a stack trace or class name in the message"
    for path in server_paths:
        if path and path in text:
            return f"the server path {path} in the message"
    if outcome.code == "OK" and _non_finite_in(outcome.rpc, outcome.response):
        return "a non-finite value in an OK answer"
    if outcome.code == "OK" and outcome.rpc == "GetModelMetadata":
        metadata = inference_pb2.ModelMetadataResponse.FromString(outcome.response)
        for path in server_paths:
            if path and path in str(metadata):
                return f"the server path {path} in the metadata"
    return ""


@dataclass
class FuzzTally:
    """What a fuzz run saw: payloads, codes, and the faults with the payload that caused each."""

    payloads: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    faults: list[tuple[str, Outcome, bytes]] = field(default_factory=list)

    def add(self, request: HostileRequest, outcome: Outcome, server_paths: Sequence[str]) -> None:
        self.payloads += 1
        self.codes[outcome.code] += 1
        reason = verdict(outcome, server_paths)
        if reason:
            self.faults.append((reason, outcome, request.wire_bytes()[:256]))

    def summary(self) -> str:
        codes = ", ".join(f"{code} {count}" for code, count in sorted(self.codes.items()))
        return f"{self.payloads} payloads ({codes}); {len(self.faults)} faults"


def fuzz(
    address: str,
    requests: Iterator[HostileRequest],
    count: int,
    server_paths: Sequence[str] = (),
    timeout: float = 30.0,
) -> FuzzTally:
    """Send `count` hostile requests one after another; every answer is judged by `verdict`."""
    tally = FuzzTally()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        callables = raw_callables(channel)
        for _ in range(count):
            request = next(requests)
            tally.add(request, call(callables, request, timeout), server_paths)
    return tally


def forever(generate: Callable[[], HostileRequest]) -> Iterator[HostileRequest]:
    while True:
        yield generate()


# ------------------------------------------------------------------------------------------------
# A real server process and what it uses
# ------------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        return []
    return found


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class ServerProcess:
    """`cnnserve serve` on 127.0.0.1 (an ephemeral port unless given), started and stopped by the caller."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The worker processes (the server itself when it runs one worker in-process)."""
        pids = [p for p in children(self.process.pid) if _is_worker(p)]
        return pids or [self.process.pid]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return False
    return b"multiprocessing" in command and b"resource_tracker" not in command


def start_server(
    repo: Path,
    log_path: Path,
    *args: str,
    port: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    expect_start: bool = True,
) -> ServerProcess:
    """Start `cnnserve serve --repo REPO ARGS` and wait until every worker serves (its port file)."""
    port_file = log_path.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "cnnserve", "serve", "--repo", str(repo), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--port-file", str(port_file), "--poll-interval", "0.5", *args]
    log = open(log_path, "wb")  # noqa: SIM115 (the process owns it)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    log.close()
    if not expect_start:
        return ServerProcess(process, port, log_path)
    deadline = time.monotonic() + timeout
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise AssertionError(f"cnnserve serve did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return ServerProcess(process, int(port_file.read_text()), log_path)


# ------------------------------------------------------------------------------------------------
# The batch job under SIGKILL: exactly once
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillResult:
    kills: int
    runs: int
    files: int
    rows: int
    lost: int
    duplicated: int
    exit_codes: tuple[int, ...]


def read_output_paths(output: Path) -> list[str]:
    from cnnserve.serving.jobs.sinks import read_table

    return [str(row["path"]) for row in read_table(output)]


def kill_job_until_done(
    command: Sequence[str],
    output: Path,
    files: Sequence[str],
    kills: int,
    rng: random.Random,
    log_path: Path,
    watch: Path | None = None,
    delay: tuple[float, float] = (0.0, 0.2),
    timeout: float = 300.0,
) -> KillResult:
    """Run the job and SIGKILL it `kills` times, each at a random moment (`delay` seconds) after the run
    appended its first rows to `watch` (the file the rows go to: the output, or a Parquet job's journal),
    so every kill lands in the middle of the work; each rerun resumes. The last run finishes; then the
    output's rows are compared with `files`."""
    watch = watch or output
    codes: list[int] = []
    done_kills = 0
    runs = 0
    with open(log_path, "ab") as log:
        while True:
            runs += 1
            size = watch.stat().st_size if watch.exists() else 0
            process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
            if done_kills < kills:
                deadline = time.monotonic() + timeout
                while process.poll() is None and time.monotonic() < deadline:
                    if watch.exists() and watch.stat().st_size > size:
                        break
                    time.sleep(0.002)
                time.sleep(rng.uniform(*delay))
                if process.poll() is None:
                    process.kill()
                    process.wait(30)
                    done_kills += 1
                    codes.append(process.returncode)
                    continue
                codes.append(process.returncode)
                if process.returncode == 0 and output.exists():
                    break  # finished before the kill: the remaining kills are not needed
                continue
            codes.append(process.wait(timeout))
            break
    rows = read_output_paths(output) if output.exists() else []
    counts = Counter(rows)
    wanted = set(files)
    return KillResult(
        kills=done_kills,
        runs=runs,
        files=len(files),
        rows=len(rows),
        lost=len(wanted - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values() if n > 1) + len(counts.keys() - wanted),
        exit_codes=tuple(codes),
    )


# ------------------------------------------------------------------------------------------------
# The reference a server's answers are compared with: the serving preprocessing and ORT, locally
# ------------------------------------------------------------------------------------------------


class LocalClassifier:
    """Top-1 of an encoded image computed in this process with the serving preprocessing and ONNX
    Runtime on the version's model.onnx; None when the preprocessing refuses the image."""

    def __init__(self, model_dir: Path, version: int = 1) -> None:
        import onnxruntime

        from cnnserve.serving.model.preprocessing import PreprocessSpec
        from cnnserve.serving.model.repository import read_model_config

        config = read_model_config(model_dir)
        self.spec = PreprocessSpec.from_model_config(config)
        self.session = onnxruntime.InferenceSession(
            str(model_dir / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.input = config.input.name

    def top1(self, data: bytes) -> int | None:
        from cnnserve.serving.errors import InvalidRequestError
        from cnnserve.serving.model.preprocessing import preprocess_encoded

        try:
            array = preprocess_encoded(data, self.spec)
        except InvalidRequestError:
            return None
        (probabilities,) = self.session.run(None, {self.input: array[np.newaxis]})[:1]
        return int(np.argmax(probabilities[0]))
