"""Big runs: a run with 200,000 train reports and 2,000 val reports stays fluid.

Fills a database directly (no training), starts a real server on it, and measures
  * server time of the run page (HTML), the chart's first metrics request
    (`?max_points=2000`, LTTB on the server), the annotations, and a full-detail zoom window;
  * time until the chart is drawn in headless Chromium (navigation start to the chart's
    `data-drawn` attribute), and the same for the undownsampled request as the A side.
Medians of --repeats. Targets: < 1 s each. The server is set up as bench/bench_service.py sets it up
(its own folders, an access token that every request and Chromium's first visit carry).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_bigrun.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_bigrun.py --smoke    # 2,000 reports, 1 repeat: checks its figures
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_service import CHROMIUM_ARGS, Service, chromium_default, start_server
from bench.common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    check_figures,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    verdict,
    write_results,
)


def fill(db_path: Path, train_reports: int, val_reports: int) -> int:
    """One completed run with the given numbers of reports (a plausible loss curve)."""
    from app.db import make_engine  # creates the tables exactly as the app does

    make_engine(db_path).dispose()
    rng = random.Random(0)
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    with sqlite3.connect(db_path) as conn:
        cur = conn.execute(
            "INSERT INTO run (name, status, config_json, created_at, started_at, finished_at, stop_requested,"
            " iteration, total_iters, deploy_best_on_end, notes) VALUES (?, 'completed', ?, ?, ?, ?, 0, ?, ?, 0, '')",
            ("big run", json.dumps({"model": "big", "data": "big", "iters": train_reports * 10, "save_every": 100_000,
                                    "steps_per_eval": train_reports * 10 // val_reports}),
             start, start, start + timedelta(hours=5), train_reports * 10, train_reports * 10),
        )
        run_id = int(cur.lastrowid or 0)
        rows = []
        for i in range(1, train_reports + 1):
            it = i * 10
            loss = 0.2 + 1.8 * math.exp(-it / 200_000) + rng.gauss(0, 0.02)
            rows.append((run_id, it, loss, 1e-5, 0.07, 360.0, it * 460, 67.7, start + timedelta(seconds=it / 10)))
        conn.executemany(
            "INSERT INTO trainreport (run_id, iteration, train_loss, learning_rate, iterations_per_second,"
            " tokens_per_second, trained_tokens, peak_memory, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        step = train_reports * 10 // val_reports
        conn.executemany(
            "INSERT INTO valreport (run_id, iteration, val_loss, val_time, batches, recorded_at)"
            " VALUES (?,?,?,?,?,?)",
            [(run_id, k * step, 0.25 + 1.8 * math.exp(-k * step / 200_000) + rng.gauss(0, 0.01), 1.0, 25,
              start) for k in range(val_reports)])
    return run_id


def timed_get(service: Service, path: str) -> tuple[float, int]:
    request = service.request("GET", path)
    tic = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as resp:
        size = len(resp.read())
    return time.perf_counter() - tic, size


def chart_draw_seconds(service: Service, path: str, chromium: str, repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.new_page().goto(service.first_visit())  # the token cookie, outside the measured navigations
        for _ in range(repeats):
            page = context.new_page()
            page.goto(service.base + path)
            page.wait_for_function("document.querySelector('#loss-chart')?.dataset.drawn === 'true'", timeout=120_000)
            # navigation start to the first draw, measured by the page's own clock
            times.append(page.evaluate("performance.now()") / 1000)
            page.close()
        browser.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-reports", type=int, default=200_000)
    parser.add_argument("--val-reports", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default=chromium_default())
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--supervisor-interval", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="2,000 train and 20 val reports, 1 repeat, figures "
                        "checked; results to bench_bigrun-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_reports, args.val_reports, args.repeats = 2_000, 20, 1
    args.model, args.data = args.model.resolve(), args.data.resolve()
    info = machine_info()
    zoom_start = args.train_reports * 10 // 2  # a window of 1% of the run's iterations, in its middle
    zoom_end = zoom_start + args.train_reports * 10 // 100
    with tempfile.TemporaryDirectory(prefix="lb-bigrun-") as tmp:
        root = Path(tmp)
        tic = time.perf_counter()
        run_id = fill(root / "loraboard.db", args.train_reports, args.val_reports)
        fill_s = time.perf_counter() - tic
        service = start_server(root, args)
        try:
            timed_get(service, f"/runs/{run_id}")  # warm
            paths = {
                "run page (HTML, with summary cards)": f"/runs/{run_id}",
                "runs list (HTML, with per-run figures)": "/",
                "compare page (HTML, settings that differ)": f"/compare?ids={run_id}",
                "metrics, downsampled (max_points=2000)": f"/api/runs/{run_id}/metrics?max_points=2000",
                f"metrics, zoom window of {zoom_end - zoom_start:,} iterations": f"/api/runs/{run_id}/metrics?"
                f"start={zoom_start}&end={zoom_end}&max_points=2000",
                "annotations": f"/api/runs/{run_id}/annotations",
                "metrics, everything (no downsampling)": f"/api/runs/{run_id}/metrics",
            }
            server_times: dict[str, Any] = {}
            for name, path in paths.items():
                samples = [timed_get(service, path) for _ in range(args.repeats)]
                server_times[name] = {"median_s": median([s for s, _ in samples]), "bytes": samples[0][1]}
            draw = chart_draw_seconds(service, f"/runs/{run_id}", args.chromium, args.repeats)
        finally:
            service.process.terminate()
            service.process.wait(timeout=30)
    result = {"train_reports": args.train_reports, "val_reports": args.val_reports, "fill_s": fill_s,
              "server": server_times, "chart_draw_s": draw, "chart_draw_median_s": median(draw), "machine": info}
    rows = [[name, fmt(v["median_s"], 3, " s"), f"{v['bytes'] / 1e6:.2f} MB",
             verdict(v["median_s"], 1.0, higher_is_better=False) if "everything" not in name else "(reference)"]
            for name, v in server_times.items()]
    draw_line = "chart drawn in Chromium (navigation → first draw)"
    rows.append([draw_line, fmt(median(draw), 3, " s"), "", verdict(median(draw), 1.0, higher_is_better=False)])
    table = "\n\n".join([f"Big run: {args.train_reports:,} train reports, {args.val_reports:,} val reports",
                          markdown_table(["what", "median", "size", "target < 1 s"], rows), machine_line(info)])
    print(table, flush=True)
    if args.smoke:
        figures = [(f"| {name} |", v["median_s"]) for name, v in server_times.items()]
        check_figures([*figures, (draw_line, median(draw))], table)
    write_results("bench_bigrun", result, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
