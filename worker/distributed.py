"""A run trained by several processes: the launcher around mlx.launch, and what the ranks agree on.

`python -m worker launch <mlx.launch arguments> -- -m worker train --run-id N` runs mlx.launch in this process
(the supervisor watches its pid). Around it, this process
- forwards SIGTERM/SIGINT to every rank (mlx.launch itself would die at once and leave the ranks running), so
  each rank's handler asks for a stop and the ranks end together at the next step (`agree`);
- starts the ranks with SIGTERM/SIGINT held until their handlers are in place;
- gives mlx.launch a standard input that never ends (it polls its standard input, which would spin on
  /dev/null), and lets its rank threads wait for the ranks' output only (`select_reads_only`).
A rank that fails or is killed breaks the ring's connections: the others fail at their next collective, and
mlx.launch ends the rest. Only rank 0 writes anything (database, files).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any

from app.contract.distributed import hosts_of
from app.contract.run_config import RunConfig

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def forward_stop(_signum: int, _frame: Any) -> None:
    """Pass a stop on to every process below this one (the ranks and their shells)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGTERM)


def hold_stops_in_rank_starters() -> None:
    """mlx.launch starts each rank from a thread of its own: those threads hold SIGTERM/SIGINT, so a rank starts
    with them held, as a plain worker does (app/jobs/process.spawn_worker), until its handler is in place. This
    process's main thread keeps them, to forward them."""
    run = threading.Thread.run

    def run_holding(self: threading.Thread) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        run(self)

    threading.Thread.run = run_holding  # type: ignore[method-assign]


def select_reads_only(readers: list[int], _writers: list[int], errors: list[int],
                      timeout: float | None = None) -> tuple[list[int], list[int], list[int]]:
    """mlx.launch's `select` for its rank threads: each thread also waits until its rank's standard input can be
    written, which a pipe always can, so every thread would spin a core for as long as the run lasts. Nothing is
    ever written to a rank here (this process's standard input never sends), so wait for output alone."""
    readable, _, failed = select.select(readers, [], errors, timeout)
    return readable, [], failed


def launch(argv: list[str]) -> int:
    """Run mlx.launch with argv (its own arguments, `--`, then the ranks' python arguments)."""
    read_end, _write_end = os.pipe()  # the write end stays open for as long as this process lives
    os.dup2(read_end, 0)
    for signum in STOP_SIGNALS:
        signal.signal(signum, forward_stop)
    if hasattr(signal, "pthread_sigmask"):
        hold_stops_in_rank_starters()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
    from mlx._distributed_utils import launch as mlx_launch

    mlx_launch.select = select_reads_only  # type: ignore[attr-defined]
    sys.argv = ["mlx.launch", *argv]
    mlx_launch.main()
    return 0


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the group's size (0 and 1 without a group)."""
    import mlx.core as mx

    group = mx.distributed.init()
    return group.rank(), group.size()


def agree(flags: list[int]) -> list[int]:
    """Every rank's flags summed, on every rank (one small all_sum; the same answer everywhere)."""
    import mlx.core as mx

    if mx.distributed.init().size() == 1:
        return flags
    summed = mx.distributed.all_sum(mx.array(flags, dtype=mx.int32), stream=mx.cpu)
    return [int(v) for v in summed.tolist()]


def gather(value: float) -> list[float]:
    """value of every rank, in rank order, on every rank."""
    import mlx.core as mx

    group = mx.distributed.init()
    if group.size() == 1:
        return [value]
    slots = mx.zeros((group.size(),), dtype=mx.float32)
    slots[group.rank()] = value
    return [float(v) for v in mx.distributed.all_sum(slots, stream=mx.cpu).tolist()]


def share_from_rank0(model: Any) -> None:
    """Give every rank rank 0's trainable weights (rank 0 loaded them from its file)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    group = mx.distributed.init()
    if group.size() == 1:
        return
    mine = group.rank() == 0
    weights = [(name, mx.distributed.all_sum(value if mine else mx.zeros_like(value), stream=mx.cpu))
               for name, value in tree_flatten(model.trainable_parameters())]
    model.load_weights(weights, strict=False)
    mx.eval(model.parameters())


def group_record(config: RunConfig, size: int) -> dict[str, Any] | None:
    """What the run page shows of a run of several processes (Run.hardware_json's "distributed")."""
    if config.distributed is None:
        return None
    try:
        hosts = hosts_of(config.distributed)
    except (OSError, ValueError):
        hosts = []
    return {"world_size": size, "backend": config.distributed.backend, "hosts": hosts,
            "per_rank_tokens_per_second": None}
