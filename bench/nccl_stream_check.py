"""One GPU, before and after the nccl stream rerouting: the real worker's loss curve and tokens/s, A/B.

An nccl run reroutes mlx-lm's CPU-stream sums to the GPU's stream and runs loraboard's own collectives there
(worker/collective_streams.py). This checks that on one GPU nothing else changes: the same Mistral-7B-shaped
model and rows as bench/bench_gpu.py (built by its `build_inputs`, settings as its worker modes: LoRA rank 8
on 16 blocks, batch 4, rows of 1,159 tokens, Adam at 1e-5, seed 0), trained interleaved, one process per run,
on a run row of a temporary SQLite database:

  plain    a one-process run, `python -m worker train --run-id N`, as the dashboard starts one
  nccl-1   the same run with `distributed: {backend: nccl, hosts: [127.0.0.1], processes_per_host: 1}`,
           started as the dashboard starts a group: `python -m worker launch <launch_args> -- -m worker train
           --run-id N` (mlx.launch over NCCL, one rank), so the rerouting is installed around training

Prints, per run, the train loss at every report, the validation losses, and tokens/s (mlx-lm's per-report
figure; the first report of each run skipped as warm-up, median over the rest); then per mode the median
tokens/s over runs and the largest train-loss difference between the two modes at the same iterations.
Writes JSON (--json; default $OUT/nccl_stream_check.json when OUT is set, else bench/results/).

Needs MLX's CUDA backend and one NVIDIA GPU: on a lent GPU, put the CUDA wheel on PYTHONPATH as
bench/bench_gpu.py's docstring shows (its calls 1 and 2), then

    python3 bench/nccl_stream_check.py --work /tmp/lb --tokenizer .whl2/tok 2>&1 | tee $OUT/nccl_stream_check.txt

--smoke tries the script on any machine (CPU included): bench_gpu's small smoke model, 4 iterations of 2 rows
of 32 tokens, one round, figures checked. Without CUDA MLX has no NCCL backend, so there nccl-1 is started
directly (`python -m worker train`, no mlx.launch): the rerouting is still installed (the run's backend is
nccl) and reroutes to the CPU's default stream, which tries the worker's path but measures nothing of a GPU. In
smoke mode the probe and the workers run in forks of the script's interpreter (bench/warm.py), with the OpenBLAS
shim built once in data/.cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from app.contract.run_config import LoraParameters, RunConfig
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.process import launch_args
from app.jobs.supervisor import worker_env
from app.runs.store.runs import create_run
from app.tables import Run, TrainReport, ValReport
from bench.bench_gpu import build_inputs, gpu_info, probe
from bench.common import (
    CACHE_DIR,
    PROJECT_DIR,
    RESULTS_DIR,
    check_figures,
    fmt,
    log_tail,
    machine_info,
    run_child,
)
from bench.gpu_build import LORA_KEYS

MODES = ("plain", "nccl-1")
ONE_RANK = {"backend": "nccl", "hosts": ["127.0.0.1"], "processes_per_host": 1}


def run_config(args: argparse.Namespace, settings: Settings, mode: str) -> RunConfig:
    """bench_gpu's worker settings (mixed LoRA precision, tight padding), with the one-rank nccl group or not."""
    return RunConfig(
        name=f"nccl-stream-{mode}", model=str(args.model), data=str(args.data), seed=0, batch_size=args.batch_size,
        iters=args.iters, num_layers=args.num_layers, learning_rate=1e-5, steps_per_report=args.steps_per_report,
        steps_per_eval=args.iters + 1, save_every=args.iters + 1, val_batches=1, max_seq_length=2048,
        grad_checkpoint=False, lora_precision="mixed", batch_padding="tight",
        lora_parameters=LoraParameters(rank=8, scale=20.0, dropout=0.0, keys=list(LORA_KEYS)),
        distributed=ONE_RANK if mode == "nccl-1" else None,
    ).resolved(settings)


def worker_command(config: RunConfig, settings: Settings, run_id: int, launched: bool) -> list[str]:
    """The command the dashboard's supervisor starts for this run (app/jobs/process.spawn_worker)."""
    train = ["-m", "worker", "train", "--run-id", str(run_id)]
    if not launched:
        return [sys.executable, *train]
    group = config.distributed
    assert group is not None
    launch = launch_args(group, group.hosts or ["127.0.0.1"], worker_env(settings), sys.executable)
    return [sys.executable, "-m", "worker", "launch", *launch, "--", *train]


def run_worker(args: argparse.Namespace, mode: str, label: str) -> dict[str, Any]:
    """One run of `mode` through the real worker: its reports, tokens/s and wall time."""
    work = args.work / "runs" / label
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(adapters_dir=work / "adapters", db_path=work / "loraboard.db",
                        cache_dir=CACHE_DIR if args.smoke else args.work / "cache",  # a smoke: the shim built once
                        hf_offline=True, allowed_dirs=os.pathsep.join((str(args.work), str(args.model.parent),
                                                                       str(args.data.parent))))
    config = run_config(args, settings, mode)
    engine = make_engine(settings.database_path)
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        assert run_id is not None
        log = work / "run.log"
        launched = mode == "nccl-1" and args.cuda
        child = run_child(worker_command(config, settings, run_id, launched), worker_env(settings), log, args.timeout,
                          warm=args.smoke)
        with Session(engine) as session:
            run = session.get(Run, run_id)
            train = session.exec(select(TrainReport).where(TrainReport.run_id == run_id)
                                 .order_by(col(TrainReport.iteration))).all()
            val = session.exec(select(ValReport).where(ValReport.run_id == run_id)
                               .order_by(col(ValReport.iteration))).all()
            status, error = (run.status, run.error) if run else ("missing", None)
            tps = [r.tokens_per_second for r in train]
            result = {
                "label": label, "mode": mode, "launched_by_mlx_launch": launched, "status": status,
                "train_loss": [[r.iteration, r.train_loss] for r in train],
                "val_loss": [[r.iteration, r.val_loss] for r in val], "tokens_per_second": tps,
                "median_tokens_per_second": statistics.median(tps[1:] if len(tps) > 1 else tps) if tps else None,
                "peak_memory_gb": train[-1].peak_memory if train else None, "wall_s": round(child.wall_s, 1),
            }
    finally:
        engine.dispose()
    if child.returncode != 0 or status != "completed":
        raise RuntimeError(f"{label} ended {status} (exit {child.returncode}): {error}\n{log_tail(log, 30)}")
    return result


def largest_loss_difference(runs: list[dict[str, Any]]) -> float | None:
    """The largest |train loss of plain - train loss of nccl-1| at the same iteration, over every pair of runs."""
    curves = {m: [dict((it, loss) for it, loss in r["train_loss"]) for r in runs if r["mode"] == m] for m in MODES}
    gaps = [abs(a[it] - b[it]) for a in curves["plain"] for b in curves["nccl-1"] for it in a.keys() & b.keys()]
    return max(gaps) if gaps else None


def report(runs: list[dict[str, Any]], gpu: dict[str, Any], info: dict[str, Any]) -> str:
    """The Markdown tables: each run's curve, then each mode's median tokens/s."""
    lines = ["| run | train loss at each report | validation loss | tokens/s | peak GB |", "|---|---|---|---|---|"]
    for r in runs:
        curve = ", ".join(f"{it}: {loss:.4f}" for it, loss in r["train_loss"])
        val = ", ".join(f"{it}: {loss:.4f}" for it, loss in r["val_loss"])
        lines.append(f"| {r['label']} | {curve} | {val} | {fmt(r['median_tokens_per_second'], 1)} | "
                     f"{fmt(r['peak_memory_gb'], 2)} |")
    lines += ["", "| mode | runs | median tokens/s |", "|---|---|---|"]
    for mode in MODES:
        mine = [r["median_tokens_per_second"] for r in runs if r["mode"] == mode and r["median_tokens_per_second"]]
        lines.append(f"| {mode} | {len(mine)} | {fmt(statistics.median(mine) if mine else None, 1)} |")
    gap = largest_loss_difference(runs)
    lines += ["", f"Largest train-loss difference between plain and nccl-1 at the same iteration: "
              f"{'n/a' if gap is None else f'{gap:.6f}'}", f"GPU: {gpu['nvidia_smi'] or 'none seen'}",
              f"Machine: {info['cpu']}, {info['cores']} cores; mlx {info['mlx']}, mlx-lm {info['mlx_lm']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="model, data and runs (default: /tmp/lb, bench_gpu's; --smoke: a temporary folder)")
    parser.add_argument("--tokenizer", type=Path, default=PROJECT_DIR / "data" / "models" / "tiny-mistral",
                        help="folder of the tokenizer files to use (default: the embedded model's)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (both modes each)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--steps-per-report", type=int, default=5)
    parser.add_argument("--seq-tokens", type=int, default=1159)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument("--smoke", action="store_true", help="a small model, 4 iterations of 2 x 32 tokens, 1 round, "
                        "figures checked (any machine, CPU included)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.iters, args.steps_per_report, args.batch_size, args.seq_tokens = 1, 4, 1, 2, 32
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="nccl-stream-smoke-")) if args.smoke else Path("/tmp/lb")
    out = os.environ.get("OUT")
    name = "nccl_stream_check-smoke.json" if args.smoke else "nccl_stream_check.json"
    if args.json is None:
        args.json = Path(out) / name if out else RESULTS_DIR / name
    return args


def run(args: argparse.Namespace) -> int:
    args.work = args.work.resolve()
    args.tokenizer = args.tokenizer.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    info, gpu = machine_info(), gpu_info()
    args.model, args.data = build_inputs(args)
    args.num_layers = min(args.num_layers, json.loads((args.model / "config.json").read_text())["num_hidden_layers"])
    probe_info = probe(args.work, 256 if args.smoke else 8192, warm=args.smoke)
    args.cuda = bool(probe_info.get("cuda"))
    print(f"nccl_stream_check: probe {probe_info}", file=sys.stderr, flush=True)
    if not args.cuda and not args.smoke:
        raise SystemExit("nccl_stream_check: MLX sees no CUDA GPU here (use --smoke to try the script)")
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    for round_no in range(args.rounds):
        for mode in MODES if round_no % 2 == 0 else MODES[::-1]:
            label = f"r{round_no}-{mode}"
            try:
                runs.append(run_worker(args, mode, label))
                print(f"  {label}: {runs[-1]['median_tokens_per_second']} tokens/s", file=sys.stderr, flush=True)
            except RuntimeError as exc:
                failed.append(f"{label}: {exc}")
                print(f"  FAILED {label}: {exc}", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.json.write_text(json.dumps({"settings": settings, "machine": info, "gpu": gpu, "probe": probe_info,
                                     "runs": runs, "failed": failed,
                                     "largest_loss_difference": largest_loss_difference(runs)}, indent=2))
    table = report(runs, gpu, info)
    print(table, f"\nwrote {args.json}", sep="\n", flush=True)
    if args.smoke and not failed:
        check_figures([(f"| {r['label']} |", r["median_tokens_per_second"]) for r in runs], table)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    finally:
        if args.smoke and args.work.name.startswith("nccl-stream-smoke-"):
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
