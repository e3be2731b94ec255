"""Service numbers of a real `python -m app serve`: start latency, server memory, live-chart latency.

    .venv/bin/python bench/bench_service.py [--start-runs 5] [--live-seconds 60]
    .venv/bin/python bench/bench_service.py --smoke     # 1 start, a short live watch of it: checks its figures

1. Start latency: seconds from POST /api/runs to the first train report visible through
   GET /api/runs/{id}/metrics (polled every 20 ms); each run is stopped after its first
   report and waited for. Median over --start-runs runs.
2. Server memory: VmRSS of the server process (never its workers), idle after start and
   the maximum while runs train (sampled every 50 ms), its VmHWM at the end, and whether
   any MLX library is mapped into it (/proc/<pid>/maps).
3. Live latency: the run page in headless Chromium (Playwright); for each train point the
   chart draws, (when the page saw data-train-points grow, Date.now()) minus (the report's
   recorded_at in the database, stamped by the worker as it queues the report, just before
   its commit). Both clocks are this machine's. p50/p95 over --live-seconds of training; and where
   that time goes (bench/live_stages.py): the worker's commit, the server's stream, the browser's draw.
4. Server CPU while idle: the server process's CPU time (utime + stime) over the idle wait after start,
   as a share of one core.

The server is configured by this script alone (none of the caller's LORABOARD_ settings): a temporary
database, adapters folder and data folder (holding a copy of the embedded model and sample data, its
defaults), an access token (LORABOARD_TOKEN; requests send it as a Bearer header, Chromium's first visit
as ?token=), and LORABOARD_ALLOWED_DIRS naming that folder, --model and --data, so the runs may read them.
Prints Markdown, writes bench/results/bench_service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROJECT_DIR,
    check_figures,
    check_inputs,
    ensure_defaults,
    fmt,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    median,
    own_env,
    percentile,
    smoke_data,
    verdict,
    write_results,
)
from bench.live_stages import CommitClock, StreamClock, drawn_times, point_latencies, report_times, stage_summary
from bench.process_stats import RssSampler, cpu_seconds, live_children, mlx_mappings, proc_status_kb

TERMINAL = {"completed", "stopped", "early_stopped", "failed", "interrupted"}
# tests/conftest.py QUICK_RUN, with iters 200.
RUN_CONFIG: dict[str, Any] = {
    "iters": 200, "batch_size": 4, "learning_rate": 1e-3, "num_layers": 4, "steps_per_report": 5,
    "steps_per_eval": 20, "save_every": 20, "val_batches": 5, "max_seq_length": 512,
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Records (count, Date.now()) each time the chart sets data-train-points.
OBSERVER_JS = """
window.__trainSeen = [];
new MutationObserver(function (records) {
  var now = Date.now();
  records.forEach(function (r) {
    var n = parseInt(r.target.getAttribute("data-train-points") || "0", 10);
    window.__trainSeen.push([n, now]);
  });
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-train-points"] });
"""
# True once the chart has drawn a point after its first draw (what a latency is measured on).
NEW_POINT_DRAWN_JS = "(s => s.length >= 2 && s[s.length - 1][0] > s[0][0])(window.__trainSeen || [])"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running `python -m app serve` of this benchmark: its process, address and access token."""

    process: subprocess.Popen[bytes]
    base: str
    token: str

    def request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        """A request to the server carrying its token (as a script sends it: a Bearer header)."""
        data = json.dumps(body).encode() if body is not None else None
        return urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; its JSON answer. A refusal exits with the server's own sentence (a 422 names the field)."""
        try:
            with urllib.request.urlopen(self.request(method, path, body), timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise SystemExit(f"bench: {method} {path} answered {err.code}: {err.read().decode(errors='replace')}"
                             ) from None

    def first_visit(self, path: str = "/") -> str:
        """The address a browser opens first: ?token= makes the server set its cookie (and redirect to `path`)."""
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={self.token}"


def server_env(root: Path, args: argparse.Namespace, token: str, **extra: str) -> dict[str, str]:
    """The server's whole configuration: temporary folders, the token, the folders its runs may read, and `extra`
    (further LORABOARD_ settings)."""
    allowed = [root, args.model, args.data]
    settings = {"LORABOARD_DATA_DIR": str(root / "data"), "LORABOARD_DB_PATH": str(root / "loraboard.db"),
                "LORABOARD_ADAPTERS_DIR": str(root / "adapters"), "LORABOARD_CACHE_DIR": str(CACHE_DIR),
                "LORABOARD_TOKEN": token, "LORABOARD_ALLOWED_DIRS": os.pathsep.join(str(p) for p in allowed)}
    if args.supervisor_interval is not None:
        settings["LORABOARD_SUPERVISOR_INTERVAL_S"] = str(args.supervisor_interval)
    return own_env(**settings, **extra)


def start_server(root: Path, args: argparse.Namespace, **extra: str) -> Service:
    """`python -m app serve` on a free port, configured by server_env; returns once it answers."""
    ensure_defaults()
    data_dir = root / "data"
    # the server's own defaults, copied (a few MB): absent, it would build them; linked, they would lead out of its
    # folders, which the server refuses
    shutil.copytree(DEFAULT_MODEL, data_dir / "models" / DEFAULT_MODEL.name)
    shutil.copytree(DEFAULT_DATA, data_dir / DEFAULT_DATA.name)
    token = secrets.token_urlsafe(24)
    port = free_port()
    log = (root / "server.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], cwd=PROJECT_DIR,
                               env=server_env(root, args, token, **extra), stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT)
    service = Service(process, f"http://127.0.0.1:{port}", token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(service.request("GET", "/api/runs"), timeout=30):
                return service
        except urllib.error.HTTPError as err:
            process.kill()
            raise SystemExit(f"bench: the server refused GET /api/runs ({err.code}): {err.read().decode()}") from None
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                raise SystemExit(f"bench: the server exited:\n{log_tail(root / 'server.log')}") from None
            time.sleep(0.1)
    process.kill()
    raise SystemExit("bench: the server did not answer within 60 s")


def stop_and_wait(service: Service, run_id: int, timeout: float = 120) -> str:
    """Request a stop, wait for the run's end and for its worker process to be gone."""
    service.call("POST", f"/api/runs/{run_id}/stop", {})
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = service.call("GET", f"/api/runs/{run_id}")["status"]
        if status in TERMINAL and not live_children(service.process.pid):
            return status
        time.sleep(0.1)
    raise SystemExit(f"bench: run {run_id} did not end within {timeout:.0f} s (status {status})")


def stop_all(service: Service) -> None:
    """Best effort: leave no worker training (workers outlive the server)."""
    try:
        for run in service.call("GET", "/api/runs"):
            if run["status"] not in TERMINAL:
                service.call("POST", f"/api/runs/{run['id']}/stop", {})
    except (urllib.error.URLError, ConnectionError, TimeoutError, SystemExit):
        pass


def measure_start(service: Service, config: dict[str, Any], timeout: float, keep: bool = False) -> tuple[float, int]:
    """Seconds from POST /api/runs to the first train report in /metrics, and the run's id; the run is then stopped,
    or left training when `keep` (a smoke watches it live next)."""
    started = time.perf_counter()
    run = service.call("POST", "/api/runs", config)
    run_id = run["id"]
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        if service.call("GET", f"/api/runs/{run_id}/metrics")["train"]:
            latency = time.perf_counter() - started
            break
        polls += 1
        if polls % 25 == 0 and (run := service.call("GET", f"/api/runs/{run_id}"))["status"] in TERMINAL:
            raise SystemExit(f"bench: run {run_id} ended {run['status']} before its first report: {run['error']}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no train report {timeout:.0f} s after starting run {run_id}")
        time.sleep(0.02)
    if keep:
        return latency, run_id
    status = stop_and_wait(service, run_id)
    if status == "failed":
        raise SystemExit(f"bench: run {run_id} failed: {service.call('GET', f'/api/runs/{run_id}')['error']}")
    return latency, run_id


def measure_live(service: Service, db_path: Path, config: dict[str, Any], args: argparse.Namespace,
                 start: Callable[[], int] | None = None) -> dict[str, Any]:
    """The live latencies of a run started for it once the browser is up, or by `start` (a smoke's timed start
    run, left training: the worker trains no longer than the watch)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(service.first_visit())  # the token cookie, set before the measured page
            page.add_init_script(OBSERVER_JS)
            run_id = start() if start is not None else service.call("POST", "/api/runs",
                                                                    {**config, "iters": 1_000_000})["id"]
            commits = CommitClock(db_path, run_id).start()
            stream = StreamClock(service.request("GET", f"/api/runs/{run_id}/events")).start()
            page.goto(f"{service.base}/runs/{run_id}")
            page.wait_for_timeout(args.live_seconds * 1000)
            # a short watch (--smoke, a slow start) waits on for a point drawn after the first draw
            try:
                page.wait_for_function(NEW_POINT_DRAWN_JS, timeout=args.start_timeout * 1000)
            except PlaywrightTimeout:
                run = service.call("GET", f"/api/runs/{run_id}")
                reports = len(service.call("GET", f"/api/runs/{run_id}/metrics")["train"])
                raise SystemExit(f"bench: the chart drew no new point within {args.start_timeout:.0f} s of the live "
                                 f"watch (run {run_id} {run['status']}, {reports} train reports, error "
                                 f"{run['error']}; draws seen {page.evaluate('window.__trainSeen')})") from None
            seen: list[list[int]] = page.evaluate("window.__trainSeen")
        finally:
            browser.close()
    status = stop_and_wait(service, run_id)
    commits.stop()
    stream.stop()
    reports = report_times(db_path, run_id)
    recorded = [at for _, at in reports]
    latencies = point_latencies(seen, recorded)
    stages = stage_summary(dict(reports), commits.seen, stream.seen, drawn_times(seen, [it for it, _ in reports]))
    return {"run_id": run_id, "status": status, "reports": len(recorded), "stages": stages,
            "points_drawn": seen[-1][0] if seen else 0, "latencies_s": latencies,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "max_s": max(latencies) if latencies else None}


def report(result: dict[str, Any], info: dict[str, Any]) -> str:
    start, rss, live = result["start_latency"], result["server_rss_mb"], result["live"]
    rows = [
        ["start latency (median)", fmt(start["median_s"], 2, " s"),
         " / ".join(fmt(x, 2) for x in start["runs_s"]), "≤ 5 s", verdict(start["median_s"], 5.0, False)],
        ["server RSS idle", fmt(rss["idle"], 1, " MB"), "", "< 150 MB", verdict(rss["idle"], 150.0, False)],
        ["server RSS max while training", fmt(rss["max_training"], 1, " MB"), f"VmHWM {fmt(rss['hwm'], 1)} MB",
         "< 150 MB", verdict(rss["max_training"], 150.0, False)],
        ["MLX mapped in the server", "no" if not result["mlx_mappings"] else "yes", "/proc/<pid>/maps",
         "no", "meets" if not result["mlx_mappings"] else "misses"],
        ["live latency p50", fmt(live["p50_s"], 3, " s"), f"{len(live['latencies_s'])} points", "", ""],
        ["live latency p95", fmt(live["p95_s"], 3, " s"), f"max {fmt(live['max_s'], 3)} s", "≤ 0.5 s",
         verdict(live["p95_s"], 0.5, False)],
        ["server CPU while idle", fmt(result["server_cpu_idle"] * 100, 2, " %"), "of one core", "", ""],
    ]
    stages = live["stages"]
    stage_rows = [[name, fmt(stages[key]["p50_s"], 3, " s"), fmt(stages[key]["p95_s"], 3, " s")]
                  for key, name in (("commit", "worker: queued → committed"),
                                    ("stream", "server: committed → event received"),
                                    ("draw", "browser: event received → drawn"), ("total", "total"))]
    return "\n\n".join([
        "## Service", markdown_table(["measure", "value", "detail", "target", ""], rows),
        f"Where a live point's time goes ({stages['points']} points):",
        markdown_table(["stage", "p50", "p95"], stage_rows), machine_line(info),
    ])


def chromium_default() -> str:
    for candidate in (os.environ.get("LORABOARD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return "/usr/bin/chromium"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (default: %(default)s)")
    parser.add_argument("--start-runs", type=int, default=5, help="runs timed for the start latency")
    parser.add_argument("--live-seconds", type=float, default=60, help="training time the run page is watched")
    parser.add_argument("--idle-seconds", type=float, default=3, help="idle time before the idle RSS is read")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds to wait for a first report")
    parser.add_argument("--supervisor-interval", type=float, default=None,
                        help="LORABOARD_SUPERVISOR_INTERVAL_S for the server (default: the app's own)")
    parser.add_argument("--chromium", default=chromium_default(), help="Chromium executable (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="the whole script on the least work (1 start, then 1 s "
                        "of that run's live chart or until a point is drawn, 0.5 s idle; rows of 64 tokens, a report "
                        "every 5 steps), its figures checked; results to bench_service-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.start_runs, args.live_seconds, args.idle_seconds = 1, 1.0, 0.5
    return args


def smoke_figures(result: dict[str, Any]) -> list[tuple[str, float | None]]:
    """The figures a smoke run checks (check_figures): each a line of the report."""
    rss, live = result["server_rss_mb"], result["live"]
    return [("start latency (median)", result["start_latency"]["median_s"]), ("server RSS idle", rss["idle"]),
            ("server RSS max while training", rss["max_training"]), ("live latency p50", live["p50_s"]),
            ("live latency p95", live["p95_s"])]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:  # the sample's first examples: no process tokenizes the whole sample
        args.data = smoke_data(args.data)
    check_inputs(args.model, args.data)
    info = machine_info()
    config = {**RUN_CONFIG, "model": str(args.model), "data": str(args.data)}
    if args.smoke:  # rows of 64 tokens and one validation batch: the least work before a report; a report every 5
        config.update(max_seq_length=64, val_batches=1)  # steps (a report a step floods the run page's chart)
    with tempfile.TemporaryDirectory(prefix="loraboard-bench-service-") as scratch:
        root = Path(scratch)
        service = start_server(root, args)
        process = service.process
        sampler = RssSampler(process.pid).start()
        try:
            cpu_before = cpu_seconds(process.pid)
            time.sleep(args.idle_seconds)
            cpu_idle = (cpu_seconds(process.pid) - cpu_before) / args.idle_seconds
            idle_kb = proc_status_kb(process.pid, "VmRSS") or 0
            sampler.phase = "start"
            starts: list[float] = []

            def timed_start(keep: bool) -> int:
                latency, run_id = measure_start(service, {**config, "iters": 1_000_000} if keep else config,
                                                args.start_timeout, keep=keep)
                starts.append(latency)
                print(f"  start latency {len(starts)}/{args.start_runs}: {latency:.2f} s", file=sys.stderr, flush=True)
                return run_id

            # a smoke's last start run goes on training for the live watch (one worker start less), started once
            # the browser is up
            for _ in range(args.start_runs - 1 if args.smoke else args.start_runs):
                timed_start(keep=False)
            sampler.phase = "live"
            live = measure_live(service, root / "loraboard.db", config, args,
                                (lambda: timed_start(keep=True)) if args.smoke else None)
            print(f"  live: {len(live['latencies_s'])} points, p95 {fmt(live['p95_s'], 3)} s", file=sys.stderr)
            hwm_kb = proc_status_kb(process.pid, "VmHWM") or 0
            mapped = mlx_mappings(process.pid)
        finally:
            sampler.stop()
            stop_all(service)
            process.terminate()
            process.wait(timeout=30)
    training_kb = max(sampler.max_kb.get("start", 0), sampler.max_kb.get("live", 0))
    result = {
        "start_latency": {"median_s": median(starts), "runs_s": starts},
        "server_rss_mb": {"idle": idle_kb / 1024, "max_idle": sampler.max_kb.get("idle", 0) / 1024,
                          "max_training": training_kb / 1024, "hwm": hwm_kb / 1024},
        "mlx_mappings": mapped,
        "server_cpu_idle": cpu_idle,
        "live": live,
    }
    table = report(result, info)
    print(table, flush=True)
    if args.smoke:
        check_figures(smoke_figures(result), table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results("bench_service", {"settings": settings, "run_config": config, "machine": info, **result},
                         smoke=args.smoke)
    print(f"\nwrote {path.relative_to(PROJECT_DIR)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
