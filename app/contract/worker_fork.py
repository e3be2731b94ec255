"""A worker started as a fork of a process that has imported transformers already (Linux; app/jobs/process.py
starts it through multiprocessing's forkserver). Most of a worker's start-up on a small CPU is that import (1.6
of its 2 CPU-seconds, through mlx-lm): a forked worker skips it, so every job but a server's first starts about
that much sooner.

The child becomes what `python -m worker <argv>` would be: its own session, SIGTERM and SIGINT held until the
worker's handler is in place (as app/jobs/process.spawn_worker holds them), the worker's environment, the
project folder, its output appended to its log, and `python -m worker <argv>` as its process title (which
app/contract/pids.is_worker reads). Where MLX was imported before the fork (its threads do not survive one), or
the environment asks for something an interpreter reads only as it starts (a preload, another PYTHONPATH, the hub
offline or not), the child runs the command itself (exec) instead: the same pid, a fresh interpreter.
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
PRELOAD = ["worker.warm", "app.contract.worker_fork"]  # what the forkserver imports once, before any fork
# read once as an interpreter starts, or as transformers and the hub are imported (worker/warm.py imports them)
START_SETTINGS = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONOPTIMIZE", "PYTHONHASHSEED",
                  "PYTHONWARNINGS", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_CACHE")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
FORK_EVENT = "loraboard.worker_fork"  # audit event (executable, argv) for each worker forked, as Popen's


def worker_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "worker", *argv]


def needs_fresh_interpreter(env: dict[str, str], here: dict[str, str]) -> list[str]:
    """The start-up settings on which `env` (the worker's) and `here` (the forked interpreter's) differ."""
    return [name for name in START_SETTINGS if env.get(name) != here.get(name)]


def worker_child(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The forked process: `python -m worker <argv>` with `env`, its output appended to log_path."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(PROJECT_DIR)
    if needs_fresh_interpreter(env, dict(os.environ)) or "mlx.core" in sys.modules:  # MLX's threads are gone
        os.execve(sys.executable, worker_command(argv), env)
    from setproctitle import setproctitle

    setproctitle(" ".join(worker_command(argv)))
    os.environ.clear()
    os.environ.update(env)
    # unbuffered, as PYTHONUNBUFFERED makes them in a worker started as a command
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    sys.argv = ["-m", *argv]  # run_module sets argv[0] to the module's file, as `python -m` does
    runpy.run_module("worker", run_name="__main__", alter_sys=True)
