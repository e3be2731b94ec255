"""The training machine's hardware and software, recorded on the run when training starts (the report shows it)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import psutil

from worker.reporting import ReportWriter


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it, else the architecture."""
    if sys.platform == "darwin":
        try:
            found = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=5, check=False).stdout.strip()
            if found:
                return found
        except (OSError, subprocess.SubprocessError):
            pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware_facts() -> dict[str, Any]:
    """CPU, GPU (when MLX computes on one), memory, OS and the mlx/mlx-lm versions of this machine."""
    device = mx.default_device()
    gpu = None
    if device.type == mx.DeviceType.gpu:
        try:
            info = mx.device_info()
            gpu = str(info.get("device_name") or info.get("architecture") or "GPU")
        except (RuntimeError, AttributeError):
            gpu = "GPU"
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "device": str(device.type).removeprefix("DeviceType."),
        "memory_bytes": int(psutil.virtual_memory().total),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": _version("mlx") or getattr(mx, "__version__", None),
        "mlx_lm": _version("mlx-lm") or _version("mlx_lm"),
    }


def record_hardware(writer: ReportWriter, distributed: dict[str, Any] | None = None) -> None:
    """Store hardware_facts() on the writer's run (through its writer thread, like every report); a run of
    several processes adds its group under "distributed" (world_size, backend, hosts,
    per_rank_tokens_per_second)."""
    facts = json.dumps({**hardware_facts(), **({"distributed": distributed} if distributed else {})})

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE run SET hardware_json = ? WHERE id = ?", (facts, writer.run_id))

    writer.submit(job)
