"""Training throughput on the real model: SmolLM2-135M-Instruct in float32, loraboard's worker against plain mlx-lm.

    .venv/bin/python bench/bench_smollm2.py [--iters 4] [--repeats 1] [--batch-size 2] [--max-seq-length 64]
    .venv/bin/python bench/bench_smollm2.py --smoke    # the tiny model, 3 iterations at batch 2, 1 round: checks
                                                       # its figures

Two modes on the same model folder, data, seed, batch size, layers and sequence length, run round-robin
(bench_train.py's runners):

  plain       what a user running `mlx_lm lora` gets: mlx-lm's trainer (`mlx_lm.tuner.train` through
              `mlx_lm.lora.train_model`, a `training_callback` keeping its reports, bench/plain_mlx_lm.py) with mlx-lm's
              own `iterate_batches`, in a child process, stock MLX (no OpenBLAS routing)
  loraboard   the real worker, `python -m worker train --run-id N`, on a temporary database: OpenBLAS routed
              (worker/blas.py) and its own batching (tight padding, length grouping)

Tokens/s are each trainer's own per-report numbers (training steps only), the first report of each process skipped
as warm-up. The target is loraboard at least 5x plain. Prints Markdown tables and writes
bench/results/bench_smollm2.json. The model folder is the one `loraboard defaults` converts
(data/models/smollm2-135m-instruct); --smoke runs the embedded tiny model instead, as every smoke does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_train import measure
from bench.common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROJECT_DIR,
    check_inputs,
    machine_info,
    smoke_data,
)

SMOLLM2 = PROJECT_DIR / "data" / "models" / "smollm2-135m-instruct"
MODES = ["plain", "loraboard"]
SPEED_RATIOS = [("loraboard / plain", "loraboard", "plain", 5.0, True)]
RSS_RATIOS = [("loraboard / plain", "loraboard", "plain", 1.05, False)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SMOLLM2, help="model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each runs both modes once")
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=4, help="layers to adapt (-1: all)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--steps-per-report", type=int, default=2)
    parser.add_argument("--val-batches", type=int, default=1,
                        help="batches of the two validations every run still does (start and end)")
    parser.add_argument("--max-seq-length", type=int, default=64,
                        help="rows are cut to this many tokens: plain mlx-lm's reference-BLAS steps are slow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one training process may take")
    parser.add_argument("--smoke", action="store_true", help="the embedded tiny model, both modes once: 3 "
                        "iterations at batch 2 of 64 tokens (a report each), 1 validation batch, figures checked; "
                        "results to bench_smollm2-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.repeats, args.iters, args.batch_size = DEFAULT_MODEL, 1, 3, 2
        args.steps_per_report, args.val_batches, args.max_seq_length = 1, 1, 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:  # the sample's first examples: no process tokenizes the whole sample
        args.data = smoke_data(args.data)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"bench: {args.model} is missing: run `loraboard defaults` first (it converts SmolLM2)")
    check_inputs(args.model, args.data)
    info = machine_info()
    print(f"bench: {args.model}, {args.iters} iters x {args.repeats} rounds: {', '.join(MODES)}", file=sys.stderr,
          flush=True)
    dtype = json.loads((args.model / "config.json").read_text()).get("torch_dtype", "?")
    title = (f"Training throughput: {args.model.name} ({dtype}), {args.iters} iters, batch {args.batch_size}, "
             f"{args.max_seq_length} tokens at most, LoRA on {args.num_layers} layers, {args.repeats} rounds")
    path = measure(args, MODES, title, "bench_smollm2", info)
    print(f"\nwrote {path.relative_to(PROJECT_DIR)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
