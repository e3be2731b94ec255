"""The run event stream (/api/runs/{id}/events) over plain HTTP against a real server and real workers,
plus its pure cursor and segment logic, and its reads against a real SQLite database."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, Server, bearer
from fastapi.sse import ServerSentEvent
from sqlmodel import Session

from app.db import make_engine
from app.runs.live.stream import (
    STATUS_GLYPHS,
    Cursor,
    CursorError,
    Segment,
    StreamTiming,
    commit_stamp,
    plan_segments,
    read_segments,
    read_update,
    resume_cursor,
    run_event_stream,
    tab_title,
)
from app.runs.store.runs import metrics_json
from app.tables import Run, TrainReport, ValReport

# ---- pure logic --------------------------------------------------------------------------------------


def test_cursor_round_trip_and_clear_errors() -> None:
    assert Cursor.decode(Cursor(120, 100).encode()) == Cursor(120, 100)
    assert Cursor.decode("-1:-1") == Cursor()
    for bad in ("", "12", "a:b", "1:2:3", "1.5:2"):
        with pytest.raises(CursorError, match="expected '<train iteration>:<val iteration>'"):
            Cursor.decode(bad)
    with pytest.raises(CursorError, match="-1 or more"):
        Cursor.decode("-2:5")
    with pytest.raises(CursorError, match="at most"):  # beyond SQLite's integers: refused, never a failed query
        Cursor.decode("99999999999999999999:0")
    assert Cursor(5, 0).after([{"iteration": 6}, {"iteration": 8}], []) == Cursor(8, 0)
    assert Cursor(5, 0).after([], [{"iteration": 10}]) == Cursor(5, 10)


def test_last_event_id_wins_over_the_query() -> None:
    assert resume_cursor(None, 40, 20) == Cursor(40, 20)
    assert resume_cursor("  ", 40, 20) == Cursor(40, 20)
    assert resume_cursor("50:40", 40, 20) == Cursor(50, 40)


def test_segments_of_a_continued_run_match_include_parent() -> None:
    assert plan_segments([(7, None)]) == [Segment(7)]
    # run 9 continued run 8 at 30, which continued run 7 at 10 (newest first in, oldest first out)
    links = [(9, {"run_id": 8, "iteration": 30}), (8, {"run_id": 7, "iteration": 10}), (7, None)]
    assert plan_segments(links) == [Segment(7, upto=10), Segment(8, upto=30, val_after=10), Segment(9, val_after=30)]
    looped = [(9, {"run_id": 8, "iteration": 30}), (8, {"run_id": 9, "iteration": 10}), (9, None)]
    assert [s.run_id for s in plan_segments(looped)] == [8, 9]


def test_status_glyphs_and_tab_title() -> None:
    assert set(STATUS_GLYPHS) == {"queued", "starting", "running", "stopping", "completed", "stopped",
                                  "early_stopped", "failed", "interrupted"}
    assert tab_title("running", 1.23456, "demo") == "\u25b6 running 1.235 \u00b7 demo \u00b7 loraboard"
    assert tab_title("early_stopped", None, "demo") == "\u23f9 early stopped \u00b7 demo \u00b7 loraboard"


# ---- reads against a real database ------------------------------------------------------------------


def seed_continued_runs(db: Path) -> tuple[int, int]:
    """Two ended runs in a real loraboard database: the second continued the first at iteration 20."""
    engine = make_engine(db)
    with Session(engine) as session:
        first = Run(name="first", status="completed", config_json=json.dumps({"iters": 30}), total_iters=30)
        session.add(first)
        session.commit()
        assert first.id is not None
        config = {"iters": 40, "resume_from": {"run_id": first.id, "iteration": 20}}
        second = Run(name="second", status="completed", config_json=json.dumps(config), total_iters=40)
        session.add(second)
        session.commit()
        assert second.id is not None
        for run_id, iterations, evals in ((first.id, range(2, 31, 2), (0, 10, 20, 30)),
                                          (second.id, range(22, 41, 2), (20, 30, 40))):
            for it in iterations:
                session.add(TrainReport(run_id=run_id, iteration=it, train_loss=5.0 - it / 10, learning_rate=1e-3,
                                        iterations_per_second=2.0, tokens_per_second=900.0,
                                        trained_tokens=100 * it, peak_memory=0.1))
            for it in evals:
                session.add(ValReport(run_id=run_id, iteration=it, val_loss=5.0 - it / 20 + run_id / 100))
        session.commit()
        ids = first.id, second.id
    engine.dispose()
    return ids


def test_reads_resume_in_small_batches_across_a_continued_run(tmp_path: Path) -> None:
    _, second = seed_continued_runs(tmp_path / "loraboard.db")
    engine = make_engine(tmp_path / "loraboard.db")
    for include_parent in (False, True):
        segments = read_segments(engine, second, include_parent)
        assert segments is not None
        cursor, train, val, batches = Cursor(), [], [], 0
        while True:
            update = read_update(engine, second, segments, cursor, batch=3)
            assert update is not None
            train += update.train
            val += update.val
            cursor = cursor.after(update.train, update.val)
            batches += 1
            if update.complete:
                break
        assert update.end is not None and update.end["status"] == "completed" and update.end["name"] == "second"
        with Session(engine) as session:
            expected = metrics_json(session, second, None, include_parent=include_parent)
        assert train == expected["train"] and val == expected["val"]  # same points as /metrics, in order
        assert batches > 3  # it really went batch by batch
    assert read_segments(engine, 999, True) is None
    engine.dispose()


def running_run(db: Path, name: str) -> tuple[Any, int]:
    """A real loraboard database holding one running run (no worker): its engine and the run's id."""
    engine = make_engine(db)
    with Session(engine) as session:
        run = Run(name=name, status="running", config_json="{}", total_iters=10)
        session.add(run)
        session.commit()
        assert run.id is not None
        return engine, run.id


def test_stream_ends_on_its_time_limit_or_at_shutdown(tmp_path: Path) -> None:
    engine, run_id = running_run(tmp_path / "loraboard.db", "waiting")

    async def collect(timing: StreamTiming, stopping: threading.Event | None = None) -> list[ServerSentEvent]:
        parts = []
        async for part in run_event_stream(engine, run_id, [Segment(run_id)], Cursor(), timing, stopping):
            parts.append(part)
            if stopping is not None and len(parts) == 2:  # retry + the first status: now shut down
                stopping.set()
        return parts

    quiet = asyncio.run(collect(StreamTiming(poll_s=0.05, max_s=1.0)))
    assert quiet[0] == ServerSentEvent(retry=1000) and (quiet[1].event, quiet[1].id) == ("status", "-1:-1")
    assert len(quiet) == 3 and (quiet[-1].comment or "").startswith("stream time limit reached")
    stopped = asyncio.run(collect(StreamTiming(poll_s=30.0, max_s=60.0), threading.Event()))
    assert len(stopped) == 3 and (stopped[-1].comment or "").startswith("server shutting down")  # not the limit
    engine.dispose()


def test_a_commit_is_streamed_at_the_next_wake_not_the_next_poll(tmp_path: Path) -> None:
    """With a 30 s poll, a report committed by another connection (as a worker commits) is sent within a few
    wakes: the stream saw the write-ahead log change."""
    engine, run_id = running_run(tmp_path / "loraboard.db", "live")
    assert commit_stamp(str(tmp_path / "loraboard.db")) is not None
    assert commit_stamp(str(tmp_path / "absent.db")) is None and commit_stamp(None) is None

    def worker_commits() -> None:
        time.sleep(0.5)
        conn = sqlite3.connect(tmp_path / "loraboard.db", timeout=30)  # a busy machine may hold a lock longer
        conn.execute("INSERT INTO trainreport (run_id, iteration, train_loss, learning_rate, iterations_per_second,"
                     " tokens_per_second, trained_tokens, peak_memory, recorded_at)"
                     " VALUES (?, 5, 1.0, 0.001, 1.0, 1.0, 10, 0.1, '2026-01-01 00:00:00')", (run_id,))
        conn.commit()
        conn.close()

    async def first_metrics() -> float:
        committer = threading.Thread(target=worker_commits)
        started = time.monotonic()
        committer.start()
        try:
            async for part in run_event_stream(engine, run_id, [Segment(run_id)], Cursor(),
                                               StreamTiming(poll_s=30.0, wake_s=0.05, max_s=20.0)):
                if part.event == "metrics":
                    return time.monotonic() - started
        finally:
            committer.join()
        raise AssertionError("no metrics event")

    waited = asyncio.run(first_metrics())
    assert waited < 10, waited  # the 30 s poll would have been the first chance without the wake
    engine.dispose()


# ---- over HTTP -----------------------------------------------------------------------------------------


@dataclass
class Event:
    event: str = "message"
    id: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


@dataclass
class Stream:
    events: list[Event]
    comments: list[str]
    retry: str | None


def stream(server: Server, path: str, headers: dict[str, str] | None = None, stop_at_end: bool = True) -> Stream:
    """Read an event stream until its `end` event (or until the server closes it)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("GET", path, headers={**bearer(server.token), **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read())
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        result = Stream([], [], None)
        for event in parse(response):
            if event.event == "retry":
                result.retry = event.data
            elif event.event == "comment":
                result.comments.append(event.data)
            else:
                result.events.append(event)
                if event.event == "end" and stop_at_end:
                    break
        return result
    finally:
        conn.close()


def parse(response: http.client.HTTPResponse) -> Iterator[Event]:
    current = Event()
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if current.data is not None or current.id is not None:
                yield current
            current = Event()
        elif line.startswith(":"):
            yield Event(event="comment", data=line[1:].strip())
        elif line.startswith("retry:"):
            yield Event(event="retry", data=line[6:].strip())
        else:
            key, _, value = line.partition(": ")
            if key == "data":
                current.data = json.loads(value)
            elif key == "id":
                current.id = value
            elif key == "event":
                current.event = value


def points(events: list[Event]) -> tuple[list[int], list[int]]:
    train = [p["iteration"] for e in events if e.event == "metrics" for p in e.data["train"]]
    val = [p["iteration"] for e in events if e.event == "metrics" for p in e.data["val"]]
    return train, val


def api_points(server: Server, run_id: int) -> tuple[list[int], list[int]]:
    metrics = server.get(f"/api/runs/{run_id}/metrics")
    return [p["iteration"] for p in metrics["train"]], [p["iteration"] for p in metrics["val"]]


def test_events_in_order_then_end_and_ids_resume_exactly(shared_server: Server, short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 30,
                                                   "steps_per_report": 2, "steps_per_eval": 10, "save_every": 10})
    assert status == 201
    live = stream(shared_server, f"/api/runs/{run['id']}/events")  # connected while it trains
    assert live.retry == "1000"
    events = live.events
    assert events[-1].event == "end" and [e.event for e in events].count("end") == 1
    final = shared_server.get(f"/api/runs/{run['id']}")
    assert final["status"] == "completed"
    train, val = points(events)
    assert (train, val) == api_points(shared_server, run["id"]) == (list(range(2, 31, 2)), [0, 10, 20, 30])
    # every id is the cursor after that event
    seen_train, seen_val = -1, -1
    for event in events:
        if event.event == "metrics":
            seen_train = max([seen_train] + [p["iteration"] for p in event.data["train"]])
            seen_val = max([seen_val] + [p["iteration"] for p in event.data["val"]])
        assert event.id == f"{seen_train}:{seen_val}", event
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert "running" in statuses and statuses[-1] == "completed"
    end = events[-1].data
    assert end["status"] == "completed" and end["name"] == run["name"] and end["iteration"] == 30
    assert end["best"]["iteration"] == final["best_checkpoint"]["iteration"]
    assert end["train_loss"] == shared_server.get(f"/api/runs/{run['id']}/metrics")["train"][-1]["train_loss"]

    # resume from the middle: by Last-Event-ID (the browser's reconnect), which wins over the query
    middle = next(e for e in events if e.event == "metrics" and [p for p in e.data["train"] if p["iteration"] > 12])
    rest = [p for e in events[events.index(middle) + 1:] if e.event == "metrics" for p in e.data["train"]]
    for headers, query in (({"Last-Event-ID": middle.id}, ""), ({"Last-Event-ID": middle.id}, "?after_train=-1"),
                           ({}, "?after_train={}&after_val={}".format(*middle.id.split(":")))):
        resumed = stream(shared_server, f"/api/runs/{run['id']}/events{query}", headers).events
        assert [p["iteration"] for e in resumed if e.event == "metrics" for p in e.data["train"]] == \
            [p["iteration"] for p in rest]
        assert resumed[-1].event == "end" and resumed[-1].id == events[-1].id
    caught_up = stream(shared_server, f"/api/runs/{run['id']}/events", {"Last-Event-ID": events[-1].id}).events
    assert [e.event for e in caught_up] == ["status", "end"]


def test_stream_time_limit_drops_the_connection_and_ids_resume_with_no_gap(shared_server: Server,
                                                                           short_data: Path) -> None:
    status, run = shared_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                                   "steps_per_report": 1, "steps_per_eval": 10,
                                                   "save_every": 100_000})
    assert status == 201
    path = f"/api/runs/{run['id']}/events?max_s=1.5"
    collected: list[Event] = []
    last_id: str | None = None
    connections = 0
    while connections < 3 or len(points(collected)[0]) < 12:  # connections the server ends itself
        assert connections < 100, "no train points arrived"
        part = stream(shared_server, path, {"Last-Event-ID": last_id} if last_id else {})
        assert any("time limit" in c for c in part.comments) and not any(e.event == "end" for e in part.events)
        collected += part.events
        ids = [e.id for e in part.events]
        last_id = ids[-1] if ids else last_id  # each one resumes from the last id received
        connections += 1
    shared_server.post(f"/api/runs/{run['id']}/stop")
    collected += stream(shared_server, f"/api/runs/{run['id']}/events", {"Last-Event-ID": last_id or "-1:-1"}).events
    assert collected[-1].event == "end" and collected[-1].data["status"] == "stopped"
    train, val = points(collected)
    assert (train, val) == api_points(shared_server, run["id"])  # no gap, no duplicate
    assert train == sorted(set(train)) and len(train) > 10


def test_continued_run_streams_the_earlier_curve_first(shared_server: Server) -> None:
    # two ended runs written straight into the server's database (no worker needed to read them)
    _, second = seed_continued_runs(shared_server.root / "loraboard.db")
    for query in ("", "?include_parent=true"):
        events = stream(shared_server, f"/api/runs/{second}/events{query}").events
        metrics = shared_server.get(f"/api/runs/{second}/metrics{query}")
        assert points(events) == ([p["iteration"] for p in metrics["train"]], [p["iteration"] for p in metrics["val"]])
        assert events[-1].event == "end"
    assert points(events)[0][:2] == [2, 4]  # with include_parent: the earlier run's first reports


def test_bad_requests_name_the_problem(shared_server: Server) -> None:
    status, body, _ = shared_server.request("GET", "/api/runs/987654/events")
    assert status == 404 and body["detail"] == "no run with id 987654"
    run_id, _ = seed_continued_runs(shared_server.root / "loraboard.db")
    conn = http.client.HTTPConnection("127.0.0.1", shared_server.port, timeout=30)
    conn.request("GET", f"/api/runs/{run_id}/events",
                 headers={"Last-Event-ID": "20-bad", **bearer(shared_server.token)})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 400 and "'20-bad'" in body["detail"]
    assert "<train iteration>:<val iteration>" in body["detail"]
    status, body, _ = shared_server.request("GET", f"/api/runs/{run_id}/events?after_train=-5")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "after_train"]


def test_shutdown_ends_open_streams_and_the_worker_trains_on(server: Server, short_data: Path) -> None:
    status, run = server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 100_000,
                                            "save_every": 100_000, "steps_per_eval": 100_000})
    assert status == 201
    server.wait_for(run["id"], lambda r: r["iteration"] >= 5, what="training")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/api/runs/{run['id']}/events", headers=bearer(server.token))
    response = conn.getresponse()
    assert response.status == 200
    received = parse(response)
    first = next(e for e in received if e.event == "status")
    assert first.data["status"] == "running"
    assert server.process is not None
    server.process.terminate()  # SIGTERM while the stream is open
    rest = list(received)  # the server ends the stream itself (no end event: the run goes on)
    conn.close()
    assert any(e.event == "comment" and "shutting down" in e.data for e in rest)
    assert not any(e.event == "end" for e in rest)
    server.process.wait(timeout=30)  # and then exits: open streams do not hold it up
    server.process = None
    server.start()
    after = server.wait_for(run["id"], lambda r: r["iteration"] > first.data["iteration"], what="training on")
    assert after["status"] == "running"  # the worker never noticed
