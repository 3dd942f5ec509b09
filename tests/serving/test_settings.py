"""The default worker count follows the CPUs a process may use, a container's cgroup quota included."""

from __future__ import annotations

import os
from pathlib import Path

from cnnserve.serving.settings import available_cpus


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_no_quota_file_means_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "missing") == _affinity()


def test_unlimited_quota_means_the_affinity_mask(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == _affinity()


def test_a_quota_caps_the_count(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # docker run --cpus 1.5
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("50000 100000\n")  # half a CPU still gets one worker
    assert available_cpus(cpu_max) == 1
