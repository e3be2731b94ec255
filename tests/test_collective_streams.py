"""The stream of a process group's collectives by backend, and the rerouting of mlx-lm's CPU-stream sums."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.tuner import trainer

from app.contract.run_config import RunConfig
from worker.collective_streams import asks_for_cpu, collective_stream, on_stream, sums_on_backend_stream
from worker.distributed import agree, backend_of, gather

TARGET = object()  # stands for the backend's stream in the fake's records


class FakeAllSum:
    """Records each call's arguments and returns x, as all_sum on one process does."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((x, args, kwargs))
        return x


@pytest.mark.parametrize("backend", ["ring", "mpi", None])
def test_cpu_backends_and_plain_runs_reduce_on_the_cpu(backend: str | None) -> None:
    assert collective_stream(backend) == mx.cpu


def test_nccl_reduces_on_the_default_stream_as_average_gradients_does() -> None:
    assert collective_stream("nccl") is None


@pytest.mark.parametrize("stream", [mx.cpu, mx.Device(mx.cpu), mx.default_stream(mx.cpu)])
def test_every_way_of_naming_the_cpu_asks_for_it(stream: Any) -> None:
    assert asks_for_cpu(stream)


@pytest.mark.parametrize("stream", [None, mx.gpu, mx.Device(mx.gpu), "cpu"])
def test_no_stream_or_the_gpu_does_not_ask_for_the_cpu(stream: Any) -> None:
    assert not asks_for_cpu(stream)


def test_the_wrapper_moves_only_cpu_stream_calls_and_passes_the_rest_through() -> None:
    fake = FakeAllSum()
    wrapped = on_stream(fake, TARGET)
    group, x = object(), mx.array([1.0])
    assert wrapped(x, group=group, stream=mx.cpu) is x
    wrapped(x, group=group, stream=None)
    wrapped(x, stream=mx.gpu)
    wrapped(x)
    assert fake.calls == [(x, (), {"group": group, "stream": TARGET}), (x, (), {"group": group, "stream": None}),
                          (x, (), {"stream": mx.gpu}), (x, (), {})]


def test_an_nccl_run_reroutes_cpu_sums_only_while_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAllSum()
    monkeypatch.setattr(mx.distributed, "all_sum", fake)
    x = mx.array([2.0])
    with sums_on_backend_stream("nccl"):
        assert trainer.mx.distributed.all_sum is not fake  # mlx-lm's trainer looks it up on the same module
        mx.distributed.all_sum(x, stream=mx.cpu)
    mx.distributed.all_sum(x, stream=mx.cpu)
    assert [kwargs["stream"] for _, _, kwargs in fake.calls] == [None, mx.cpu]
    assert mx.distributed.all_sum is fake


def test_the_wrapper_is_undone_when_training_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAllSum()
    monkeypatch.setattr(mx.distributed, "all_sum", fake)
    with pytest.raises(RuntimeError), sums_on_backend_stream("nccl"):
        raise RuntimeError("training failed")
    assert mx.distributed.all_sum is fake


@pytest.mark.parametrize("backend", ["ring", "mpi", None])
def test_ring_mpi_and_plain_runs_install_nothing(monkeypatch: pytest.MonkeyPatch, backend: str | None) -> None:
    fake = FakeAllSum()
    monkeypatch.setattr(mx.distributed, "all_sum", fake)
    with sums_on_backend_stream(backend):
        assert mx.distributed.all_sum is fake


def test_a_real_one_process_sum_gives_the_same_answer_rerouted() -> None:
    x = mx.array([1, 2, 3], dtype=mx.int32)
    with sums_on_backend_stream("nccl"):
        assert mx.distributed.all_sum(x, stream=mx.cpu).tolist() == [1, 2, 3]


@pytest.mark.parametrize("backend", ["ring", "nccl", None])
def test_one_process_agrees_and_gathers_with_itself(backend: str | None) -> None:
    assert agree([1, 0, 2], backend) == [1, 0, 2]
    assert gather(3.5, backend) == [3.5]


def test_the_backend_is_the_runs_distributed_backend() -> None:
    assert backend_of(RunConfig(model="/m", data="/d")) is None
    spread = RunConfig(model="/m", data="/d", distributed={"backend": "nccl", "processes_per_host": 2})
    assert backend_of(spread) == "nccl"
