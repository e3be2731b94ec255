"""Quality of mixed-precision LoRA against float32 LoRA: the same real-data run twice on a bf16 model.

    python3 bench/gpu_quality.py --source data/models/tiny-mistral --work /tmp/lbq [--iters 400 --seed 0]

The model is `--source` (default: the embedded tiny model, pre-trained) with its floating weights
converted to bfloat16, so on the GPU the worker trains in bf16 and `lora_precision` applies. Both
runs are the real worker (`python -m worker train`) on the sample dataset (data/contact-center)
with the same seed, data order and settings, differing only in `lora_precision`. Train loss is
read from the run's reports (the mean over each report's steps), validation loss from its
validations on the whole validation set, both at the same iterations; the table gives both runs
and mixed minus float32. Writes $OUT/gpu_quality.json (or bench/results/) and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
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
from bench.common import PROJECT_DIR, RESULTS_DIR, base_env, fmt, log_tail, markdown_table, run_child

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


def convert(source: Path, out: Path, work: Path) -> Path:
    if (out / "config.json").exists():
        return out
    log = work / "convert.log"
    child = run_child([sys.executable, "-c", CONVERT, str(source), str(out)], base_env(), log, 300)
    if child.returncode != 0:
        raise SystemExit(f"gpu_quality: converting the model failed:\n{log_tail(log, 30)}")
    return out


def train(args: argparse.Namespace, model: Path, precision: str) -> dict[str, Any]:
    work = args.work / f"run-{precision}-{time.strftime('%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(adapters_dir=work / "adapters", db_path=work / "loraboard.db", cache_dir=work / "cache",
                        hf_offline=True, allowed_dirs=str(args.work))
    config = RunConfig(
        name=f"quality-{precision}", model=str(model), data=str(args.data), seed=args.seed, batch_size=args.batch_size,
        iters=args.iters, num_layers=-1, learning_rate=args.learning_rate, steps_per_report=args.steps_per_report,
        steps_per_eval=args.steps_per_eval, save_every=args.iters + 1, val_batches=-1, max_seq_length=512,
        lora_precision=precision, lora_parameters=LoraParameters(rank=8, scale=20.0, dropout=0.0),
    ).resolved(settings)
    engine = make_engine(settings.database_path)
    log = work / "run.log"
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        child = run_child([sys.executable, "-m", "worker", "train", "--run-id", str(run_id)], worker_env(settings),
                          log, args.timeout)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=PROJECT_DIR / "data" / "models" / "tiny-mistral")
    parser.add_argument("--data", type=Path, default=PROJECT_DIR / "data" / "contact-center")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lbq"))
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps-per-report", type=int, default=10)
    parser.add_argument("--steps-per-eval", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (LoRA initialisation and data order)")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    model = convert(args.source.resolve(), args.work / f"{args.source.name}-bf16", args.work)
    runs: dict[str, dict[str, Any]] = {}
    for precision in ("float32", "mixed"):
        runs[precision] = train(args, model, precision)
        print(f"gpu_quality: {precision}: {runs[precision]['train_dtype']}, {runs[precision]['wall_s']:.0f} s",
              file=sys.stderr, flush=True)
    train_table, train_diffs = table(runs, "train", 50)
    val_table, val_diffs = table(runs, "val", args.steps_per_eval)
    parts = [f"## Mixed vs float32 LoRA on real data: {args.source.name} in bf16, {args.data.name}, "
             f"{args.iters} iters, batch {args.batch_size}, lr {args.learning_rate:g}, rank 8 on every layer, "
             f"seed {args.seed}",
             "Runs: " + "; ".join(f"{p}: {r['backend']}, {r['train_dtype']}" for p, r in runs.items()),
             "### Train loss (mean of the report's steps)", train_table,
             "### Validation loss (whole validation set)", val_table,
             f"Largest |mixed - float32|: train {max(map(abs, train_diffs)):.4f}, validation "
             f"{max(map(abs, val_diffs)):.4f}; final validation {val_diffs[-1]:+.4f}."]
    text = "\n\n".join(parts)
    print(text, flush=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_quality.json" if args.seed == 0 else f"gpu_quality_seed{args.seed}.json"
    (out / name).write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                      "runs": runs}, indent=2, default=str))
    shutil.rmtree(args.work / "cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
