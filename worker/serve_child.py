"""`python -m worker.serve_child MODULE ARGS...`: run `python -m MODULE ARGS...` (mlx_lm's server) as the child of a
serve job's worker, ending when that worker ends, even when it is killed outright (on Linux, through the
parent-death signal; elsewhere the worker's own cancel and SIGTERM handling end it).

The worker's pid is in LORABOARD_SERVE_PARENT: a worker gone before the signal was armed ends the child at once.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "LORABOARD_SERVE_PARENT"


def end_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent ends; exit now if it has ended already."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    expected = os.environ.get(PARENT_ENV)
    if expected and os.getppid() != int(expected):
        sys.exit(1)


def main() -> None:
    end_with_parent()
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
