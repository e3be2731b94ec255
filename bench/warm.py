"""A smoke's Python children, run in forks of the benchmark's own interpreter once it has imported transformers.

A real measurement starts every child as a fresh interpreter: that isolation is part of what it measures. A smoke
only checks that each code path runs and gives sane figures, and most of a child's CPU time on a small machine is
importing transformers (through mlx-lm), 1.5 of its 2 to 2.5 CPU-seconds. So in `--smoke` mode a child command
`python -m module ...`, `python -c code ...` or `python script.py ...` runs in a fork of the benchmark's process
that has imported transformers once: its own process still (its exit status, wall time and peak RSS come from
wait4, its output goes to its log), the same module, code or script run as `__main__` with the same arguments,
environment and working folder. MLX is never imported before the fork (its stream threads would not survive
one), so a child that loads loraboard's OpenBLAS shim before MLX still can. A command that needs another
interpreter (another executable, an LD_PRELOAD or a Python setting this process does not have) is not forked.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# what a child's interpreter reads once at its start (or transformers at its import): a fork has this process's
PROCESS_SETTINGS = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONOPTIMIZE",
                    "PYTHONHASHSEED", "HF_HOME", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_VERBOSITY")


def warm_up() -> None:
    """Import what every mlx-lm child imports first, without MLX: transformers and its tokenizers, offline (as
    every benchmark's child runs: bench/common.base_env), whatever this process's own environment says."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import transformers  # noqa: F401
        from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    finally:
        if saved is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved
    assert "mlx.core" not in sys.modules, "MLX imported before a fork"


def hub_offline() -> bool:
    """Whether the Hugging Face hub, where this process has imported it, was imported offline."""
    constants = sys.modules.get("huggingface_hub.constants")
    return constants is None or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def forkable(cmd: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether a fork of this interpreter can run `cmd` as a fresh one would: this Python, a module, code or
    script, and nothing its start reads set otherwise than here."""
    if len(cmd) < 2 or cmd[0] != sys.executable or (cmd[1].startswith("-") and cmd[1] not in ("-m", "-c")):
        return False
    if (cmd[1] in ("-m", "-c") and len(cmd) < 3) or "mlx.core" in sys.modules:  # MLX's threads and device
        return False
    if env.get("HF_HUB_OFFLINE") != "1" or not hub_offline():
        return False
    return all(env.get(name) == os.environ.get(name) for name in PROCESS_SETTINGS)


def start_forked(cmd: Sequence[str], env: Mapping[str, str], cwd: Path, log_fd: int, stdin_fd: int | None = None,
                 error_fd: int | None = None, close_fds: Sequence[int] = ()) -> int:
    """Fork; the child runs `cmd` (forkable, this process warmed up) with `env` in `cwd`, its output to log_fd (its
    errors to error_fd where given), its input from stdin_fd (else nothing), and exits with its status; close_fds:
    this process's ends of the child's pipes. Returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    status = 1
    try:
        for fd in close_fds:
            os.close(fd)
        status = run_command(list(cmd[1:]), env, cwd, (stdin_fd, log_fd, log_fd if error_fd is None else error_fd))
    finally:
        os._exit(status)


def run_command(argv: list[str], env: Mapping[str, str], cwd: Path, streams: tuple[int | None, int, int]) -> int:
    """In the forked child: the command's module, code or script as `__main__`, with streams as its standard
    input (None: nothing), output and errors; its exit status."""
    stdin_fd, stdout_fd, stderr_fd = streams
    os.dup2(os.open(os.devnull, os.O_RDONLY) if stdin_fd is None else stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))  # this process's may be no file (a test's)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    status = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path.insert(0, str(cwd))
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path.insert(0, str(cwd))
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            script = Path(cwd, argv[0])
            sys.argv = [str(argv[0]), *argv[1:]]
            sys.path.insert(0, str(script.parent))
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        status = exit_status(stop.code)
    except BaseException:  # as an interpreter would: the traceback on standard error, status 1
        traceback.print_exc()
        status = 1
    with contextlib.suppress(Exception):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def exit_status(code: object) -> int:
    """The status an interpreter exits with for `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


@dataclass
class Forked:
    """A forked child (start_forked) with what a benchmark uses of subprocess.Popen: its pipes, wait and kill."""

    pid: int
    stdin: TextIO | None = None
    stdout: TextIO | None = None
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid != 0:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def popen_forked(cmd: Sequence[str], env: Mapping[str, str], cwd: Path, log_fd: int | None = None) -> Forked:
    """start_forked as a Popen: its output to log_fd, or, with none, text pipes to its standard input and from its
    standard output (its errors to this process's)."""
    if log_fd is not None:
        return Forked(start_forked(cmd, env, cwd, log_fd))
    child_in, to_child = os.pipe()
    from_child, child_out = os.pipe()
    pid = start_forked(cmd, env, cwd, child_out, stdin_fd=child_in, error_fd=2, close_fds=(to_child, from_child))
    os.close(child_in)
    os.close(child_out)
    return Forked(pid, stdin=open(to_child, "w"), stdout=open(from_child))
