"""What a server process uses: resident memory, open file descriptors, start time, and GPU memory and
utilisation on a CUDA session.

Read from /proc (Linux) and, for GPUs, from NVML through the optional `nvidia-ml-py` package (the GPU image
has it): without it, or without a driver, there is simply no GPU reading, said once in the log. The server
samples these every few seconds into gauges (`metrics.ServingMetrics.observe_resources`): each worker
process writes its own, so with several workers the supervisor's /metrics shows them per process (`pid`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class ProcessSample:
    resident_bytes: int | None  # None where /proc is not available
    open_fds: int | None


def process_sample(proc: Path = PROC_SELF) -> ProcessSample:
    """This process's resident set size and open file descriptors."""
    resident: int | None = None
    fds: int | None = None
    try:
        pages = int((proc / "statm").read_text().split()[1])
        resident = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    with contextlib.suppress(OSError):
        fds = sum(1 for _ in (proc / "fd").iterdir())
    return ProcessSample(resident, fds)


def process_start_time(proc: Path = PROC_SELF) -> float | None:
    """When this process started, in seconds since the epoch (from /proc: the boot time plus its start)."""
    try:
        fields = (proc / "stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class GpuSample:
    index: str  # NVML's device index, as the `gpu` label
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float  # share of the last sample period a kernel ran (0..1), for the whole device


def _visible_indices(count: int, environ: dict[str, str] | None = None) -> list[int]:
    """The NVML indices CUDA may use here: CUDA_VISIBLE_DEVICES when it lists indices, else all."""
    visible = (environ if environ is not None else dict(os.environ)).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices: list[int] = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit():  # UUIDs or MIG names: not mapped here, take every device
            return list(range(count))
        if int(part) < count:
            indices.append(int(part))
    return indices


class GpuProbe:
    """NVML readings of the GPUs this process may use; `available` is False without nvidia-ml-py or a
    driver (the reason is logged once)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[str, Any]] = []
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            LOG.info("GPU metrics off: the optional nvidia-ml-py package is not installed")
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [(str(i), pynvml.nvmlDeviceGetHandleByIndex(i)) for i in _visible_indices(count)]
        except pynvml.NVMLError as error:
            LOG.warning("GPU metrics off: NVML is not usable here (%s)", error)
            return
        self._nvml = pynvml
        LOG.info("GPU metrics on for %d device(s) via NVML", len(self._handles))

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def sample(self) -> list[GpuSample]:
        if self._nvml is None:
            return []
        samples = []
        for index, handle in self._handles:
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            except self._nvml.NVMLError as error:
                LOG.debug("NVML reading of GPU %s failed: %s", index, error)
                continue
            samples.append(GpuSample(index, int(memory.used), int(memory.total), rates.gpu / 100.0))
        return samples

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None
