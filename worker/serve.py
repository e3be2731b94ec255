"""The `serve` job (worker/job.py): mlx-lm's own OpenAI-compatible server for a checkpoint or a fused model.

The job starts `python -m mlx_lm server --model M [--adapter-path F] --host 127.0.0.1 --port P` as its child,
through worker/serve_child.py so that it also ends if the worker is killed outright (its output in its own log
beside the job's), waits until GET /v1/models answers, says "serving … at URL" and then
watches: a cancel ends the child (SIGTERM, then SIGKILL) and the job ends stopped with no process left; a child
that dies fails the job with the end of its log. The worker runs in its own session, so the server lives on while
the dashboard restarts; the page finds the job again.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from app.contract.kinds import ServeParams
from worker.job import JobContext, JobInputError, JobStopped
from worker.reporting import connect
from worker.serve_child import PARENT_ENV

POLL_S = 0.5
HEALTH_EVERY_S = 5.0  # each check is a line of the server's log
TERM_GRACE_S = 5.0
LOG_LINES = 12
ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|Traceback")


class ServerFailed(RuntimeError):
    """The mlx_lm server exited, or never answered."""


def server_log(ctx: JobContext) -> Path:
    """The server's own log, beside the job's (app/jobs/supervisor.jobs_dir)."""
    folder = ctx.settings.database_path.parent / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"job-{ctx.job_id}-mlx_lm-server.log"


def tail(path: Path, lines: int = LOG_LINES) -> str:
    """The last lines of the server's log, without blank lines and health checks."""
    if not path.exists():
        return ""
    kept = [line for line in path.read_text(errors="replace").splitlines()
            if line.strip() and '"GET /health ' not in line]
    return "\n".join(kept[-lines:])


def exit_words(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited (code {code})"


def failure(what: str, log: Path, code: int | None = None) -> ServerFailed:
    """What happened and the error the log ends with (its last line naming an error), in one line; the end of
    the log is attached as a note (the job's traceback shows it)."""
    end = tail(log)
    killed = code is not None and code < 0  # by a signal: the log's errors are not why
    errors = [] if killed else [line.strip() for line in end.splitlines() if ERROR_LINE.search(line)]
    failed = ServerFailed(f"{what}: {errors[-1]}" if errors else what)
    failed.add_note(f"last lines of {log}:\n{end or '(empty)'}")
    return failed


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_status(port: int, path: str, host: str = "127.0.0.1") -> int | None:
    """The HTTP status of GET path on the port; None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def answers(port: int) -> bool:
    """Whether the server answers GET /v1/models (any status: mlx_lm's listing may fail on a machine without a
    Hugging Face cache, yet the server is up)."""
    return http_status(port, "/v1/models") is not None


def can_generate(port: int) -> bool:
    """False once mlx_lm says it cannot generate (GET /health 503: its generation thread died, e.g. the model
    failed to load); the server process itself lives on then."""
    return http_status(port, "/health") != HTTPStatus.SERVICE_UNAVAILABLE


def command(params: ServeParams) -> list[str]:
    args = [sys.executable, "-m", "worker.serve_child", "mlx_lm", "server", "--model", params.model]
    if params.adapter_path:
        args += ["--adapter-path", params.adapter_path]
    return [*args, "--host", "127.0.0.1", "--port", str(params.port)]


def check_inputs(params: ServeParams) -> None:
    """What may have changed since the request was checked: the folders, the port."""
    model = params.model
    if model.startswith(("/", "~", ".")) and not (Path(model).expanduser() / "config.json").is_file():
        raise JobInputError(f"model folder {model} does not exist any more (or has no config.json)")
    adapter = params.adapter_path
    if adapter and not (Path(adapter) / "adapters.safetensors").is_file():
        raise JobInputError(f"the checkpoint's adapter folder {adapter} has no adapters.safetensors: it was "
                            "deleted")
    if not port_free(params.port):
        raise JobInputError(f"port {params.port} on 127.0.0.1 is taken by another program now; serve again "
                            "to get another port")


def end_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a few seconds; always reaped."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
    child.wait()


def row_exists(ctx: JobContext) -> bool:
    """Whether the job's row is still there (a busy database counts as yes)."""
    try:
        conn = connect(ctx.settings.database_path)
        try:
            return conn.execute("SELECT 1 FROM job WHERE id = ?", (ctx.job_id,)).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return True


def what_is_served(params: ServeParams) -> str:
    if params.model_name:
        return f"model {params.model_name}"
    if params.iteration is not None:
        return f"run {params.run_id}, checkpoint {params.iteration:,}"
    return params.model


def run(ctx: JobContext[ServeParams]) -> dict[str, Any]:
    params = ctx.params
    check_inputs(params)
    # mlx_lm's GET /v1/models lists the Hugging Face cache and fails where it does not exist yet: clients that
    # list models first (most chat UIs) would then see a server that closes the connection.
    from huggingface_hub.constants import HF_HUB_CACHE

    with contextlib.suppress(OSError):
        Path(HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)
    result = {"base_url": params.base_url, "model": params.client_model, "port": params.port,
              "served": params.model, "adapter_path": params.adapter_path}
    log = server_log(ctx)
    ctx.set_total(1, "server")
    ctx.detail = f"starting mlx_lm server for {what_is_served(params)}"
    with log.open("ab") as out:
        child = subprocess.Popen(command(params), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, PARENT_ENV: str(os.getpid())})
    try:
        deadline = time.monotonic() + params.start_timeout_s
        while not answers(params.port):
            if child.poll() is not None:
                raise failure(f"the mlx_lm server {exit_words(child.returncode)} before it answered", log,
                              child.returncode)
            if ctx.stop.is_set():
                raise JobStopped(None)
            if time.monotonic() > deadline:
                raise failure(f"the mlx_lm server did not answer within {params.start_timeout_s:g} s", log)
            time.sleep(0.25)
        port = params.port
        ctx.advance()
        ctx.detail = f"serving {what_is_served(params)} at {params.base_url}"
        next_check = 0.0
        while not ctx.stop.wait(POLL_S):
            if child.poll() is not None:
                raise failure(f"the mlx_lm server {exit_words(child.returncode)}", log, child.returncode)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEALTH_EVERY_S
                if not can_generate(port):
                    raise failure("the mlx_lm server cannot generate (GET /health answers 503)", log)
                if not row_exists(ctx):  # deleted with its run: nothing could stop this server any more
                    raise JobStopped(result)
        raise JobStopped(result)
    finally:
        end_child(child)
