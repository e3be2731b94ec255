"""Measured training peaks against app/runs/memory/estimate.py's estimate.

    python bench/bench_memory.py            # the settings below, each in its own process
    python bench/bench_memory.py --one '{"model": ..., "batch_size": 4, ...}'   # one measurement (JSON out)
    python bench/bench_memory.py --smoke    # one small tiny-model setting: checks its figures

Each measurement trains 3 steps with mlx-lm's trainer (as the worker does: LoRA attached by
mlx-lm, OpenBLAS routing, float32 on CPU) on synthetic text long enough that every batch is
exactly max_seq_length tokens, and reads mx.get_peak_memory(): the worker's peak_memory figure.
The estimate is computed from the model's files alone (no mlx), as the new-run form computes it.
The 20M model is built on first use (bench/model_20m.py). Prints a Markdown table; writes no file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE_DIR,
    DEFAULT_MODEL,
    MODEL_20M,
    base_env,
    check_figures,
    ensure_defaults,
    ensure_model_20m,
    run_child,
)

SETTINGS: list[dict[str, Any]] = [
    {"model": str(DEFAULT_MODEL), "batch_size": 4, "max_seq_length": 256, "num_layers": 4, "rank": 8},
    {"model": str(DEFAULT_MODEL), "batch_size": 8, "max_seq_length": 512, "num_layers": 4, "rank": 8},
    {"model": str(MODEL_20M), "batch_size": 4, "max_seq_length": 256, "num_layers": 6, "rank": 8},
    {"model": str(MODEL_20M), "batch_size": 4, "max_seq_length": 512, "num_layers": 6, "rank": 8},
    {"model": str(MODEL_20M), "batch_size": 4, "max_seq_length": 512, "num_layers": 6, "rank": 8,
     "grad_checkpoint": True},
    {"model": str(MODEL_20M), "batch_size": 2, "max_seq_length": 1024, "num_layers": 3, "rank": 16},
    {"model": str(MODEL_20M), "batch_size": 1, "max_seq_length": 2048, "num_layers": 6, "rank": 8},
    {"model": str(MODEL_20M), "batch_size": 8, "max_seq_length": 256, "num_layers": 6, "rank": 8},
    {"model": str(MODEL_20M), "batch_size": 4, "max_seq_length": 512, "num_layers": 2, "rank": 8},
]
# Given figures (not measurable here): Mistral-7B's shape, bf16, LoRA rank 8 on the seven linears of 16 blocks.
MISTRAL_7B = {"weight_bytes": 7_248_023_552 * 2, "num_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
              "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "vocab_size": 32768, "act_bytes": 2}
SMOKE = [{"model": str(DEFAULT_MODEL), "batch_size": 1, "max_seq_length": 32, "num_layers": 2, "rank": 4}]
GIVEN = [("Mistral-7B, mlx-lm on an H200 (CUDA)", 4, 1159, False, 42.0e9),
         ("Mistral-7B, mlx-lm on an H200 (CUDA)", 4, 1159, True, 35.4e9),
         ("Mistral-7B, reference run on a Mac (Metal)", 4, 2048, False, 67.7e9)]


def synthetic_data(folder: Path, examples: int, words: int) -> None:
    lines = [json.dumps({"text": " ".join(f"call {i} agent said item{(i * 7 + j) % 97}" for j in range(words))})
             for i in range(examples)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "valid.jsonl").write_text("\n".join(lines[:2]) + "\n")


def measure(setting: dict[str, Any]) -> dict[str, Any]:
    from worker.blas import route_blas

    route_blas(CACHE_DIR, True, 1)
    from types import SimpleNamespace

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset

    from app.contract.run_config import RunConfig
    from worker.loading import attach_adapters, load_model
    from worker.train import SilentUI

    config = RunConfig.model_validate({
        "model": setting["model"], "batch_size": setting["batch_size"], "iters": 3,
        "max_seq_length": setting["max_seq_length"], "num_layers": setting["num_layers"],
        "lora_parameters": {"rank": setting["rank"]}, "grad_checkpoint": setting.get("grad_checkpoint", False),
    })
    model, tokenizer, dtype = load_model(config)
    attach_adapters(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_data(Path(tmp), 16, setting["max_seq_length"])
        args = SimpleNamespace(data=tmp, train=True, test=False, mask_prompt=False)
        train_set, _, _ = load_dataset(args, tokenizer)
        mx.reset_peak_memory()
        trainer.TrainUI = SilentUI  # type: ignore[misc,assignment]
        trainer.train(model=model, optimizer=optim.Adam(learning_rate=1e-4), train_dataset=CacheDataset(train_set),
                      val_dataset=None, args=trainer.TrainingArgs(
                          batch_size=config.batch_size, iters=3, steps_per_report=1, steps_per_eval=100,
                          steps_per_save=100, max_seq_length=config.max_seq_length,
                          adapter_file=str(Path(tmp) / "a.safetensors"), grad_checkpoint=config.grad_checkpoint))
    return {**setting, "train_dtype": dtype, "peak_bytes": int(mx.get_peak_memory())}


def measure_in_child(setting: dict[str, Any], warm: bool) -> dict[str, Any]:
    """measure() in its own process (`--one`), so each peak is that setting's alone; warm: a smoke's, forked from
    this interpreter (bench/warm.py)."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        log = Path(tmp) / "one.log"
        child = run_child([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(setting)], base_env(),
                          log, 1800, warm=warm)
        output = log.read_text(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"bench: measuring {setting} failed:\n{output[-3000:]}")
    return dict(json.loads([line for line in output.splitlines() if line.startswith("{")][-1]))


def estimate(setting: dict[str, Any]) -> int:
    from app.catalog.info import model_info, trainable_params
    from app.contract.settings import Settings
    from app.runs.memory.estimate import estimate_peak, model_shape

    info = model_info(setting["model"], Settings(allowed_model_dirs=setting["model"]))
    trainable = trainable_params(info, "lora", setting["num_layers"], setting["rank"])
    return estimate_peak(model_shape(info, cpu_training=True), trainable.trainable, trainable.layers_trained,
                         setting["batch_size"], setting["max_seq_length"],
                         setting.get("grad_checkpoint", False)).total_bytes


def given_rows() -> list[str]:
    from app.runs.memory.estimate import ModelShape, estimate_peak

    shape = ModelShape(**MISTRAL_7B)
    rows = []
    for what, batch, tokens, checkpoint, measured in GIVEN:
        guess = estimate_peak(shape, 10_485_760, 16, batch, tokens, checkpoint).total_bytes
        rows.append(f"| {what} | {batch} | {tokens:,} | 16 | 8 | {'on' if checkpoint else 'off'} | "
                    f"{measured / 1e9:.1f} | {guess / 1e9:.1f} | {(guess - measured) / measured:+.1%} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help="measure one setting (JSON) and print the result as JSON")
    parser.add_argument("--measured", type=Path, help="JSON lines of earlier --one results: estimate only")
    parser.add_argument("--smoke", action="store_true", help="one small setting of the tiny model (batch 1, 32 "
                        "tokens, 2 layers, rank 4) instead of the list, its figures checked")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(json.loads(args.one))), flush=True)
        return 0
    lines = ["| model | batch | tokens | layers | rank | grad ckpt | measured GB | estimate GB | error |",
             "|---|---|---|---|---|---|---|---|---|", *given_rows()]
    print("\n".join(lines), flush=True)
    if args.measured:
        results = [json.loads(line) for line in args.measured.read_text().splitlines() if line.strip()]
    else:
        ensure_defaults()
        if not args.smoke:
            ensure_model_20m()
        settings = SMOKE if args.smoke else SETTINGS
        results = [measure_in_child(setting, args.smoke) for setting in settings]
    figures: list[tuple[str, float | None]] = []
    for result in results:
        guess = estimate(result)
        error = (guess - result["peak_bytes"]) / result["peak_bytes"]
        label = f"| {Path(result['model']).name} ({result['train_dtype']}, CPU) | {result['batch_size']} | " \
                f"{result['max_seq_length']} | {result['num_layers']} | {result['rank']} | "
        lines.append(f"{label}{'on' if result.get('grad_checkpoint') else 'off'} | {result['peak_bytes'] / 1e9:.3f} | "
                     f"{guess / 1e9:.3f} | {error:+.1%} |")
        print(lines[-1], flush=True)
        figures += [(label, result["peak_bytes"] / 1e9), (label, guess / 1e9)]
    if args.smoke:
        check_figures(figures, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
