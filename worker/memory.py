"""The worker's own memory, sampled at every train report (psutil; no mlx here), and the run's limit on it."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import psutil

from app.contract.memory_guard import memory_verdict, worker_memory


@dataclass(frozen=True)
class MemorySample:
    rss_bytes: int  # resident memory of this process
    footprint_bytes: int | None  # macOS physical footprint, where psutil gives it
    swap_used_bytes: int | None  # the system's swap in use (None: not readable here)


def sample(process: psutil.Process | None = None) -> MemorySample:
    process = process or psutil.Process()
    rss = int(process.memory_info().rss)
    footprint = None
    if sys.platform == "darwin":
        try:
            footprint = getattr(process.memory_full_info(), "footprint", None)
        except (psutil.Error, OSError):
            footprint = None
    try:
        swap: int | None = int(psutil.swap_memory().used)
    except (psutil.Error, OSError, RuntimeError):
        swap = None
    return MemorySample(rss, int(footprint) if footprint is not None else None, swap)


@dataclass
class MemoryGuard:
    """Samples at each report; a reading above the limit with action stop sets `stop_reason` (the loop then ends)."""

    limit_gb: float | None
    action: str
    stop_reason: str | None = None

    def read(self, iteration: int) -> MemorySample:
        reading = sample()
        if self.stop_reason is None:
            used = worker_memory(reading.rss_bytes, reading.footprint_bytes)
            verdict = memory_verdict(used, self.limit_gb, self.action)
            if verdict.stop:
                self.stop_reason = f"{verdict.reason} at iteration {iteration:,}"
        return reading
