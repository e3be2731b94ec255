"""bench/bench_gpu.py's modes, experiments and report: what a round runs, and the tables it prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.common import fmt, machine_line, markdown_table, median, ratio, verdict

MODES = ["plain", "loraboard-float32", "loraboard-mixed", "loraboard-mixed-pad32", "peft"]
WORKER_MODES = {  # (lora_precision, batch_padding)
    "loraboard": ("mixed", "tight"), "loraboard-float32": ("float32", "tight"), "loraboard-mixed": ("mixed", "tight"),
    "loraboard-mixed-pad32": ("mixed", "mlx_lm"),
}
# Measured before on an H200 with this exact work (batch 4, 1,159-token rows, rank 8 on 7 keys x 16 blocks).
REFERENCE = [
    ("plain mlx-lm (earlier run)", 13215.0, 42.0),
    ("PyTorch 2.11 + PEFT", 14490.0, 39.0),
    ("compute limit (estimate)", 35000.0, None),
]


@dataclass(frozen=True)
class Variant:
    """Plain mlx-lm with one thing changed."""

    name: str
    what: str
    env: dict[str, str] = field(default_factory=dict)
    wrapper: list[str] = field(default_factory=list)  # bench/gpu_plain.py flags
    cli: list[str] = field(default_factory=list)  # extra `mlx_lm lora` flags
    cuda_only: bool = False  # a setting of MLX's CUDA backend alone: nothing to measure without a GPU


EXPERIMENTS = [
    Variant("graphs-100ops", "CUDA graphs of up to 100 ops, 1,000 cached (MLX_MAX_OPS_PER_BUFFER=100, "
            "MLX_CUDA_GRAPH_CACHE_SIZE=1000)",
            env={"MLX_MAX_OPS_PER_BUFFER": "100", "MLX_CUDA_GRAPH_CACHE_SIZE": "1000"}, cuda_only=True),
    Variant("no-cudnn-sdpa", "attention without cuDNN's fused kernels (MLX_CUDA_USE_CUDNN_SDPA=0)",
            env={"MLX_CUDA_USE_CUDNN_SDPA": "0"}, cuda_only=True),
    Variant("no-compile", "the training step not compiled (MLX_DISABLE_COMPILE=1)",
            env={"MLX_DISABLE_COMPILE": "1"}),
    Variant("clear-cache-1gb", "clear MLX's allocator cache after a step when over 1 GB (clear_cache_threshold)",
            wrapper=["--clear-cache-threshold-gb", "1"]),
    Variant("cache-limit-4gb", "allocator cache capped at 4 GB (mx.set_cache_limit)",
            wrapper=["--cache-limit-gb", "4"]),
    Variant("no-cuda-graphs", "no CUDA graphs (MLX_USE_CUDA_GRAPHS=0)", env={"MLX_USE_CUDA_GRAPHS": "0"},
            cuda_only=True),
    Variant("grad-checkpoint", "gradient checkpointing on (--grad-checkpoint)", cli=["--grad-checkpoint"]),
]
PLAIN = Variant("plain", "mlx-lm as `mlx_lm lora --train` runs it")


def measured(values: list[float]) -> list[float]:
    """Per-report tokens/s without the first report (warm-up: compilation, first batches)."""
    return values[1:] if len(values) > 1 else values


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == name]
        pooled = [x for r in mine for x in measured(r["tokens_per_second"])]
        summary[name] = {
            "median_tokens_per_second": median(pooled),
            "run_medians": [r["median_tokens_per_second"] for r in mine],
            "reports_used": len(pooled),
            "median_peak_memory_gb": median([r["peak_memory_gb_final"] for r in mine if r["peak_memory_gb_final"]]),
            "trainable": mine[0]["trainable"],
            "backend": mine[0]["backend"],
        }
    return summary


def report(bench: Any, info: dict[str, Any], gpu: dict[str, Any], probe_info: dict[str, Any]) -> str:
    """The Markdown tables of a bench (bench_gpu.Bench: its args, runs, skipped, unavailable and failed)."""
    summary = summarize(bench.runs)
    args = bench.args
    rows = [[mode, fmt(s["median_tokens_per_second"], 0), " / ".join(fmt(x, 0) for x in s["run_medians"]),
             str(s["reports_used"]), fmt(s["median_peak_memory_gb"], 2), str(s["trainable"]), str(s["backend"])]
            for mode, s in summary.items() if mode in MODES]
    shape = "small Mistral-shaped model (--smoke)" if args.smoke else "Mistral-7B shape"
    rounds = len({r["label"].split("-")[0] for r in bench.runs if r["mode"] in MODES})
    parts = [f"## GPU training throughput: {shape}, random bf16, LoRA r8 x 7 keys x {args.num_layers} "
             f"blocks, batch {args.batch_size} x {args.seq_tokens} tokens, {args.iters} iters x {rounds} rounds",
             markdown_table(["mode", "tokens/s (median)", "per run", "reports", "peak memory (GB)", "trainable",
                             "backend"], rows)]
    plain, peft = summary.get("plain"), summary.get("peft")
    comparisons = []
    for mode in ("loraboard-mixed", "loraboard-mixed-pad32", "loraboard-float32", "plain"):
        s = summary.get(mode)
        for other, target in ((peft, 1.1), (plain, 0.99)):
            if s is None or other is None or s is other:
                continue
            speed = ratio(s["median_tokens_per_second"], other["median_tokens_per_second"])
            memory = ratio(s["median_peak_memory_gb"], other["median_peak_memory_gb"])
            name = "PyTorch+PEFT" if other is peft else "plain mlx-lm"
            goal = target if mode == "loraboard-mixed" or other is plain else None
            comparisons.append([f"{mode} / {name}", fmt(speed, 3, "x"), fmt(memory, 3, "x"),
                                f"≥ {goal}x" if goal else "", verdict(speed, goal) if goal else ""])
    if comparisons:
        parts.append(markdown_table(["comparison", "tokens/s ratio", "peak memory ratio", "target", ""],
                                    comparisons))
    base = plain["median_tokens_per_second"] if plain else None
    refs = [[name, fmt(tps, 0), fmt(gb, 1) if gb else "", fmt(ratio(tps, base), 3, "x")] for name, tps, gb in REFERENCE]
    parts.append(markdown_table(["reference (earlier, same work)", "tokens/s", "peak GB", "vs plain here"], refs))
    exp_rows = []
    for variant in EXPERIMENTS:
        s = summary.get(variant.name)
        if s is None:
            continue
        exp_rows.append([variant.name, variant.what, fmt(s["median_tokens_per_second"], 0),
                         fmt(ratio(s["median_tokens_per_second"], base), 3, "x"),
                         fmt(s["median_peak_memory_gb"], 2)])
    if exp_rows:
        parts.append(markdown_table(["experiment (plain mlx-lm +)", "what", "tokens/s", "vs plain", "peak GB"],
                                    exp_rows))
    if bench.skipped:
        parts.append("Skipped (time budget): " + ", ".join(bench.skipped))
    if bench.unavailable:
        parts.append("Not run on this machine: " + "; ".join(f"{k} ({v})" for k, v in bench.unavailable.items()))
    if bench.failed:
        parts.append("Failed: " + ", ".join(f["run"] for f in bench.failed))
    tflops = fmt(probe_info.get("bf16_matmul_tflops"), 0)
    parts.append(f"GPU: {gpu['nvidia_smi']}; mlx-cuda-13 {gpu['mlx_cuda_13']}; MLX sees CUDA: {probe_info.get('cuda')}"
                 f"; bf16 {probe_info.get('size', 8192)}³ matmul in MLX: {tflops} TFLOP/s")
    parts.append(machine_line(info))
    return "\n\n".join(parts)
