"""Pushed updates for open pages (server-sent events)."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from app.runs.live import CursorError, StreamTiming, read_segments, resume_cursor, run_event_stream

router = APIRouter(prefix="/api", tags=["runs"])


@router.get("/runs/{run_id}/events", response_class=StreamingResponse)
async def run_events(
    request: Request,
    run_id: int,
    after_train: int = Query(-1, ge=-1, description="first connection: the last train iteration already drawn"),
    after_val: int = Query(-1, ge=-1, description="first connection: the last val iteration already drawn"),
    include_parent: bool = Query(False, description="a continued run: the earlier run's points come first"),
    max_s: float | None = Query(None, gt=0, le=86_400, description="end the stream after so many seconds"),
    last_event_id: Annotated[str | None, Header(description="set by the browser on reconnect; wins")] = None,
) -> StreamingResponse:
    """`text/event-stream` of a run: `status` (state, iteration, latest train loss) on every change,
    `metrics` (new train/val points, as in /metrics), then `end` (final state, best checkpoint) once the
    run has ended and every point was sent. Each event's id is the cursor `<train iter>:<val iter>`."""
    try:
        cursor = resume_cursor(last_event_id, after_train, after_val)
    except CursorError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    engine = request.app.state.engine
    segments = await asyncio.to_thread(read_segments, engine, run_id, include_parent)
    if segments is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {run_id}")
    stopping: threading.Event | None = getattr(request.app.state, "stopping", None)
    stream = run_event_stream(engine, run_id, segments, cursor, StreamTiming(max_s=max_s), stopping)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
