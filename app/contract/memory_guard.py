"""The memory limit rule: what a worker's memory reading means for its run (pure; the worker and the run page use it).

A run's config may set memory_limit_gb and memory_limit_action (app/contract/run_config.py). The
worker samples its memory at every train report (worker/memory.py) and asks
`memory_verdict`; the run page asks `memory_warning` with the highest reading stored.
GB are 10^9 bytes, as mlx-lm's peak_memory figure counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


def gb_text(value_bytes: float) -> str:
    """Bytes as GB with three significant digits: 3.1 GB, 0.412 GB, 0.01 GB."""
    return f"{value_bytes / GB:.3g} GB"


def worker_memory(rss_bytes: int | None, footprint_bytes: int | None) -> int | None:
    """The figure the limit is held against: the physical footprint where known (macOS), else resident memory."""
    return footprint_bytes if footprint_bytes is not None else rss_bytes


@dataclass(frozen=True)
class MemoryVerdict:
    crossed: bool
    stop: bool
    reason: str | None  # what the run page or the stop reason says


NO_VERDICT = MemoryVerdict(False, False, None)


def memory_verdict(used_bytes: int | None, limit_gb: float | None, action: str) -> MemoryVerdict:
    """Whether `used_bytes` is above the limit, and whether the run must stop (action "stop")."""
    if used_bytes is None or limit_gb is None or used_bytes <= limit_gb * GB:
        return NO_VERDICT
    reason = f"worker memory {gb_text(used_bytes)} crossed the limit {gb_text(limit_gb * GB)}"
    return MemoryVerdict(True, action == "stop", reason)


def memory_warning(peak_used_bytes: int | None, limit_gb: float | None, action: str) -> str | None:
    """The run page's warning once the highest reading so far is above the limit (None: no warning)."""
    verdict = memory_verdict(peak_used_bytes, limit_gb, action)
    if not verdict.crossed or limit_gb is None or peak_used_bytes is None:
        return None
    then = "the run stops and keeps its adapter" if action == "stop" else "training goes on (memory_limit_action warn)"
    return (f"worker memory reached {gb_text(peak_used_bytes)}, above the limit {gb_text(limit_gb * GB)}: "
            f"{then}")
