"""Every benchmark's `--smoke` run: the whole script on the least work, in its own process as a user runs it,
its figures checked by the script itself (bench/common.check_figures). A benchmark that breaks fails here.

The runs share one xdist group, so they never run beside each other. The GPU benchmarks' smokes (bench_gpu.py,
bench_distributed_gpu.py) run here on the CPU: a small model of the same architecture, the experiments MLX's CPU
backend has, and the 2-process runs over the ring backend instead of NCCL (each says what it leaves out).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300  # a smoke takes seconds; the limit is for a loaded machine
CHECKED = "smoke: "  # the line check_figures prints when every figure passed

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("bench_smoke")]  # the benchmarks' scripts

SCRIPTS = [
    "bench_datasets",
    "bench_memory",
    "bench_gguf",
    "bench_playground",
    "bench_eval",
    "bench_train",
    "bench_grouping",
    "bench_distributed",
    "bench_fuse",
    pytest.param("bench_bigrun", marks=pytest.mark.browser),
    pytest.param("bench_service", marks=pytest.mark.browser),
    "bench_gpu",
    "bench_distributed_gpu",
    "bench_estimate",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke(script: str, default_model: Path) -> None:
    """`python bench/<script>.py --smoke` exits 0 after checking that its figures are there and sane."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    real = PROJECT_DIR / "bench" / "results" / f"{script}.json"  # a real measurement: the smoke leaves it be
    before = real.stat().st_mtime_ns if real.exists() else None
    started = time.monotonic()
    result = subprocess.run([sys.executable, f"bench/{script}.py", "--smoke"], cwd=PROJECT_DIR, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=TIMEOUT_S, check=False)
    tail = "\n".join(result.stdout.splitlines()[-40:])
    print(f"bench/{script}.py --smoke: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, f"bench/{script}.py --smoke exited {result.returncode}:\n{tail}"
    assert CHECKED in result.stdout, f"bench/{script}.py --smoke did not check its figures:\n{tail}"
    assert (real.stat().st_mtime_ns if real.exists() else None) == before, f"the smoke wrote over {real}"
