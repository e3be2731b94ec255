"""bench/plain_mlx_lm.py with MLX memory settings applied first: the GPU benchmark's experiments.

    python3 bench/gpu_plain.py [--cache-limit-gb G] [--clear-cache-threshold-gb G] --out R.json -- <mlx_lm lora args>

--cache-limit-gb calls `mx.set_cache_limit` before anything is allocated.
--clear-cache-threshold-gb sets the `clear_cache_threshold` of mlx-lm's TrainingArgs
(clear the allocator cache after a step when it holds more than that): mlx-lm
0.32.2 parses `--clear-cache-threshold` but `train_model` does not pass it on, so it
is applied here by wrapping `mlx_lm.lora.TrainingArgs`. Everything else, `--out`
included, goes to bench/plain_mlx_lm.py unchanged. Environment variables (MLX_*)
are the caller's business.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx.core as mx
import plain_mlx_lm
from mlx_lm import lora


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-limit-gb", type=float, help="mx.set_cache_limit, in GB")
    parser.add_argument("--clear-cache-threshold-gb", type=float, help="mlx-lm's clear_cache_threshold, in GB")
    own, passthrough = parser.parse_known_args(argv[:split])
    if own.cache_limit_gb is not None:
        previous = mx.set_cache_limit(int(own.cache_limit_gb * 1e9))
        print(f"gpu_plain: cache limit {own.cache_limit_gb} GB (was {previous / 1e9:.1f} GB)", file=sys.stderr)
    if own.clear_cache_threshold_gb is not None:
        threshold = int(own.clear_cache_threshold_gb * 1e9)
        lora.TrainingArgs = functools.partial(lora.TrainingArgs, clear_cache_threshold=threshold)
        print(f"gpu_plain: clear_cache_threshold {threshold:,} bytes", file=sys.stderr)
    return plain_mlx_lm.main(passthrough + argv[split:])


if __name__ == "__main__":
    sys.exit(main())
