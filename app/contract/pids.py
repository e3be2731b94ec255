"""Whether a pid is still ours: alive, not a zombie, not a reused pid (read from /proc where there is one).

The app's supervisor asks it of the workers it watches; a worker asks it of whoever left a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# the command line of multiprocessing's forkserver, which a forked worker has until it sets its title
# (app/contract/worker_fork.py)
FORKSERVER_CODE = b"from multiprocessing.forkserver import main"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_worker(pid: int, job: str, job_id: int) -> bool:
    """Whether pid is still the `python -m worker <job> ... <job_id>` process: not ended (a zombie), not a
    reused pid. Where there is no /proc, whether the pid is alive."""
    if not Path("/proc/self").exists():
        return pid_alive(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):  # ended, not yet reaped
        return False
    if args == [b""]:  # just spawned: exec has not yet laid out the new program's arguments
        return True
    if any(arg.startswith(FORKSERVER_CODE) for arg in args):  # just forked: the worker's title is not yet set
        return True
    words = [word for arg in args for word in arg.split(b" ")]  # a forked worker's title is one string
    return b"worker" in words and job.encode() in words and str(job_id).encode() in words


def is_job_process(pid: int, job_id: int) -> bool:
    """Whether pid is still the `python -m worker job --job-id job_id` process (an ended child is reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return is_worker(pid, "job", job_id)
