"""Server-sent event streams: events framed as FastAPI frames them, with keep-alive comments while idle.

The routes return `event_stream(events)` rather than yielding through FastAPI's own EventSourceResponse path:
that path feeds its keep-alive comments through a task group whose stream it closes before stopping the tasks,
so a client that stops reading and then goes away leaves a task writing into a closed stream, and the server
logs "Exception in ASGI application" (BrokenResourceError) for what is a normal departure. Here one pending read
of the generator is waited on with a timeout (a ping on each), and a client leaving cancels it: the stream just
ends, quietly.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.sse import ServerSentEvent, format_sse_event
from starlette.responses import StreamingResponse

PING_S = 15.0  # seconds of silence before a keep-alive comment (as FastAPI's own streams)
PING = b": ping\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering either
EVENT_SCHEMA = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                                 "id": {"type": "string"}, "retry": {"type": "integer", "minimum": 0}}}
# A stream route's `responses=`: its 200 as the API describes an event stream, one schema per event.
STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA}}}}


def finite(data: Any) -> Any:
    """JSON-ready data with NaN and infinities as null (JSON has neither)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list):
        return [finite(value) for value in data]
    return data


def frame(event: ServerSentEvent) -> bytes:
    """One event as text/event-stream bytes: its data as JSON (non-finite numbers as null)."""
    if event.raw_data is not None:
        data: str | None = event.raw_data
    elif event.data is not None:
        data = json.dumps(finite(jsonable_encoder(event.data)))
    else:
        data = None
    return format_sse_event(data_str=data, event=event.event, id=event.id, retry=event.retry, comment=event.comment)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read, so that a generator failing while cancelled is not reported again


async def with_pings(events: AsyncIterator[ServerSentEvent], ping_s: float = PING_S) -> AsyncIterator[bytes]:
    """The events framed, and a keep-alive comment after every `ping_s` seconds without one."""
    pending: asyncio.Future[ServerSentEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=ping_s)
            if not done:
                yield PING
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield frame(event)
    finally:  # the client went away (cancelled) or the stream ended
        if pending is not None:
            pending.add_done_callback(_retrieve)
            pending.cancel()  # ends the generator where it waits
        elif hasattr(events, "aclose"):  # an async generator: its own finally blocks run now
            await events.aclose()


class EventStream(StreamingResponse):
    """A text/event-stream response. Routes name it as their response_class with STREAM_DOC in `responses=`;
    its media type is set per response, so the API describes each event (STREAM_DOC), not a string body."""


def event_stream(events: AsyncIterator[ServerSentEvent], ping_s: float | None = None) -> EventStream:
    """A text/event-stream response of these events (a keep-alive comment every PING_S seconds of silence)."""
    return EventStream(with_pings(events, PING_S if ping_s is None else ping_s), media_type="text/event-stream",
                       headers=HEADERS)
