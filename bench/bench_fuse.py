"""Fuse wall time (tiny model and the 20M bench model) and the peak memory of LoRA training on the 20M model's
bf16 weights against its 4-bit quantized copy (QLoRA).

    python bench/bench_fuse.py [--train-iters 6]
    python bench/bench_fuse.py --smoke     # the tiny model alone (its own bf16 and 4-bit copies), 2 steps: checks

Fuse: loraboard's own `fuse` job (`python -m worker job`, a throwaway database, a LoRA adapter of rank 8 on every
layer with random non-zero weights), against `python -m mlx_lm fuse` on the same adapter folder. Quantize: the
`quantize` job makes the 4-bit copy (group size 64) of the bf16 copy (`mlx_lm convert --dtype bfloat16`).
Training: `python -m mlx_lm lora --train` on the sample data, batch 4, all 6 layers, a few steps; peak memory is
MLX's own figure (mlx_lm's "Peak mem", from mx.get_peak_memory) and the process's peak RSS (wait4).
The 20M model is built on first use (bench/model_20m.py). Prints a table; JSON in bench/results/bench_fuse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    base_env,
    check_figures,
    ensure_defaults,
    ensure_model_20m,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    run_child,
    smoke_data,
    write_results,
)

ADAPTER_SCRIPT = """
import json, sys
from pathlib import Path
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load
model_path, out = sys.argv[1], Path(sys.argv[2])
model, _ = load(model_path)
model.freeze()
layers = len(model.layers)
lora = {"rank": 8, "scale": 20.0, "dropout": 0.0}
linear_to_lora_layers(model, layers, lora)
mx.random.seed(0)
weights = {k: (mx.random.normal(v.shape) * 0.01 if k.endswith("lora_b") else v)
           for k, v in tree_flatten(model.trainable_parameters())}
out.mkdir(parents=True, exist_ok=True)
mx.save_safetensors(str(out / "0000010_adapters.safetensors"), weights)
config = {"model": model_path, "fine_tune_type": "lora", "num_layers": layers, "lora_parameters": lora}
(out / "adapter_config.json").write_text(json.dumps(config))
"""


def child(cmd: list[str], root: Path, label: str, warm: bool, env: dict[str, str] | None = None,
          timeout_s: float = 1800) -> tuple[float, float, str]:
    """Run one process; (wall seconds, peak RSS MB, its log). Fails loudly with the log's tail.
    warm: a smoke's, in a fork of this interpreter (bench/warm.py)."""
    log = root / f"{label}.log"
    result = run_child(cmd, env or base_env(), log, timeout_s, warm=warm)
    if result.returncode != 0 or result.timed_out:
        raise SystemExit(f"bench: {label} failed ({result.returncode}):\n{log_tail(log, 30)}")
    return result.wall_s, result.peak_rss_mb, log.read_text(errors="replace")


def make_adapter(model: Path, root: Path, label: str, warm: bool) -> Path:
    out = root / f"{label}-adapter"
    child([sys.executable, "-c", ADAPTER_SCRIPT, str(model), str(out)], root, f"{label}-adapter", warm)
    return out


def worker_job(root: Path, kind: str, params: dict[str, Any], adapter: Path | None, model: Path,
               label: str, warm: bool) -> dict[str, Any]:
    """One job through `python -m worker job` on a throwaway database: wall time, peak RSS and its result."""
    from sqlmodel import Session

    from app.db import make_engine
    from app.tables import Job, Run

    db = root / f"{label}.sqlite"
    adapters = root / f"{label}-adapters"
    env = base_env(LORABOARD_DB_PATH=str(db), LORABOARD_ADAPTERS_DIR=str(adapters),
                   LORABOARD_MODELS_DIR=str(root / "models"),
                   LORABOARD_ALLOWED_DIRS=os.pathsep.join((str(root), str(model))))  # the job's model, wherever it is
    engine = make_engine(db)
    with Session(engine) as session:
        run_id = None
        if adapter is not None:
            run = Run(name=label, status="completed", config_json=json.dumps({"model": str(model)}))
            session.add(run)
            session.commit()
            run_id = run.id
            folder = adapters / f"run-{run_id:04d}"
            folder.mkdir(parents=True)
            for path in adapter.iterdir():
                shutil.copy(path, folder / path.name)
            params = {**params, "run_id": run_id}
        job = Job(kind=kind, params_json=json.dumps(params), run_id=run_id, iteration=10 if adapter else None)
        session.add(job)
        session.commit()
        job_id = job.id
    engine.dispose()
    wall, rss, _ = child([sys.executable, "-m", "worker", "job", "--job-id", str(job_id)], root, label, warm, env)
    conn = sqlite3.connect(db)
    status, result, error = conn.execute("SELECT status, result_json, error FROM job WHERE id = ?",
                                         (job_id,)).fetchone()
    conn.close()
    if status != "completed":
        raise SystemExit(f"bench: {label} job ended {status}: {error}")
    return {"wall_s": wall, "peak_rss_mb": rss, "result": json.loads(result)}


def fuse_figures(root: Path, label: str, model: Path, warm: bool) -> dict[str, Any]:
    adapter = make_adapter(model, root, label, warm)
    name = f"{label}-fused"
    job = worker_job(root, "fuse", {"iteration": 10, "model": str(model), "name": name,
                                    "dest": str(root / "models" / name), "dequantize": False}, adapter, model,
                     f"{label}-fuse-job", warm)
    cli_wall, cli_rss, _ = child([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(model), "--adapter-path",
                                  job["result"]["adapter_path"], "--save-path", str(root / f"{label}-cli-fused")],
                                 root, f"{label}-fuse-cli", warm)
    return {"model": str(model), "job_wall_s": job["wall_s"], "job_peak_rss_mb": job["peak_rss_mb"],
            "job_mlx_peak_mb": job["result"]["mlx_peak_bytes"] / 1e6, "size_bytes": job["result"]["size_bytes"],
            "fused_layers": job["result"]["fused_layers"], "cli_wall_s": cli_wall, "cli_peak_rss_mb": cli_rss}


TRAIN_SCRIPT = """
import sys
import mlx.core as mx
from mlx_lm import lora
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
print("BENCH_PEAK_BYTES", mx.get_peak_memory())
"""
PEAK = re.compile(r"BENCH_PEAK_BYTES (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN_ROW = re.compile(r"^\s*(\d+)\s+([0-9.]+)\s", re.M)  # mlx_lm's table: iter, train_loss, ...


def train_figures(root: Path, label: str, model: Path, data: Path, iters: int, batch: int, seq: int,
                  warm: bool) -> dict[str, Any]:
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]  # all of them (6 of the 20M's)
    wall, rss, log = child([sys.executable, "-c", TRAIN_SCRIPT, "--train", "--model", str(model), "--data",
                            str(data), "--iters", str(iters), "--batch-size", str(batch), "--num-layers",
                            str(layers), "--steps-per-report", "1", "--steps-per-eval", "100000", "--val-batches", "1",
                            "--max-seq-length", str(seq), "--adapter-path", str(root / f"{label}-train-adapter")],
                           root, f"{label}-train", warm)
    peaks = [int(m) / 1e9 for m in PEAK.findall(log)]
    losses = [float(m[1]) for m in TRAIN_ROW.findall(ANSI.sub("", log))]
    weights = sum(p.stat().st_size for p in model.glob("model*.safetensors"))
    return {"model": str(model), "iters": iters, "batch_size": batch, "max_seq_length": seq, "wall_s": wall,
            "peak_rss_mb": rss, "weights_bytes": weights,
            "mlx_peak_gb": max(peaks) if peaks else None, "last_train_loss": losses[-1] if losses else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-iters", type=int, default=3, help="LoRA steps of each training measurement")
    parser.add_argument("--batch-size", type=int, default=1, help="training batch size")
    parser.add_argument("--max-seq-length", type=int, default=64,
                        help="training sequence cap (MLX's CPU quantized product with bf16 scales is slow: keep small)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (models, logs)")
    parser.add_argument("--smoke", action="store_true", help="the tiny model alone (fuse, and the QLoRA training on "
                        "its own bf16 and 4-bit copies, group size 32), 2 steps, figures checked; results to "
                        "bench_fuse-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_iters = 2
    ensure_defaults()
    models = {"tiny": DEFAULT_MODEL} if args.smoke else {"tiny": DEFAULT_MODEL, "20m": ensure_model_20m()}
    qlora_key = "tiny" if args.smoke else "20m"  # the model whose bf16 and 4-bit copies train
    group_size = 32 if args.smoke else 64  # the tiny model's intermediate size (352) is no multiple of 64
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-fuse-", dir=CACHE_DIR))
    try:
        fuse = {label: fuse_figures(root, label, model, args.smoke) for label, model in models.items()}
        bf16 = root / f"bench-{qlora_key}-bf16"
        child([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(models[qlora_key]), "--mlx-path",
               str(bf16), "--dtype", "bfloat16"], root, f"{qlora_key}-bf16", args.smoke)
        config = json.loads((bf16 / "config.json").read_text())  # convert keeps the source's torch_dtype, which
        (bf16 / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))  # quantize reapplies
        q4 = root / "models" / f"bench-{qlora_key}-q4"
        quant = worker_job(root, "quantize", {"model": str(bf16), "source": str(bf16), "name": q4.name,
                                              "dest": str(q4), "bits": 4, "group_size": group_size}, None, bf16,
                           f"{qlora_key}-quantize-job", args.smoke)
        data = smoke_data(DEFAULT_DATA) if args.smoke else DEFAULT_DATA  # a smoke's 2 steps need few examples
        train = {label: train_figures(root, label, folder, data, args.train_iters, args.batch_size,
                                      args.max_seq_length, args.smoke)
                 for label, folder in (("bf16", bf16), ("q4", q4))}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    info = machine_info()
    payload = {"machine": info, "fuse": fuse, "quantize_20m_bf16_to_q4": {
        "wall_s": quant["wall_s"], "peak_rss_mb": quant["peak_rss_mb"], "size_bytes": quant["result"]["size_bytes"]},
        "train": train}
    rows = [[label, f"{f['job_wall_s']:.2f}", f"{f['cli_wall_s']:.2f}", f"{f['job_peak_rss_mb']:.0f}",
             f"{f['size_bytes'] / 1e6:.1f}"] for label, f in fuse.items()]
    name = "tiny" if args.smoke else "20M"
    table = "\n\n".join([
        machine_line(info),
        markdown_table(["model", "fuse job wall s", "mlx_lm fuse wall s", "job peak RSS MB", "fused MB"], rows),
        markdown_table([f"{name} LoRA training", "weights MB", "MLX peak MB", "peak RSS MB", "last train loss"],
                       [[label, f"{t['weights_bytes'] / 1e6:.1f}", fmt_mb(t["mlx_peak_gb"]), f"{t['peak_rss_mb']:.0f}",
                         f"{t['last_train_loss']}"] for label, t in train.items()]),
        f"quantize job ({name} bf16 -> 4-bit, group {group_size}): {quant['wall_s']:.2f} s, "
        f"{quant['result']['size_bytes'] / 1e6:.1f} MB",
    ])
    print(table, flush=True)
    if args.smoke:
        figures: list[tuple[str, float | None]] = []
        for label, f in fuse.items():
            figures += [(f"| {label} |", f["job_wall_s"]), (f"| {label} |", f["cli_wall_s"]),
                        (f"| {label} |", f["job_peak_rss_mb"]), (f"| {label} |", f["size_bytes"] / 1e6)]
        for label, t in train.items():
            peak = t["mlx_peak_gb"] * 1e3 if t["mlx_peak_gb"] is not None else None
            figures += [(f"| {label} |", t["weights_bytes"] / 1e6), (f"| {label} |", peak),
                        (f"| {label} |", t["peak_rss_mb"]), (f"| {label} |", t["last_train_loss"])]
        figures += [("quantize job", quant["wall_s"]), ("quantize job", quant["result"]["size_bytes"] / 1e6)]
        check_figures(figures, table)
    print(f"results: {write_results('bench_fuse', payload, smoke=args.smoke)}")
    return 0


def fmt_mb(gigabytes: float | None) -> str:
    return "n/a" if gigabytes is None else f"{gigabytes * 1e3:.1f}"


if __name__ == "__main__":
    sys.exit(main())
