"""One rank of the all-reduce probe: `mx.distributed.all_sum` over NCCL, timed (run under `mlx.launch`).

    python -m mlx._distributed_utils.launch --backend nccl -n 2 -- python3 bench/dist_allsum.py --out R.json

Initialises MLX's NCCL group (`mx.distributed.init(backend="nccl", strict=True)`),
checks a sum (each rank contributes rank + 1), then times `all_sum` of a tensor the
size of the LoRA gradients of the GPU benchmark (10,485,760 values) in float32 and
bfloat16: a barrier (a one-element all_sum), then the all_sum evaluated and the
device synchronised, --repeats times after --warmup, median. Last, whether an
all_sum on the CPU stream (as mlx-lm's trainer reduces its loss and token counts)
works with this backend. Rank 0 writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import mlx.core as mx

LORA_GRAD_VALUES = 10_485_760


def timed_all_sum(group: mx.distributed.Group, x: mx.array, warmup: int, repeats: int) -> list[float]:
    one = mx.ones((1,))
    times = []
    for i in range(warmup + repeats):
        mx.eval(mx.distributed.all_sum(one, group=group))
        mx.synchronize()
        tic = time.perf_counter()
        mx.eval(mx.distributed.all_sum(x, group=group))
        mx.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--values", type=int, default=LORA_GRAD_VALUES)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backend", default="nccl", help="MLX distributed backend (ring: a CPU try of the script)")
    args = parser.parse_args(argv)

    group = mx.distributed.init(backend=args.backend, strict=True)
    rank, size = group.rank(), group.size()
    result: dict[str, Any] = {"rank": rank, "size": size, "values": args.values, "device": str(mx.default_device()),
                              "backend": args.backend}
    check = mx.distributed.all_sum(mx.full((4,), rank + 1.0), group=group)
    mx.eval(check)
    result["check_sum"] = float(check[0].item())
    result["check_expected"] = size * (size + 1) / 2
    for name, dtype in (("float32", mx.float32), ("bfloat16", mx.bfloat16)):
        x = mx.random.normal((args.values,)).astype(dtype)
        mx.eval(x)
        times = timed_all_sum(group, x, args.warmup, args.repeats)
        nbytes = args.values * x.itemsize
        median = statistics.median(times)
        result[name] = {
            "median_ms": median * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
            "bytes": nbytes,
            # NCCL's bus bandwidth of an all-reduce: bytes * 2 (n - 1) / n / time
            "bus_gb_s": nbytes * 2 * (size - 1) / size / median / 1e9,
            "times_ms": [t * 1e3 for t in times],
        }
        print(f"rank {rank}: all_sum {name} {nbytes / 1e6:.1f} MB median {median * 1e3:.3f} ms", flush=True)
    if rank == 0:  # written before the CPU-stream try, which might hang
        args.out.write_text(json.dumps(result, indent=2))
    try:
        cpu = mx.distributed.all_sum(mx.array(float(rank + 1)), group=group, stream=mx.cpu)
        mx.eval(cpu)
        result["cpu_stream_all_sum"] = {"ok": float(cpu.item()) == result["check_expected"], "value": float(cpu.item())}
    except Exception as exc:  # recorded: decides how the training runs are launched
        result["cpu_stream_all_sum"] = {"ok": False, "error": "".join(traceback.format_exception_only(exc)).strip()}
    print(f"rank {rank}: cpu-stream all_sum {result['cpu_stream_all_sum']}", flush=True)
    if rank == 0:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
