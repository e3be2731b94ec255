"""bench/plain_mlx_lm.py as one rank of a data-parallel run over MLX's NCCL backend (run under `mlx.launch`).

    python -m mlx._distributed_utils.launch --backend nccl -n 2 -- \
        python3 bench/dist_plain.py [--gpu-stream-reports] --out R.json -- <mlx_lm lora args>

Initialises the NCCL group first (`mx.distributed.init(backend="nccl", strict=True)`)
and makes it the group mlx-lm's trainer gets: `mx.distributed.init()` with no backend
returns it, and an `all_sum` without a group uses it. mlx-lm's trainer then splits
each batch over the ranks (--batch-size is the global batch), averages the LoRA
gradients with `mlx.nn.average_gradients` (all_sum of 32 MB buckets) and reports
the tokens of all ranks per second. --gpu-stream-reports moves the all_sums that
mlx-lm runs on the CPU stream (loss and token counts at a report, outside the
gradient path) to the default stream, for a backend that cannot reduce on the CPU.
Each rank writes its reports to R.rank<N>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlx.core as mx
import plain_mlx_lm


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="reports JSON; each rank adds .rank<N>")
    parser.add_argument("--gpu-stream-reports", action="store_true",
                        help="run mlx-lm's CPU-stream all_sums on the default stream")
    parser.add_argument("--backend", default="nccl", help="MLX distributed backend (ring: a CPU try of the script)")
    own = parser.parse_args(argv[:split])

    group = mx.distributed.init(backend=own.backend, strict=True)
    all_sum = mx.distributed.all_sum
    calls = {"all_sum": 0}

    def init(*_args: Any, **_kwargs: Any) -> mx.distributed.Group:
        return group

    def group_all_sum(x: mx.array, *, group: mx.distributed.Group | None = None, stream: Any = None) -> mx.array:
        calls["all_sum"] += 1
        if own.gpu_stream_reports and isinstance(stream, mx.DeviceType) and stream == mx.cpu:
            stream = None
        return all_sum(x, group=group or init(), stream=stream)

    mx.distributed.init = init
    mx.distributed.all_sum = group_all_sum
    rank = group.rank()
    out = own.out.with_name(f"{own.out.stem}.rank{rank}{own.out.suffix}")
    print(f"dist_plain: rank {rank} of {group.size()} ({own.backend}), device {mx.default_device()}", flush=True)
    code = plain_mlx_lm.main(["--out", str(out), *argv[split:]])
    data = json.loads(out.read_text())
    data.update({"rank": rank, "world_size": group.size(), "all_sum_calls_traced": calls["all_sum"]})
    out.write_text(json.dumps(data, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
