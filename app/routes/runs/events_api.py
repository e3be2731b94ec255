"""Pushed updates for open pages: server-sent events (app/sse.py frames them and keeps the stream alive)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status

from app.routes.params import MAX_ID, RunId, stream_problems
from app.runs.live.stream import (
    Cursor,
    CursorError,
    Segment,
    StreamTiming,
    read_segments,
    resume_cursor,
    run_event_stream,
)
from app.sse import STREAM_DOC, EventStream, event_stream

router = APIRouter(prefix="/api", tags=["runs"])


@dataclass(frozen=True)
class StreamStart:
    cursor: Cursor
    segments: list[Segment]


async def stream_start(
    request: Request,
    run_id: RunId,
    after_train: int = Query(-1, ge=-1, le=MAX_ID,
                             description="first connection: the last train iteration already drawn"),
    after_val: int = Query(-1, ge=-1, le=MAX_ID,
                           description="first connection: the last val iteration already drawn"),
    include_parent: bool = Query(False, description="a continued run: the earlier run's points come first"),
    last_event_id: Annotated[str | None, Header(description="set by the browser on reconnect; wins")] = None,
) -> StreamStart:
    """Where the stream starts; a bad Last-Event-ID (400) or an unknown run (404) fails before any event is sent."""
    try:
        cursor = resume_cursor(last_event_id, after_train, after_val)
    except CursorError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    segments = await asyncio.to_thread(read_segments, request.app.state.engine, run_id, include_parent)
    if segments is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    return StreamStart(cursor, segments)


@router.get("/runs/{run_id}/events", response_class=EventStream,
            responses={**STREAM_DOC, **stream_problems(400, 404, 422)})
async def run_events(
    request: Request,
    run_id: RunId,
    start: Annotated[StreamStart, Depends(stream_start)],
    max_s: float | None = Query(None, gt=0, le=86_400, description="end the stream after so many seconds"),
) -> EventStream:
    """`text/event-stream` of a run: `status` (state, iteration, latest train loss) on every change,
    `metrics` (new train/val points, as in /metrics), then `end` (final state, best checkpoint) once the
    run has ended and every point was sent. Each event's id is the cursor `<train iter>:<val iter>`."""
    stopping: threading.Event | None = getattr(request.app.state, "stopping", None)
    return event_stream(run_event_stream(request.app.state.engine, run_id, start.segments, start.cursor,
                                         StreamTiming(max_s=max_s), stopping))
