"""Event streams end quietly when their client goes away, even one that stopped reading first (a stalled
connection): no "Exception in ASGI application". Driven at the ASGI level against the real app, where a stalled
client can be made exactly: every write waits until the connection is lost."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import InProcess
from fastapi.sse import ServerSentEvent
from sqlmodel import Session

import app.sse
from app.sse import PING, frame, with_pings
from app.tables import Generation, Run, TrainReport, utcnow


def test_events_are_framed_as_json_with_non_finite_numbers_as_null() -> None:
    event = ServerSentEvent(event="status", id="3:-1", data={"loss": math.nan, "points": [1.5, math.inf]})
    assert frame(event) == b'event: status\ndata: {"loss": null, "points": [1.5, null]}\nid: 3:-1\n\n'
    assert frame(ServerSentEvent(retry=1000)) == b"retry: 1000\n\n"


def test_an_idle_stream_pings() -> None:
    async def read() -> list[bytes]:
        release = asyncio.Event()

        async def events() -> AsyncIterator[ServerSentEvent]:
            yield ServerSentEvent(event="first")
            await release.wait()  # idle: pings meanwhile
            yield ServerSentEvent(event="second")

        stream = with_pings(events(), ping_s=0.02)
        got = [await anext(stream) for _ in range(3)]
        release.set()
        return got + [item async for item in stream if item != PING]

    assert asyncio.run(read()) == [b"event: first\n\n", PING, PING, b"event: second\n\n"]


def test_a_departed_client_ends_the_generator_where_it_waits() -> None:
    ended: list[str] = []

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(event="first")
            await asyncio.sleep(60)  # the client leaves during this wait
            yield ServerSentEvent(event="never")
        finally:
            ended.append("finally")

    async def read() -> None:
        stream = with_pings(events())
        assert await anext(stream) == b"event: first\n\n"
        reading = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        reading.cancel()  # what a departed client does to the response's task
        with pytest.raises(asyncio.CancelledError):
            await reading
        await asyncio.sleep(0.01)  # the generator's own read, cancelled, ends it

    asyncio.run(read())
    assert ended == ["finally"]


async def stall_then_leave(asgi: Any, path: str) -> int:
    """GET `path` as a client that reads the first two messages, then nothing, then goes away; the number of
    messages the app sent. Raises whatever the app raised."""
    gone = asyncio.Event()
    asked = False
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if sent > 2:
            await gone.wait()  # the socket's buffers are full: the write waits until the connection is lost

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"text/event-stream")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
    request = asyncio.ensure_future(asgi(scope, receive, send))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # a busy machine may take seconds for the first event
    while sent <= 2 and not request.done() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # stalled: keep-alive comments are due meanwhile
    gone.set()
    await asyncio.wait_for(request, 10)
    return sent


@pytest.fixture
def live_ids(shared_app_client: InProcess) -> tuple[int, int]:
    """A run that trains (as far as the dashboard can tell) with points to send, and a queued generation."""
    with Session(shared_app_client.engine) as session:
        run = Run(name="live", status="running", config_json="{}", total_iters=10**6, pid=os.getpid(),
                  heartbeat_at=utcnow())
        generation = Generation(model="m", request_json="{}")
        session.add_all([run, generation])
        session.commit()
        assert run.id is not None and generation.id is not None
        session.add_all([TrainReport(run_id=run.id, iteration=i, train_loss=1.0, learning_rate=1e-5,
                                     iterations_per_second=1.0, tokens_per_second=1.0, trained_tokens=i,
                                     peak_memory=1.0) for i in range(1, 50)])
        session.commit()
        return run.id, generation.id


def test_a_stalled_client_that_leaves_ends_its_stream_quietly(
    shared_app_client: InProcess, live_ids: tuple[int, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app.sse, "PING_S", 0.05)
    monkeypatch.setattr("fastapi.routing._PING_INTERVAL", 0.05)  # were a route to yield through FastAPI's own path
    run_id, generation_id = live_ids
    for path in (f"/api/runs/{run_id}/events", f"/api/generations/{generation_id}/events"):
        sent = asyncio.run(stall_then_leave(shared_app_client.app, path))  # raised before: BrokenResourceError
        assert sent >= 3, path
