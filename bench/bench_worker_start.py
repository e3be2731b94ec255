"""How soon a run starts: workers forked from the worker forkserver against workers spawned as new processes.

    .venv/bin/python bench/bench_worker_start.py [--starts 7]
    .venv/bin/python bench/bench_worker_start.py --smoke     # 2 starts on each server: checks its figures

Two real `python -m app serve` processes (bench/bench_service.py's start_server, each its own temporary folders):
one as configured by default (LORABOARD_FORK_WORKERS true: on Linux each worker is a fork of a process that has
imported transformers once, app/contract/worker_fork.py), one with LORABOARD_FORK_WORKERS=false (each worker a new
`python -m worker` process). Starts alternate between the two. A start is bench_service's start latency: seconds
from POST /api/runs to the first train report visible through GET /api/runs/{id}/metrics; the run is then stopped
and its worker waited for. A server's first start is reported apart (the forkserver starts with the first worker);
the medians are over the later ones. Also the forkserver's resident memory, the price of keeping it.
Prints Markdown, writes bench/results/bench_worker_start.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_service import RUN_CONFIG, measure_start, start_server, stop_all
from bench.common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROJECT_DIR,
    check_figures,
    check_inputs,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    ratio,
    smoke_data,
    write_results,
)
from bench.process_stats import FORKSERVER_CODE, child_pids, proc_status_kb

MODES = {"forked": {}, "spawned": {"LORABOARD_FORK_WORKERS": "false"}}


def forkserver_rss_mb(server_pid: int) -> float | None:
    for pid in child_pids(server_pid):
        try:
            if FORKSERVER_CODE in Path(f"/proc/{pid}/cmdline").read_bytes():
                kb = proc_status_kb(pid, "VmRSS")
                return kb / 1024 if kb is not None else None
        except OSError:
            continue
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (default: %(default)s)")
    parser.add_argument("--starts", type=int, default=7, help="starts timed on each server, its first included")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds to wait for a first report")
    parser.add_argument("--smoke", action="store_true", help="2 starts on each server, rows of 64 tokens, its "
                        "figures checked; results to bench_worker_start-smoke.json")
    args = parser.parse_args(argv)
    args.supervisor_interval = None  # the app's own (bench_service.server_env reads it)
    if args.smoke:
        args.starts = 2
    return args


def report(result: dict[str, Any], info: dict[str, Any]) -> str:
    rows = [[mode, fmt(result[mode]["first_s"], 2, " s"), fmt(result[mode]["median_later_s"], 2, " s"),
             str(len(result[mode]["later_s"]))] for mode in MODES]
    return "\n".join([
        "## Worker start: forked from the forkserver against spawned",
        machine_line(info), "",
        markdown_table(["workers", "first start", "later starts (median)", "later starts"], rows), "",
        f"later starts, spawned / forked: {fmt(result['speedup'], 2, 'x')}",
        f"forkserver resident memory: {fmt(result['forkserver_rss_mb'], 0, ' MB')}",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:
        args.data = smoke_data(args.data)
    check_inputs(args.model, args.data)
    info = machine_info()
    config = {**RUN_CONFIG, "model": str(args.model), "data": str(args.data), "max_seq_length": 64,
              "val_batches": 1}
    starts: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="loraboard-bench-worker-start-") as scratch:
        services = {}
        try:
            for mode, extra in MODES.items():
                services[mode] = start_server(Path(scratch) / mode, args, **extra)
            for n in range(args.starts):
                for mode, service in services.items():
                    latency, _ = measure_start(service, config, args.start_timeout)
                    starts[mode].append(latency)
                    print(f"  {mode} start {n + 1}/{args.starts}: {latency:.2f} s", file=sys.stderr, flush=True)
            rss = forkserver_rss_mb(services["forked"].process.pid)
        finally:
            for service in services.values():
                stop_all(service)
                service.process.terminate()
                service.process.wait(timeout=30)
    result: dict[str, Any] = {mode: {"first_s": times[0], "later_s": times[1:], "median_later_s": median(times[1:])}
                              for mode, times in starts.items()}
    result["speedup"] = ratio(result["spawned"]["median_later_s"], result["forked"]["median_later_s"])
    result["forkserver_rss_mb"] = rss
    table = report(result, info)
    print(table, flush=True)
    if args.smoke:
        check_figures([("| forked |", result["forked"]["median_later_s"]),
                       ("| spawned |", result["spawned"]["median_later_s"]),
                       ("forkserver resident memory", rss)], table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results("bench_worker_start", {"settings": settings, "run_config": config, "machine": info,
                                                **result}, smoke=args.smoke)
    print(f"\nwrote {path.relative_to(PROJECT_DIR)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
