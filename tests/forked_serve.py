"""`loraboard serve` processes forked from one that has imported the dashboard already (multiprocessing's
forkserver, one per test process): a test server starts in a fraction of the CPU time of `python -m app serve`,
most of which is importing FastAPI, SQLAlchemy and the app. The child is the dashboard's own `serve_main` with the
server's argv, environment, working folder and log, as `python -m app serve` would run it; `ForkedServe` answers
as the `subprocess.Popen` of that command would (poll, wait, terminate, kill, send_signal).

The fast tier's guard sees each start as the Popen of `python -m app serve` (the audit event SERVE_EVENT)."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import ForkServerContext
from pathlib import Path

from app.jobs.process import ProcessAsPopen

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Imported once by the forkserver, before any fork: the serve command and the web server it runs.
PRELOAD = ["app.cli.serve", "uvicorn"]
SERVE_EVENT = "loraboard.tests.forked_serve"  # audit event: (executable, argv), as subprocess.Popen's


def serve_child(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The forked process: the environment, folder and log of `python -m app <argv>`, then the command itself."""
    # a test process has one forkserver: where an in-process test started it as the worker forkserver, it holds the
    # stop signals for its forks (worker/warm.py); a server must receive them
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    import app
    from app.cli.serve import serve_main
    from app.contract.settings import get_settings

    if Path(app.__file__).resolve().parent != PROJECT_DIR / "app":  # the forkserver imported another checkout
        raise SystemExit(f"forked server imported {app.__file__}, not {PROJECT_DIR / 'app'}")
    multiprocessing.current_process().daemon = False  # a main process, as `python -m app serve` is: it may fork
    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()  # read from this environment
    os.chdir(PROJECT_DIR)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # unbuffered, as PYTHONUNBUFFERED makes them in a server started as a command
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    serve_main(argv)


def forkserver() -> ForkServerContext:
    """The forkserver context, its server started (from the project folder) with PRELOAD imported."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver as server

    with contextlib.chdir(PROJECT_DIR):  # `app` is imported from this checkout, as `python -m app` in it would
        server.ensure_running()
    return context


class ForkedServe(ProcessAsPopen):
    """A started `python -m app <argv>` (argv: serve and its options) in a forked process, answering as its
    subprocess.Popen would."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        args = [sys.executable, "-m", "app", *argv]
        sys.audit(SERVE_EVENT, sys.executable, args)
        log_path.touch()  # there, whatever becomes of the child
        process = forkserver().Process(target=serve_child, args=(argv, env, str(log_path)), name="loraboard serve",
                                       daemon=True)
        process.start()
        super().__init__(process, args)
