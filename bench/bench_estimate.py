"""The pre-start estimate of a run against the run: wall time and useful-token share, on seed-shaped data.

    python bench/bench_estimate.py            # a real server, a seed-shaped set, three runs of one epoch each
    python bench/bench_estimate.py --smoke    # the estimate alone on the seed's drawn lengths (no server, no run)

A real `python -m app serve` (configured by this script alone, as bench_service.py does) writes a seed-shaped demo
set (worker/seed_shaped.py through the `demo_data` job) with lengths scaled to --max-seq-length, counts its tokens
(the `token_stats` job), then trains on it one epoch at a time:
1. a calibration run: nothing on this machine has timed a run yet, so it has no time estimate; it records its speed;
2. a run with `batch_grouping: length` and 3. one with `file_order`, each created with the estimate the new-run form
   shows (timed by the newest completed run of the model) and recorded on the run.
Each run's recorded estimate is set against its measured wall time (start to end, as the run page shows it; the
goal is ±15%) and its estimated useful-token share against the share the worker counted.

The smoke run estimates the shares of `worker/seed_shaped.seed_lengths` at the same scale (pure functions, about a
second) and checks the figures it prints; nothing is trained, so it shows no wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.runs.duration.padding import training_plan  # pure: no web library, no mlx
from bench.bench_service import TERMINAL, Service, start_server
from bench.common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    check_figures,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)
from worker.seed_shaped import seed_lengths

SEED_LIMIT = 2048  # the seed's max_seq_length, which its lengths are drawn against
RUN = {"learning_rate": 1e-3, "num_layers": 4, "batch_size": 4, "steps_per_report": 10, "steps_per_eval": 1000,
       "save_every": 1000, "val_batches": 4}


def wait(service: Service, path: str, done: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = service.call("GET", path)
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not end within {timeout_s:.0f} s: {answer}")
        time.sleep(0.5)


def one_run(service: Service, config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """A run created as the form creates it; its recorded estimate and what it measured."""
    created = service.call("POST", "/api/runs", config)
    done = wait(service, f"/api/runs/{created['id']}", lambda r: r["status"] in TERMINAL, timeout_s,
                f"run {created['id']}")
    if done["status"] != "completed":
        raise SystemExit(f"bench: run {done['id']} ended {done['status']}: {done.get('error')}")
    estimate = done["estimate"]
    print(f"  run {done['id']} ({config['name']}): estimated {fmt(estimate['wall_s'], 1)} s, measured "
          f"{fmt(estimate['measured_wall_s'], 1)} s", file=sys.stderr, flush=True)
    return {"id": done["id"], "name": config["name"], "grouping": config["batch_grouping"],
            "estimated_wall_s": estimate["wall_s"], "measured_wall_s": estimate["measured_wall_s"],
            "wall_ratio": estimate["wall_ratio"], "basis": estimate["basis"],
            "estimated_share": estimate["useful_token_share"], "measured_share": done["useful_token_share"],
            "positions_per_s": estimate["positions_per_s"], "iters": config["iters"]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The real benchmark: demo set, token statistics, calibration, then length and file_order."""
    with tempfile.TemporaryDirectory(prefix="loraboard-bench-estimate-") as scratch:
        root = Path(scratch)
        service = start_server(root, args)
        try:
            sizes = {"train": args.train, "valid": args.valid}
            job = service.call("POST", "/api/datasets/demo", {"name": "seed-shaped", "model": str(args.model),
                                                             "scale": args.max_seq_length / SEED_LIMIT,
                                                             "sizes": sizes})
            wait(service, f"/api/jobs/{job['id']}", lambda j: j["status"] == "completed", 600, "the demo set")
            data = root / "data" / "datasets" / "seed-shaped"
            stats = service.call("POST", "/api/token-stats", {"data": str(data), "model": str(args.model)})
            stats = wait(service, f"/api/token-stats/{stats['id']}", lambda j: j["status"] == "completed", 600,
                         "token statistics")
            iters = args.train // RUN["batch_size"]  # one epoch
            base = {**RUN, "model": str(args.model), "data": str(data), "max_seq_length": args.max_seq_length,
                    "iters": iters}
            runs = [one_run(service, {**base, "name": name, "batch_grouping": grouping}, args.run_timeout)
                    for name, grouping in (("calibration", "length"), ("length", "length"),
                                           ("file_order", "file_order"))]
        finally:
            service.process.terminate()
            service.process.wait(timeout=30)
    return {"runs": runs, "train_summary": stats["summary"]["splits"]["train"], "smoke": False}


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    """The estimate alone, on the seed's drawn lengths at this scale."""
    lengths = seed_lengths(args.train, scale=args.max_seq_length / SEED_LIMIT)
    tally: dict[int, int] = {}
    for length in lengths:
        tally[length] = tally.get(length, 0) + 1
    counts = [[length, tally[length]] for length in sorted(tally)]
    iters = args.train // RUN["batch_size"]
    runs = []
    for grouping in ("length", "file_order"):
        plan = training_plan(counts, RUN["batch_size"], args.max_seq_length, grouping, "tight", iters)
        assert plan is not None
        runs.append({"name": grouping, "grouping": grouping, "estimated_share": plan.useful_share,
                     "positions": plan.epoch.positions, "iters": iters})
    return {"runs": runs, "smoke": True}


def report(result: dict[str, Any], info: dict[str, Any]) -> str:
    if result["smoke"]:
        rows = [[f"estimated share ({r['name']})", fmt(r["estimated_share"], 3), fmt(r["positions"], 0)]
                for r in result["runs"]]
        table = markdown_table(["drawn seed lengths, one epoch", "useful-token share", "positions"], rows)
    else:
        rows = [[f"{r['name']} (run {r['id']})", fmt(r["estimated_wall_s"], 1), fmt(r["measured_wall_s"], 1),
                 fmt(r["wall_ratio"], 2), fmt(r["estimated_share"], 3), fmt(r["measured_share"], 3),
                 fmt(r["positions_per_s"], 0), r["basis"] or ""] for r in result["runs"]]
        table = markdown_table(["run", "estimated s", "measured s", "measured / estimated", "estimated share",
                                "measured share", "positions/s", "estimate by"], rows)
    return f"{table}\n\n{machine_line(info)}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: %(default)s)")
    parser.add_argument("--max-seq-length", type=int, default=256, help="lengths scaled to this limit "
                        "(the seed's 2,048; default: %(default)s)")
    parser.add_argument("--train", type=int, default=300, help="training examples (one epoch each run)")
    parser.add_argument("--valid", type=int, default=40, help="validation examples")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds a run may take")
    parser.add_argument("--smoke", action="store_true", help="the estimate alone on drawn lengths, its figures "
                        "checked; results to bench_estimate-smoke.json")
    args = parser.parse_args(argv)
    args.model, args.data, args.supervisor_interval = args.model.resolve(), DEFAULT_DATA, None  # as start_server reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    result = smoke(args) if args.smoke else measure(args)
    table = report(result, info)
    print(table, flush=True)
    if args.smoke:
        check_figures([(f"estimated share ({r['name']})", r["estimated_share"]) for r in result["runs"]]
                      + [(f"estimated share ({r['name']})", r["positions"]) for r in result["runs"]], table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_results("bench_estimate", {"machine": info, "settings": settings, **result}, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
