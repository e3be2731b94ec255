"""A smoke's ring ranks forked from the benchmark's interpreter (bench/warm.py) instead of started as new ones.

mlx.launch starts each rank as `<python> <arguments>` from a shell. In `--smoke` mode a benchmark puts RANK_CLIENT
before the rank's arguments: a client run by `python -S` (no site, next to no start-up) that sends its standard
streams, environment, working folder and arguments over a Unix socket to a thread of the benchmark
(`rank_forks`), which forks the rank from its own interpreter, transformers imported once, with them. The client
waits for the rank's exit status and exits with it, and passes a stop (SIGTERM, SIGINT) on to the rank, so
mlx.launch sees its ranks as it would. Where a fork cannot stand for a fresh interpreter (bench/warm.forkable),
the client runs the rank itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bench.warm import forkable, start_forked, warm_up

RANK_CLIENT = """
import json, os, signal, socket, sys
path, argv = sys.argv[1], sys.argv[2:]
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect(path)
request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
reply = conn.recv(64).decode()
if reply == "exec":
    os.execv(sys.executable, [sys.executable, *argv])
pid = int(reply)
for stop in (signal.SIGTERM, signal.SIGINT):
    signal.signal(stop, lambda signum, frame: os.kill(pid, signum))
status = int(conn.recv(64).decode() or 1)
if status < 0:
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
"""


@contextlib.contextmanager
def rank_forks() -> Iterator[list[str]]:
    """While open, ranks are forked on request; yields the python arguments to put before a rank's own."""
    warm_up()
    folder = Path(tempfile.mkdtemp(prefix="bench-ranks-"))
    path = folder / "ranks.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(path))
    server.listen()
    forking = threading.Lock()  # one fork at a time: no rank inherits another's streams before they are closed
    children: list[int] = []
    threading.Thread(target=serve, args=(server, forking, children), daemon=True).start()
    try:
        yield ["-S", "-c", RANK_CLIENT, str(path)]
    finally:
        server.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            path.unlink()
            folder.rmdir()


def serve(server: socket.socket, forking: threading.Lock, children: list[int]) -> None:
    """Each client's request answered in its own thread, until the server socket is closed."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=fork_rank, args=(conn, forking, children), daemon=True).start()


def fork_rank(conn: socket.socket, forking: threading.Lock, children: list[int]) -> None:
    """Fork the client's rank with its streams; tell the client its pid, then its exit status."""
    with conn:
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(message)
        cmd = [sys.executable, *request["argv"]]
        with forking:
            if len(fds) != 3 or not forkable(cmd, request["env"]):
                pid = None
            else:
                pid = start_forked(cmd, request["env"], Path(request["cwd"]), fds[1], stdin_fd=fds[0],
                                   error_fd=fds[2])
                children.append(pid)
            for fd in fds:
                os.close(fd)
        if pid is None:
            conn.sendall(b"exec")
            return
        conn.sendall(str(pid).encode())
        _, status = os.waitpid(pid, 0)
        with forking:
            children.remove(pid)
        with contextlib.suppress(OSError):
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
