"""Server-sent events for a run page: new metric points as they are committed, the run's status, its end.

Every event carries an `id:` that is the stream's cursor, `<last train iteration sent>:<last val iteration
sent>` (-1: none yet), so a browser reconnecting with `Last-Event-ID` resumes exactly where it stopped.
The stream yields `fastapi.sse.ServerSentEvent`s; app/sse.py frames them (JSON data, NaN as null) and adds
`: ping` keep-alive comments while the stream is idle. The cursor and segment logic is pure; the
reads open one short session each, off the event loop.

Between reads the stream watches the database's write-ahead log (`<db>-wal`): every commit of any process
changes its size or modification time, so a worker's new report is read within one wake (`wake_s`) of its
commit instead of at the next full poll (`poll_s`), which stays as the fallback. A wake costs one stat().
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.sse import ServerSentEvent
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.contract.policy import best_checkpoint
from app.runs.store.runs import TRAIN_FIELDS, checkpoints_of, latest_train
from app.tables import Run, RunStatus, TrainReport, ValReport

# Shown before the run's state in the browser tab's title (and in the page's first title).
STATUS_GLYPHS: dict[str, str] = {
    RunStatus.queued.value: "\u23f3",          # hourglass
    RunStatus.starting.value: "\u23f3",
    RunStatus.running.value: "\u25b6",         # play
    RunStatus.stopping.value: "\u23f8",        # pause
    RunStatus.completed.value: "\u2713",       # check mark
    RunStatus.early_stopped.value: "\u23f9",   # stop square, early
    RunStatus.stopped.value: "\u25a0",         # black square
    RunStatus.failed.value: "\u2717",          # ballot x
    RunStatus.interrupted.value: "\u26a0",     # warning sign
}


LARGEST_ITERATION = 2**63 - 1  # SQLite's largest integer


class CursorError(ValueError):
    """A Last-Event-ID that is not a cursor of this stream."""


@dataclass(frozen=True)
class Cursor:
    """The last train and val iterations a client has received (-1: none)."""

    train: int = -1
    val: int = -1

    def encode(self) -> str:
        return str(self.train) + ":" + str(self.val)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        parts = text.strip().split(":")
        try:
            train, val = (int(part) for part in parts)
        except ValueError:
            raise CursorError(
                f"Last-Event-ID {text!r} is not a loraboard event id: expected '<train iteration>:<val iteration>'"
                " such as '120:100' (-1 for none)"
            ) from None
        if train < -1 or val < -1:
            raise CursorError(f"Last-Event-ID {text!r}: iterations must be -1 or more")
        if max(train, val) > LARGEST_ITERATION:
            raise CursorError(f"Last-Event-ID {text!r}: iterations must be at most {LARGEST_ITERATION:,}")
        return cls(train, val)

    def after(self, train: Sequence[Mapping[str, Any]], val: Sequence[Mapping[str, Any]]) -> Cursor:
        """The cursor once these points (oldest first) are sent."""
        return Cursor(
            max(self.train, train[-1]["iteration"]) if train else self.train,
            max(self.val, val[-1]["iteration"]) if val else self.val,
        )


def resume_cursor(last_event_id: str | None, after_train: int, after_val: int) -> Cursor:
    """Where a stream starts: the browser's Last-Event-ID (a reconnect) wins over the first connection's query."""
    if last_event_id is not None and last_event_id.strip():
        return Cursor.decode(last_event_id)
    return Cursor(after_train, after_val)


@dataclass(frozen=True)
class Segment:
    """One run's share of a chart: iterations up to `upto` (None: all), val points only above `val_after`."""

    run_id: int
    upto: int | None = None
    val_after: int | None = None


def plan_segments(links: Sequence[tuple[int, Mapping[str, Any] | None]]) -> list[Segment]:
    """A continued run's chart, oldest run first, from (run id, its `resume_from` or None), newest first.

    Same points as `include_parent` in /metrics: an earlier run up to where the next continued it; a
    continued run's validation at the hand-over iteration (a repeat of the earlier run's) is left out.
    """
    segments: list[Segment] = []
    upto: int | None = None
    seen: set[int] = set()
    for run_id, source in links:
        if run_id in seen:
            break
        seen.add(run_id)
        resumed_at = int(source["iteration"]) if source else None
        segments.append(Segment(run_id, upto, resumed_at))
        if resumed_at is None:
            break
        upto = resumed_at
    return segments[::-1]


def tab_title(status: str, train_loss: float | None, name: str) -> str:
    """The browser tab's title: state glyph and word, the latest train loss, the run's name."""
    head = STATUS_GLYPHS.get(status, "\u2022") + " " + status.replace("_", " ")
    if train_loss is not None and math.isfinite(train_loss):
        head += " " + format(train_loss, ".3f")
    return " \u00b7 ".join([head, name, "loraboard"])


# ---- reads (each in its own short session; called through asyncio.to_thread) -----------------------


@dataclass(frozen=True)
class Update:
    status: str
    iteration: int
    total_iters: int
    train_loss: float | None
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    complete: bool  # everything committed so far was read (no batch limit hit)
    end: dict[str, Any] | None  # the end event's data, once the run is terminal


def read_segments(engine: Engine, run_id: int, include_parent: bool) -> list[Segment] | None:
    """The chart's segments, or None when there is no such run."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        if not include_parent:
            return [Segment(run_id)]
        links: list[tuple[int, Mapping[str, Any] | None]] = []
        current: Run | None = run
        while current is not None and current.id is not None and len(links) < 1000:
            source = current.config.get("resume_from")
            links.append((current.id, source))
            current = session.get(Run, source["run_id"]) if source else None
        return plan_segments(links)


def _train_rows(session: Session, seg: Segment, after: int, limit: int) -> list[dict[str, Any]]:
    query = select(*[getattr(TrainReport, f) for f in TRAIN_FIELDS]).where(
        TrainReport.run_id == seg.run_id, TrainReport.iteration > after)
    if seg.upto is not None:
        query = query.where(TrainReport.iteration <= seg.upto)
    rows = session.exec(query.order_by(col(TrainReport.iteration)).limit(limit)).all()
    return [dict(zip(TRAIN_FIELDS, row, strict=True)) for row in rows]


def _val_rows(session: Session, seg: Segment, after: int, limit: int) -> list[dict[str, Any]]:
    low = after if seg.val_after is None else max(after, seg.val_after)
    query = select(ValReport.iteration, ValReport.val_loss).where(
        ValReport.run_id == seg.run_id, ValReport.iteration > low)
    if seg.upto is not None:
        query = query.where(ValReport.iteration <= seg.upto)
    rows = session.exec(query.order_by(col(ValReport.iteration)).limit(limit)).all()
    return [{"iteration": it, "val_loss": loss} for it, loss in rows]


def end_data(session: Session, run: Run) -> dict[str, Any]:
    """What the page says (and notifies) when the run has ended."""
    assert run.id is not None
    best = best_checkpoint(checkpoints_of(session, run.id))
    latest = latest_train(session, run.id)
    return {
        "status": run.status, "name": run.name, "iteration": run.iteration,
        "stop_reason": run.stop_reason, "error": run.error,
        "train_loss": latest.train_loss if latest else None,
        "best": {"iteration": best.iteration, "val_loss": best.val_loss} if best else None,
    }


def read_update(engine: Engine, run_id: int, segments: Sequence[Segment], cursor: Cursor, batch: int) -> Update | None:
    """The run's state, then the points after the cursor (at most `batch` per series); None: the run is gone.

    The state is read first: a run seen terminal has committed every report before it said so,
    so the points read after it are all there are.
    """
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        latest = latest_train(session, run_id)
        train: list[dict[str, Any]] = []
        val: list[dict[str, Any]] = []
        for seg in segments:  # oldest first: each one's iterations are above the one before's
            if len(train) < batch:
                train += _train_rows(session, seg, cursor.after(train, []).train, batch - len(train))
            if len(val) < batch:
                val += _val_rows(session, seg, cursor.after([], val).val, batch - len(val))
        complete = len(train) < batch and len(val) < batch
        return Update(
            status=run.status, iteration=run.iteration, total_iters=run.total_iters,
            train_loss=latest.train_loss if latest else None, train=train, val=val, complete=complete,
            end=end_data(session, run) if run.is_terminal and complete else None,
        )


# ---- the stream -----------------------------------------------------------------------------------


def commit_stamp(database: str | None) -> tuple[int, int] | None:
    """(modification time, size) of a SQLite database's write-ahead log, which every commit changes; None
    when there is none to watch (no file, or an in-memory database)."""
    if not database:
        return None
    try:
        stat = os.stat(database + "-wal")
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@dataclass(frozen=True)
class StreamTiming:
    poll_s: float = 0.5        # how often SQLite is read for new points when no commit was seen
    wake_s: float = 0.1        # how often the write-ahead log is looked at for a commit (and shutdown checked)
    max_s: float | None = None  # end the stream after this long (the browser reconnects and resumes)
    retry_ms: int = 1000       # the browser's reconnection delay
    batch: int = 2000          # points per series in one event


async def run_event_stream(
    engine: Engine, run_id: int, segments: Sequence[Segment], cursor: Cursor, timing: StreamTiming,
    stopping: threading.Event | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """The event stream of one run: `status`, `metrics`, then `end` (or `gone`); ends early on server shutdown."""
    yield ServerSentEvent(retry=timing.retry_ms)
    started = time.monotonic()
    state: tuple[str, int, float | None] | None = None
    database = engine.url.database
    while True:
        seen = commit_stamp(database)  # before the read: a commit during it is read again, never missed
        update = await asyncio.to_thread(read_update, engine, run_id, segments, cursor, timing.batch)
        if update is None:
            yield ServerSentEvent(event="gone", data={"detail": f"run {run_id} no longer exists"}, id=cursor.encode())
            return
        if update.train or update.val:
            cursor = cursor.after(update.train, update.val)
            yield ServerSentEvent(event="metrics", data={"train": update.train, "val": update.val},
                                  id=cursor.encode())
        if (update.status, update.iteration, update.train_loss) != state:
            state = (update.status, update.iteration, update.train_loss)
            yield ServerSentEvent(event="status", id=cursor.encode(),
                                  data={"status": update.status, "iteration": update.iteration,
                                        "total_iters": update.total_iters, "train_loss": update.train_loss})
        if update.end is not None:
            yield ServerSentEvent(event="end", data=update.end, id=cursor.encode())
            return
        if update.complete:
            deadline = time.monotonic() + timing.poll_s
            while time.monotonic() < deadline and not (stopping and stopping.is_set()):
                await asyncio.sleep(min(timing.wake_s, timing.poll_s))
                if seen is not None and commit_stamp(database) != seen:
                    break
        if stopping is not None and stopping.is_set():
            yield ServerSentEvent(comment="server shutting down; reconnect to resume")
            return
        if timing.max_s is not None and time.monotonic() - started >= timing.max_s:
            yield ServerSentEvent(comment="stream time limit reached; reconnect to resume")
            return
