"""A process as /proc shows it, for the benchmarks that watch a server: its memory, its CPU time, its live
children and the MLX files it maps (Linux only)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS every `interval_s`, keeping the maximum per phase."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.phase = "idle"
        self.max_kb: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.max_kb[self.phase] = max(rss, self.max_kb.get(self.phase, 0))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child_pids(pid: int) -> list[int]:
    pids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return pids


# multiprocessing's forkserver: the server's worker forkserver (app/contract/worker_fork.py), whose children are
# the server's forked workers; and the resource tracker that multiprocessing starts beside it
FORKSERVER_CODE = b"from multiprocessing.forkserver import main"
RESOURCE_TRACKER_CODE = b"from multiprocessing.resource_tracker import main"


def live_children(pid: int) -> list[int]:
    """The server's worker processes that have not ended yet: its children, and for its worker forkserver the
    forkserver's children (neither the forkserver nor multiprocessing's resource tracker is a worker)."""
    alive = []
    for child in child_pids(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if FORKSERVER_CODE in command:
            alive += live_children(child)
        elif RESOURCE_TRACKER_CODE in command:
            continue
        elif state not in {"Z", "X"}:
            alive.append(child)
    return alive


def mlx_mappings(pid: int) -> list[str]:
    """Mapped files of the process that belong to MLX (libmlx.so, mlx's extension modules)."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return ["(cannot read /proc/<pid>/maps)"]
    paths = {line.split(None, 5)[-1] for line in lines if len(line.split(None, 5)) == 6}
    return sorted(p for p in paths if "libmlx" in p or "/mlx/" in p)
