"""A run of 2 processes over loopback (mlx.launch, ring) against 1 process, through loraboard's worker.

    .venv/bin/python bench/bench_distributed.py [--iters 60] [--repeats 2]
    .venv/bin/python bench/bench_distributed.py --smoke    # 2 iterations, 1 round: checks its figures

Modes, on the same model, data, seed and global batch (so both see the same examples and the same
tokens at every step), run round-robin in one process (A/B, the order rotating each round):

  1-rank    `python -m worker train --run-id N`, as the supervisor starts a plain run
  2-ranks   `python -m worker launch ... -- -m worker train --run-id N`, as the supervisor starts a run
            whose config has distributed {backend: ring, hosts: [127.0.0.1], processes_per_host: 2}:
            each rank computes half of every batch, gradients are averaged over the ring

Tokens/s are the run's own per-report numbers (2 ranks: mlx-lm's all-summed tokens of the group over rank 0's
step time; nothing is counted twice), the first report skipped as warm-up. Loss at equal tokens: the train
loss of the last report and the validation loss at the end (both at the same trained tokens in both modes).
Per-rank tokens/s: the 2-rank run's record (Run.hardware_json "distributed"). On a machine of 2 cores, 2 ranks
share the cores that 1 rank uses alone: expect no speed-up here; the numbers say what the ring costs.
Prints Markdown tables and writes bench/results/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from app.contract.distributed import Distributed
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.process import launch_args, worker_env
from app.runs.store.runs import create_run
from app.tables import Run, TrainReport, ValReport
from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    base_env,
    check_figures,
    check_inputs,
    fmt,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    median,
    ratio,
    run_child,
    smoke_data,
    write_results,
)
from bench.rank_forks import rank_forks

MODES = ["1-rank", "2-ranks"]
TWO_RANKS = {"backend": "ring", "hosts": ["127.0.0.1"], "processes_per_host": 2}


def run_mode(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    settings = Settings(adapters_dir=work / "adapters", db_path=work / "loraboard.db", cache_dir=CACHE_DIR,
                        hf_offline=True, allowed_dirs=os.pathsep.join((str(args.model), str(args.data))))
    distributed = Distributed.model_validate(TWO_RANKS) if mode == "2-ranks" else None
    config = RunConfig(
        name=f"bench {mode}", model=str(args.model), data=str(args.data), seed=args.seed,
        batch_size=args.batch_size, iters=args.iters, num_layers=4, learning_rate=args.learning_rate,
        steps_per_report=args.steps_per_report, steps_per_eval=args.iters, save_every=args.iters,
        val_batches=args.val_batches, max_seq_length=args.max_seq_length, distributed=distributed,
    ).resolved(settings)
    engine = make_engine(settings.database_path)
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        assert run_id is not None
        env = worker_env(settings)
        env.update(base_env(OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"))
        launch = [] if distributed is None else [
            "launch", *launch_args(distributed, ["127.0.0.1"], env, sys.executable), "--", *args.rank_client, "-m",
            "worker"]
        cmd = [sys.executable, "-m", "worker", *launch, "train", "--run-id", str(run_id)]
        log = work / "worker.log"
        child = run_child(cmd, env, log, args.timeout, warm=args.smoke)
        with Session(engine) as session:
            run = session.get(Run, run_id)
            reports = session.exec(select(TrainReport).where(TrainReport.run_id == run_id)
                                   .order_by(col(TrainReport.iteration))).all()
            vals = session.exec(select(ValReport).where(ValReport.run_id == run_id)
                                .order_by(col(ValReport.iteration))).all()
            status = run.status if run else "missing"
            hardware = json.loads(run.hardware_json) if run and run.hardware_json else {}
            result = {
                "tokens_per_second": [r.tokens_per_second for r in reports],
                "trained_tokens": reports[-1].trained_tokens if reports else None,
                "final_train_loss": reports[-1].train_loss if reports else None,
                "val_loss": [(v.iteration, v.val_loss) for v in vals],
                "per_rank_tokens_per_second": hardware.get("distributed", {}).get("per_rank_tokens_per_second"),
                "wall_s": child.wall_s,
            }
    finally:
        engine.dispose()
    if child.returncode != 0 or status != "completed":
        raise SystemExit(f"bench: {mode} ended {status} (exit {child.returncode})\n{log_tail(log)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs both modes once")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4, help="global batch (divisible by 2)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps-per-report", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--smoke", action="store_true", help="2 iterations (a report each), 1 round, 1 validation "
                        "batch, 64 tokens a row, figures checked; results to bench_distributed-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.repeats, args.steps_per_report, args.val_batches, args.max_seq_length = 2, 1, 1, 1, 64
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:  # the sample's first examples: no process tokenizes the whole sample
        args.data = smoke_data(args.data)
    check_inputs(args.model, args.data)
    info = machine_info()
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="loraboard-bench-dist-") as scratch, contextlib.ExitStack() as forks:
        # a smoke's ranks are forked from this interpreter (bench/rank_forks.py): the client that asks for them
        args.rank_client = forks.enter_context(rank_forks()) if args.smoke else []
        for round_no in range(args.repeats):
            shift = round_no % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                work = Path(scratch) / f"r{round_no}-{mode}"
                work.mkdir()
                result = run_mode(args, work, mode)
                results[mode].append(result)
                print(f"  round {round_no + 1} {mode:<8} {fmt(median(result['tokens_per_second'][1:]), 0)} tok/s, "
                      f"loss {fmt(result['final_train_loss'], 4)}, {result['wall_s']:.1f} s", file=sys.stderr,
                      flush=True)
    summary = {}
    for mode, runs in results.items():
        summary[mode] = {
            "median_tokens_per_second": median([x for r in runs for x in r["tokens_per_second"][1:]]),
            "trained_tokens": runs[0]["trained_tokens"],
            "final_train_loss": median([r["final_train_loss"] for r in runs]),
            "final_val_loss": median([r["val_loss"][-1][1] for r in runs if r["val_loss"]]),
            "per_rank_tokens_per_second": runs[-1]["per_rank_tokens_per_second"],
            "median_wall_s": median([r["wall_s"] for r in runs]),
        }
    rows = [[mode, fmt(s["median_tokens_per_second"], 0), str(s["trained_tokens"]), fmt(s["final_train_loss"], 4),
             fmt(s["final_val_loss"], 4), str(s["per_rank_tokens_per_second"] or "-"), fmt(s["median_wall_s"], 1)]
            for mode, s in summary.items()]
    speed = ratio(summary["2-ranks"]["median_tokens_per_second"], summary["1-rank"]["median_tokens_per_second"])
    table = "\n\n".join([
        f"## 1 rank vs 2 ranks over loopback (ring): {args.iters} iters, global batch {args.batch_size}, "
        f"{args.repeats} rounds",
        markdown_table(["mode", "tokens/s (median)", "trained tokens", "train loss (end)", "val loss (end)",
                        "per-rank tokens/s", "wall (s)"], rows),
        f"2 ranks / 1 rank tokens/s: {fmt(speed, 3, 'x')}",
        machine_line(info),
    ])
    print(table, flush=True)
    if args.smoke:
        check_figures([(f"| {mode} |", s[key]) for mode, s in summary.items() for key in (
            "median_tokens_per_second", "trained_tokens", "final_train_loss", "final_val_loss", "median_wall_s")]
                      + [("2 ranks / 1 rank tokens/s", speed)], table)
    path = write_results("bench_distributed", {"settings": {k: str(v) for k, v in vars(args).items()},
                                               "machine": info, "summary": summary, "speed_ratio": speed,
                                               "runs": results}, smoke=args.smoke)
    print(f"\nwrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
