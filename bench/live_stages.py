"""Where a live chart point's time goes, for bench/bench_service.py: the worker's commit, the server's stream,
the browser's draw.

For each train report of the watched run, four moments on this machine's clock:

  recorded   the report's recorded_at, stamped by the worker as it queues the report for its writer thread
  committed  when the row first became visible to another connection (a read-only SQLite connection polled
             every 5 ms by CommitClock: the worker's commit, within 5 ms)
  streamed   when a plain HTTP client of the run's event stream (StreamClock, beside the browser's own) received
             the `metrics` event carrying it: the server noticed the commit, read it and sent it
  drawn      when the page's chart set data-train-points past it (the browser: its own stream and the draw)

The stages are the differences: commit (recorded → committed), stream (committed → streamed) and draw
(streamed → drawn), each as median and p95 over the points drawn.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.common import median, percentile


class CommitClock:
    """When each train report of a run became visible in the database (polled every `interval_s`)."""

    def __init__(self, db_path: Path, run_id: int, interval_s: float = 0.005) -> None:
        self.db_path, self.run_id, self.interval_s = db_path, run_id, interval_s
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="commit-clock", daemon=True)

    def start(self) -> CommitClock:
        self._thread.start()
        return self

    def _loop(self) -> None:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            last = -1
            while not self._stop.is_set():
                rows = conn.execute("SELECT iteration FROM trainreport WHERE run_id = ? AND iteration > ?"
                                    " ORDER BY iteration", (self.run_id, last)).fetchall()
                now = time.time()
                for (iteration,) in rows:
                    self.seen.setdefault(iteration, now)
                    last = max(last, iteration)
                self._stop.wait(self.interval_s)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class StreamClock:
    """When each train iteration arrived in a `metrics` event of the run's event stream (a plain HTTP client)."""

    def __init__(self, request: urllib.request.Request) -> None:
        self.request = request
        self.seen: dict[int, float] = {}
        self._response: Any = None
        self._thread = threading.Thread(target=self._loop, name="stream-clock", daemon=True)

    def start(self) -> StreamClock:
        self._thread.start()
        return self

    def _loop(self) -> None:
        event = ""
        try:
            with urllib.request.urlopen(self.request, timeout=300) as response:
                self._response = response
                for raw in response:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:") and event == "metrics":
                        now = time.time()
                        for point in json.loads(line.partition(":")[2])["train"]:
                            self.seen.setdefault(int(point["iteration"]), now)
                    elif not line:
                        event = ""
        except (OSError, ValueError, AttributeError):  # closed by stop(), or the stream ended
            return

    def stop(self) -> None:
        if self._response is not None:
            self._response.close()
        self._thread.join(timeout=5)


def drawn_times(seen: list[list[int]], iterations: list[int]) -> dict[int, float]:
    """When each train iteration was drawn (seconds), from the page's (points drawn, Date.now() ms) records; the
    points shown by the first draw (already there at page load) are left out."""
    if not seen:
        return {}
    drawn: dict[int, float] = {}
    shown = seen[0][0]
    for count, now_ms in seen[1:]:
        for index in range(shown, min(count, len(iterations))):
            drawn.setdefault(iterations[index], now_ms / 1000.0)
        shown = max(shown, count)
    return drawn


def stage_summary(recorded: dict[int, float], committed: dict[int, float], streamed: dict[int, float],
                  drawn: dict[int, float]) -> dict[str, Any]:
    """Median and p95 of each stage over the points that have all four moments."""
    points = sorted(set(drawn) & set(recorded) & set(committed) & set(streamed))
    stages = {
        "commit": [committed[i] - recorded[i] for i in points],
        "stream": [streamed[i] - committed[i] for i in points],
        "draw": [drawn[i] - streamed[i] for i in points],
        "total": [drawn[i] - recorded[i] for i in points],
    }
    return {"points": len(points), **{name: {"p50_s": median(values), "p95_s": percentile(values, 95)}
                                      for name, values in stages.items()}}


def report_times(db_path: Path, run_id: int) -> list[tuple[int, float]]:
    """The run's train reports' iterations and recorded_at (UTC, epoch seconds), in iteration order."""
    from sqlmodel import Session, col, select

    from app.db import make_engine
    from app.tables import TrainReport

    engine = make_engine(db_path)
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(TrainReport).where(TrainReport.run_id == run_id).order_by(col(TrainReport.iteration))
            ).all()
            stamps = [(r.iteration, r.recorded_at) for r in rows]
    finally:
        engine.dispose()
    return [(it, (s if s.tzinfo else s.replace(tzinfo=UTC)).timestamp()) for it, s in stamps]


def point_latencies(seen: list[list[int]], recorded: list[float]) -> list[float]:
    """Latency of each train point drawn after the first draw (points shown at page load are skipped)."""
    if not seen:
        return []
    shown = seen[0][0]
    latencies: list[float] = []
    for count, now_ms in seen[1:]:
        for index in range(shown, min(count, len(recorded))):
            latencies.append(now_ms / 1000.0 - recorded[index])
        shown = max(shown, count)
    return latencies
