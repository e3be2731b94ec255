"""Which stream a collective (all_sum, all_gather) of a run's process group runs on, by the group's backend.

ring and mpi reduce on the CPU: on Metal that is the stream their collectives work on (mlx#4475). NCCL reduces
on the GPU and refuses a CPU stream ("There is no Stream(gpu, 1) in current thread"), so on nccl a collective
takes the default stream of the default device, as `mlx.nn.average_gradients` has since mlx#2532 (stream None).

loraboard's own collectives (worker/distributed.py) pass `collective_stream(backend)`. mlx-lm's trainer sums
its losses on the CPU stream and `train()` has no hook for that: `sums_on_backend_stream` reroutes those sums
while it is in effect, in the worker process of an nccl run only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

GPU_BACKENDS = frozenset({"nccl"})  # mlx.launch's backends that reduce on the GPU; ring and mpi reduce on the CPU


def collective_stream(backend: str | None) -> Any:
    """The `stream` argument of a collective on a group of `backend` (None: no group): `mx.cpu` for ring, mpi
    and any other CPU backend; None (the default device's default stream, a GPU's) for nccl."""
    import mlx.core as mx

    return None if backend in GPU_BACKENDS else mx.cpu


def asks_for_cpu(stream: Any) -> bool:
    """Whether a collective's `stream` argument names the CPU: `mx.cpu`, a CPU device, or a stream on one."""
    import mlx.core as mx

    if isinstance(stream, mx.Stream):
        return bool(stream.device == mx.cpu)
    if isinstance(stream, (mx.DeviceType, mx.Device)):
        return bool(stream == mx.cpu)
    return False


def on_stream(all_sum: Callable[..., Any], stream: Any) -> Callable[..., Any]:
    """all_sum with every call that asks for the CPU stream run on `stream` instead; every other argument, and
    every call that asks for another stream (or none), passed through unchanged."""

    def all_sum_on_stream(x: Any, *args: Any, **kwargs: Any) -> Any:
        if asks_for_cpu(kwargs.get("stream")):
            kwargs["stream"] = stream
        return all_sum(x, *args, **kwargs)

    all_sum_on_stream.__wrapped__ = all_sum  # type: ignore[attr-defined]
    return all_sum_on_stream


@contextlib.contextmanager
def sums_on_backend_stream(backend: str | None) -> Iterator[None]:
    """While in effect, `mx.distributed.all_sum` calls that ask for the CPU stream run on the backend's stream;
    undone on leaving. On a CPU backend (ring, mpi) or without a group it changes nothing.

    For mlx-lm 0.32's trainer, which train() gives no hook for: `evaluate` (mlx_lm/tuner/trainer.py, lines 214-215:
    `all_sum(all_losses, stream=mx.cpu)`, `all_sum(ntokens, stream=mx.cpu)`) and `train`'s loss report (lines
    339 and 341: `all_sum(losses, stream=mx.cpu)`, `all_sum(n_tokens, stream=mx.cpu)`). MLX's NCCL backend
    refuses a CPU stream, so without this an nccl run fails at its first validation or report.
    """
    import mlx.core as mx

    stream = collective_stream(backend)
    if asks_for_cpu(stream):  # a CPU backend: its sums stay where mlx-lm put them
        yield
        return
    original = mx.distributed.all_sum
    mx.distributed.all_sum = on_stream(original, stream)
    try:
        yield
    finally:
        mx.distributed.all_sum = original
