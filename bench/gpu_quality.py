"""Quality of mixed-precision LoRA against float32 LoRA: the same real-data run twice on a bf16 model.

    python3 bench/gpu_quality.py --source data/models/tiny-mistral --work /tmp/lbq [--iters 400 --seed 0]

The model is `--source` (default: the embedded tiny model, pre-trained) with its floating weights
converted to bfloat16, so on the GPU the worker trains in bf16 and `lora_precision` applies. Both
runs are the real worker (`python -m worker train`) on the sample dataset (data/contact-center)
with the same seed, data order and settings, differing only in `lora_precision`. Train loss is
read from the run's reports (the mean over each report's steps), validation loss from its
validations on the whole validation set, both at the same iterations; the table gives both runs
and mixed minus float32. Writes $OUT/gpu_quality.json (or bench/results/) and prints Markdown.

--smoke tries the script on any machine (CPU included): the embedded model in bf16, the sample's first 16
examples of each split (bench/common.smoke_data) cut to 64 tokens, 4 iterations at batch 2 with a report every
step and a validation every 2, in a temporary --work folder (removed after), its children forked (bench/warm.py),
results to gpu_quality-smoke.json, figures checked. MLX's CPU backend trains a bf16 model in float32, where
`lora_precision` does not apply: there the smoke tries the script's path, not mixed precision (it says so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from app.contract.paths import run_dir
from app.contract.run_config import LoraParameters, RunConfig
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.supervisor import worker_env
from app.runs.store.runs import create_run
from app.tables import Run, TrainReport, ValReport
from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    PROJECT_DIR,
    RESULTS_DIR,
    base_env,
    check_figures,
    ensure_defaults,
    fmt,
    log_tail,
    markdown_table,
    median,
    run_child,
    smoke_data,
)

CONVERT = """
import json, shutil, sys
from pathlib import Path
import mlx.core as mx
source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for path in source.iterdir():
    if path.suffix == ".safetensors":
        weights = mx.load(str(path))
        weights = {k: v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
        mx.save_safetensors(str(out / path.name), weights, metadata={"format": "mlx"})
    elif path.is_file():
        shutil.copy2(path, out / path.name)
config = json.loads((out / "config.json").read_text())
config["torch_dtype"] = "bfloat16"
(out / "config.json").write_text(json.dumps(config, indent=2))
print("converted", out)
"""


def convert(source: Path, out: Path, work: Path, warm: bool = False) -> Path:
    """`source` with its floating weights in bfloat16, written to `out` once (warm: a smoke's, in a fork)."""
    if (out / "config.json").exists():
        return out
    log = work / "convert.log"
    child = run_child([sys.executable, "-c", CONVERT, str(source), str(out)], base_env(), log, 300, warm=warm)
    if child.returncode != 0:
        raise SystemExit(f"gpu_quality: converting the model failed:\n{log_tail(log, 30)}")
    return out


def train(args: argparse.Namespace, model: Path, precision: str) -> dict[str, Any]:
    work = args.work / f"run-{precision}-{time.strftime('%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(adapters_dir=work / "adapters", db_path=work / "loraboard.db",
                        cache_dir=CACHE_DIR if args.smoke else work / "cache",  # a smoke: the shim built once
                        hf_offline=True, allowed_dirs=os.pathsep.join((str(args.work), str(args.data.parent))))
    config = RunConfig(
        name=f"quality-{precision}", model=str(model), data=str(args.data), seed=args.seed, batch_size=args.batch_size,
        iters=args.iters, num_layers=-1, learning_rate=args.learning_rate, steps_per_report=args.steps_per_report,
        steps_per_eval=args.steps_per_eval, save_every=args.iters + 1, val_batches=-1,
        max_seq_length=args.max_seq_length,
        lora_precision=precision, lora_parameters=LoraParameters(rank=8, scale=20.0, dropout=0.0),
    ).resolved(settings)
    engine = make_engine(settings.database_path)
    log = work / "run.log"
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        child = run_child([sys.executable, "-m", "worker", "train", "--run-id", str(run_id)], worker_env(settings),
                          log, args.timeout, warm=args.smoke)
        with Session(engine) as session:
            run = session.get(Run, run_id)
            trains = session.exec(select(TrainReport).where(TrainReport.run_id == run_id)
                                  .order_by(col(TrainReport.iteration))).all()
            vals = session.exec(select(ValReport).where(ValReport.run_id == run_id)
                                .order_by(col(ValReport.iteration))).all()
            result = {"precision": precision, "status": run.status if run else "missing",
                      "train_dtype": run.train_dtype if run else None, "backend": run.backend if run else None,
                      "train": {r.iteration: r.train_loss for r in trains},
                      "val": {r.iteration: r.val_loss for r in vals},
                      "tokens_per_second": [r.tokens_per_second for r in trains], "wall_s": child.wall_s}
    finally:
        engine.dispose()
    if child.returncode != 0 or result["status"] != "completed":
        raise SystemExit(f"gpu_quality: the {precision} run ended {result['status']} (exit {child.returncode}):\n"
                         f"{log_tail(log, 40)}")
    written = run_dir(settings, run_id) / "adapter_config.json"
    adapter_config = json.loads(written.read_text()) if written.exists() else {}
    result["adapter_config_lora_precision"] = adapter_config.get("lora_precision")
    return result


def table(runs: dict[str, dict[str, Any]], key: str, every: int) -> tuple[str, list[float]]:
    f32, mixed = runs["float32"][key], runs["mixed"][key]
    steps = [it for it in sorted(f32) if it in mixed and (it % every == 0 or it == max(f32))]
    diffs = [mixed[it] - f32[it] for it in steps]
    rows = [[str(it), fmt(f32[it], 4), fmt(mixed[it], 4), f"{d:+.4f}", f"{d / f32[it] * 100:+.2f}%"]
            for it, d in zip(steps, diffs, strict=True)]
    return markdown_table(["iteration", "float32 LoRA", "mixed LoRA", "mixed - float32", "relative"], rows), diffs


def runs_table(runs: dict[str, dict[str, Any]]) -> str:
    """Each run: how it trained, its median tokens/s (the first report skipped) and its last losses."""
    rows = []
    for precision, r in runs.items():
        tps = r["tokens_per_second"][1:] or r["tokens_per_second"]
        rows.append([precision, str(r["backend"]), str(r["train_dtype"]), fmt(median(tps), 1),
                     fmt(r["train"][max(r["train"])], 4) if r["train"] else "n/a",
                     fmt(r["val"][max(r["val"])], 4) if r["val"] else "n/a"])
    return markdown_table(["run", "backend", "trains in", "tokens/s", "last train loss", "last validation loss"], rows)


def smoke_figures(runs: dict[str, dict[str, Any]]) -> list[tuple[str, float | None]]:
    """What a smoke checks (check_figures): each run's tokens/s and last train and validation losses."""
    figures: list[tuple[str, float | None]] = []
    for precision, r in runs.items():
        tps = r["tokens_per_second"][1:] or r["tokens_per_second"]
        figures += [(f"| {precision} |", median(tps)),
                    (f"| {precision} |", r["train"][max(r["train"])] if r["train"] else None),
                    (f"| {precision} |", r["val"][max(r["val"])] if r["val"] else None)]
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=PROJECT_DIR / "data" / "models" / "tiny-mistral")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=None, help="default: /tmp/lbq; --smoke: a temporary folder")
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps-per-report", type=int, default=10)
    parser.add_argument("--steps-per-eval", type=int, default=50)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (LoRA initialisation and data order)")
    parser.add_argument("--smoke", action="store_true", help="4 iterations at batch 2 of 64 tokens on 16 examples, "
                        "figures checked (any machine, CPU included); results to gpu_quality-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.batch_size, args.steps_per_report, args.steps_per_eval = 4, 2, 1, 2
        args.max_seq_length = 64
        args.data = smoke_data(args.data)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="gpu-quality-smoke-")) if args.smoke else Path("/tmp/lbq")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    finally:
        if args.smoke and args.work.name.startswith("gpu-quality-smoke-"):
            shutil.rmtree(args.work, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Both runs on args (parse_args), their tables printed and written."""
    args.work = args.work.resolve()
    args.data = args.data.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.source.resolve() == (PROJECT_DIR / "data" / "models" / "tiny-mistral").resolve():
        ensure_defaults()
    model = convert(args.source.resolve(), args.work / f"{args.source.name}-bf16", args.work, warm=args.smoke)
    runs: dict[str, dict[str, Any]] = {}
    for precision in ("float32", "mixed"):
        runs[precision] = train(args, model, precision)
        print(f"gpu_quality: {precision}: {runs[precision]['train_dtype']}, {runs[precision]['wall_s']:.0f} s",
              file=sys.stderr, flush=True)
    if not all(str(r["train_dtype"]).startswith("bfloat16") for r in runs.values()):
        print("gpu_quality: the worker trained this bf16 model in " + ", ".join(
              sorted({str(r["train_dtype"]) for r in runs.values()})) + " here (MLX's CPU backend), where "
              "lora_precision does not apply: this run tries the script's path, not mixed precision",
              file=sys.stderr, flush=True)
    train_table, train_diffs = table(runs, "train", args.steps_per_report if args.smoke else 50)
    val_table, val_diffs = table(runs, "val", args.steps_per_eval)
    parts = [f"## Mixed vs float32 LoRA on real data: {args.source.name} in bf16, {args.data.name}, "
             f"{args.iters} iters, batch {args.batch_size}, lr {args.learning_rate:g}, rank 8 on every layer, "
             f"seed {args.seed}",
             runs_table(runs),
             "### Train loss (mean of the report's steps)", train_table,
             "### Validation loss (whole validation set)", val_table,
             f"Largest |mixed - float32|: train {max(map(abs, train_diffs)):.4f}, validation "
             f"{max(map(abs, val_diffs)):.4f}; final validation {val_diffs[-1]:+.4f}."]
    text = "\n\n".join(parts)
    print(text, flush=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_quality" if args.seed == 0 else f"gpu_quality_seed{args.seed}"
    path = out / f"{name}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2,
                               default=str))
    print(f"\nwrote {path}", flush=True)
    if args.smoke:
        check_figures(smoke_figures(runs), text)
    else:
        shutil.rmtree(args.work / "cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
