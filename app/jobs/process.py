"""Worker processes seen from the app: how one is started, its environment, its log's last lines (whether a pid is
still our worker: app/contract/pids.py)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import socket
import subprocess
import sys
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Protocol

from app.contract.distributed import Distributed
from app.contract.settings import PROJECT_DIR, Settings
from app.contract.worker_fork import FORK_EVENT, PRELOAD, worker_child, worker_command

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LORABOARD_DATA_DIR": str(settings.data_dir),
            "LORABOARD_ADAPTERS_DIR": str(settings.adapters_dir),
            "LORABOARD_DB_PATH": str(settings.database_path),
            "LORABOARD_CACHE_DIR": str(settings.compiled_cache_dir),
            "LORABOARD_OPENBLAS": "1" if settings.openblas else "0",
            "LORABOARD_BLAS_THREADS": str(settings.blas_threads),
            "LORABOARD_DB_UNWRITABLE_LIMIT_S": str(settings.db_unwritable_limit_s),
            # the folders a worker may read from (app/contract/paths.data_roots, model_roots), as the app judges them
            "LORABOARD_MODELS_DIR": str(settings.local_models_dir),
            "LORABOARD_DATASETS_DIR": str(settings.local_datasets_dir),
            "LORABOARD_ALLOWED_DIRS": settings.allowed_dirs,
            "LORABOARD_ALLOWED_DATA_DIRS": settings.allowed_data_dirs,
            "LORABOARD_ALLOWED_MODEL_DIRS": settings.allowed_model_dirs,
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if settings.hf_offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


# The worker's own environment variables, handed to every rank by mlx.launch (`--env`).
LAUNCH_ENV_PREFIXES = ("LORABOARD_", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED", "TOKENIZERS_PARALLELISM")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive loopback ports that are free now (the ring backend listens on one port per
    rank, from its starting port up)."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise OSError(f"no {count} consecutive free loopback ports")


def launch_args(spec: Distributed, hosts: list[str], env: dict[str, str], python: str) -> list[str]:
    """The arguments of `python -m worker launch` (worker/distributed.py hands them to mlx.launch) for a run
    trained by several processes: backend, hosts (or the hostfile) and processes per host, the ranks' python,
    their working folder and the worker's environment. A ring on this machine alone listens on ports found free
    now: mlx.launch's fixed default would make two such runs (or a run and a benchmark) meet on the same ports."""
    args = ["--backend", spec.backend]
    if spec.hostfile:
        args += ["--hostfile", spec.hostfile]
    else:
        users = [f"{spec.ssh_user}@{h}" if spec.ssh_user and "@" not in h else h for h in hosts]
        args += ["--hosts", ",".join(users), "-n", str(spec.processes_per_host)]
    args += ["--python", spec.python or python, "--cwd", str(PROJECT_DIR)]
    if spec.backend == "ring" and not spec.hostfile and all(host in LOOPBACK_HOSTS for host in hosts):
        args += ["--starting-port", str(free_ports(len(hosts) * spec.processes_per_host))]
    for key in sorted(env):
        if key.startswith(LAUNCH_ENV_PREFIXES):
            args += ["--env", f"{key}={env[key]}"]
    return args


class WorkerProcess(Protocol):
    """A started worker as the supervisor holds it: subprocess.Popen, or ForkedWorker answering as one."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def forks_workers(settings: Settings) -> bool:
    """Whether this server starts its workers as forks of the worker forkserver (Settings.fork_workers, Linux)."""
    return settings.fork_workers and sys.platform == "linux"


def worker_forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_worker_forkserver(settings: Settings) -> None:
    """Start the worker forkserver now: it imports what it preloads in its own process while the server starts,
    so the first job starts as soon as the next ones (else the first worker starts it)."""
    if forks_workers(settings):
        worker_forkserver()
        from multiprocessing import forkserver

        forkserver.ensure_running()


class ProcessAsPopen:
    """A started multiprocessing process answering as the subprocess.Popen of the command `args` would (pid, poll,
    returncode, wait, send_signal, terminate, kill)."""

    def __init__(self, process: BaseProcess, args: list[str]) -> None:
        assert process.pid is not None, "start the process first"
        self.process = process
        self.args = args
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (minus the signal's number if a signal ended it); None while it runs."""
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:  # never a pid that has been reaped (and may be another's now)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedWorker(ProcessAsPopen):
    """`python -m worker <args>` started as a fork of the worker forkserver (app/contract/worker_fork.py). The
    forkserver is this process's child and the worker its child: the exit status comes back through
    multiprocessing. The worker outlives this process, as a spawned one does: it is not among the children
    multiprocessing would wait for (or end) as this process exits."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        command = worker_command(args)
        sys.audit(FORK_EVENT, sys.executable, command)
        process = worker_forkserver().Process(target=worker_child, args=(args, env, str(log_path)), name=" ".join(args))
        process.start()
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        super().__init__(process, command)


def spawn_worker(args: list[str], settings: Settings, log_path: Path,
                 launch: list[str] | None = None) -> WorkerProcess:
    """Start `python -m worker <args>` in its own session, its output appended to log_path: on Linux as a fork
    of the worker forkserver (ForkedWorker; Settings.fork_workers), else as a new process.

    launch: the run is trained by several processes: start `python -m worker launch <launch> -- -m worker
    <args>` instead, which starts every rank through mlx.launch (worker/distributed.py); its command line names
    the worker's arguments too, so app/contract/pids.is_worker recognises it.

    The worker starts with SIGTERM and SIGINT blocked (a child inherits the spawning thread's signal mask), so
    a stop that arrives while it is still importing waits until its handler is in place
    (worker.reporting.on_stop_signal) instead of killing it before it can save and say why it ended.
    """
    if launch is None and forks_workers(settings):
        log_path.touch()  # there, whatever becomes of the child
        return ForkedWorker(args, worker_env(settings), log_path)
    held = hasattr(signal, "pthread_sigmask")
    if held:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "worker",
                 *(["launch", *launch, "--", "-m", "worker"] if launch is not None else []), *args],
                cwd=PROJECT_DIR, env=worker_env(settings),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
