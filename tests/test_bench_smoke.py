"""Every benchmark's `--smoke` run: the whole script on the least work, in its own process as a user runs it,
its figures checked by the script itself (bench/common.check_figures). A benchmark that breaks fails here.

Each script's process is a fork of the test's once that has imported transformers (bench/warm.py), running
`bench/<script>.py --smoke` as `__main__`, or a fresh interpreter where a fork cannot stand for one; in smoke mode
the scripts fork their own Python children the same way (the ring runs' ranks too: bench/rank_forks.py). The runs
share one xdist group, so one test process starts them all: two at a time (the machine's two cores), the longest
first, each test waiting for its own script's run. The two that train over MLX's ring backend never run beside each
other (two ranks each on two cores). The GPU benchmarks' smokes (bench_gpu.py, bench_distributed_gpu.py,
gpu_quality.py, nccl_stream_check.py, gpu_profile.py) run here on the CPU: a small model of the same architecture,
the experiments MLX's CPU backend has, and the 2-process runs over the ring backend instead of NCCL (each says what
it leaves out). The first fourteen took 40 s and 52 CPU-seconds together on the 2-core AMD EPYC with other work on
it (load average about 3; 2026-12-07, bench/README.md); the three added since (gpu_quality, nccl_stream_check,
gpu_profile) take about 8 CPU-seconds more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.warm import forkable, start_forked, warm_up

PROJECT_DIR = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300  # a smoke takes seconds; the limit is for a loaded machine
CHECKED = "smoke: "  # the line check_figures prints when every figure passed
AT_ONCE = 2  # smokes running at the same time
RING = {"bench_distributed", "bench_distributed_gpu"}  # 2-process runs over the ring backend: one at a time

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("bench_smoke")]  # the benchmarks' scripts

SCRIPTS = [  # the longest first: the order the runs start in
    "bench_gpu",
    "bench_fuse",
    pytest.param("bench_service", marks=pytest.mark.browser),
    "bench_train",
    "bench_worker_start",
    "bench_smollm2",
    "bench_grouping",
    "bench_distributed",
    "bench_distributed_gpu",
    "gpu_quality",
    "nccl_stream_check",
    "bench_eval",
    "bench_demo_preset",
    pytest.param("bench_bigrun", marks=pytest.mark.browser),
    "bench_gguf",
    "bench_smollm2_convert",
    "gpu_profile",
    "bench_playground",
    "bench_memory",
    "bench_datasets",
    "bench_estimate",
]


@dataclass
class SmokeRun:
    """One `python bench/<script>.py --smoke` process: its output file and what it found before it started."""

    script: str
    output: Path
    pid: int | None = None
    returncode: int | None = None
    process: subprocess.Popen[bytes] | None = None  # a script started as a new interpreter (not forked): kept
    started: float = 0.0
    ended: float | None = None
    real_mtime: int | None = None  # bench/results/<script>.json's before the run (a real measurement)
    cpu_s: float = 0.0  # its CPU time, user and system, with that of the processes it waited for
    timed_out: bool = False

    @property
    def real_results(self) -> Path:
        return PROJECT_DIR / "bench" / "results" / f"{self.script}.json"


@dataclass
class SmokeRuns:
    """The selected scripts' smoke runs, started AT_ONCE at a time in the given order whenever one is awaited."""

    waiting: list[SmokeRun]
    running: list[SmokeRun] = field(default_factory=list)
    done: dict[str, SmokeRun] = field(default_factory=dict)


def start_next(runs: SmokeRuns) -> None:
    """Start waiting runs in order while fewer than AT_ONCE run (a ring run only when no other ring run is on)."""
    for run in list(runs.waiting):
        if len(runs.running) >= AT_ONCE:
            return
        if run.script in RING and any(other.script in RING for other in runs.running):
            continue
        runs.waiting.remove(run)
        run.real_mtime = run.real_results.stat().st_mtime_ns if run.real_results.exists() else None
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, f"bench/{run.script}.py", "--smoke"]
        with run.output.open("wb") as output:
            if forkable(cmd, env):  # the script's process forked from this one, transformers imported once
                warm_up()
                run.pid = start_forked(cmd, env, PROJECT_DIR, output.fileno())
            else:
                run.process = subprocess.Popen(cmd, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL,
                                               stdout=output, stderr=subprocess.STDOUT)
                run.pid = run.process.pid
        run.started = time.monotonic()
        runs.running.append(run)


def reap(runs: SmokeRuns) -> None:
    """Move ended runs to `done`; kill a run past TIMEOUT_S."""
    for run in list(runs.running):
        assert run.pid is not None
        pid, status, usage = os.wait4(run.pid, os.WNOHANG)
        if pid == 0 and time.monotonic() - run.started > TIMEOUT_S:
            run.timed_out = True
            os.kill(run.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(run.pid, 0)
        if pid != 0:
            run.returncode = os.waitstatus_to_exitcode(status)
            run.cpu_s = usage.ru_utime + usage.ru_stime
            run.ended = time.monotonic()
            runs.running.remove(run)
            runs.done[run.script] = run


def wait_for(runs: SmokeRuns, script: str) -> SmokeRun:
    """Keep the runs going until `script`'s has ended."""
    while script not in runs.done:
        reap(runs)
        start_next(runs)
        if script not in runs.done:
            time.sleep(0.05)
    return runs.done[script]


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               default_model: Path) -> Iterator[SmokeRuns]:
    """The smoke runs of the scripts this session selected, in SCRIPTS order; any still running at the end killed."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    names = [s if isinstance(s, str) else s.values[0] for s in SCRIPTS]
    folder = tmp_path_factory.mktemp("bench-smoke")
    runs = SmokeRuns(waiting=[SmokeRun(name, folder / f"{name}.log") for name in names if name in selected])
    yield runs
    for run in runs.running:
        assert run.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
        os.waitpid(run.pid, 0)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke(script: str, smoke_runs: SmokeRuns) -> None:
    """`python bench/<script>.py --smoke` exits 0 after checking that its figures are there and sane."""
    run = wait_for(smoke_runs, script)
    assert run.ended is not None
    output = run.output.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-40:])
    print(f"bench/{script}.py --smoke: {run.ended - run.started:.1f} s, {run.cpu_s:.1f} CPU-s")
    assert not run.timed_out, f"bench/{script}.py --smoke ran past {TIMEOUT_S} s:\n{tail}"
    assert run.returncode == 0, f"bench/{script}.py --smoke exited {run.returncode}:\n{tail}"
    assert CHECKED in output, f"bench/{script}.py --smoke did not check its figures:\n{tail}"
    after = run.real_results.stat().st_mtime_ns if run.real_results.exists() else None
    assert after == run.real_mtime, f"the smoke wrote over {run.real_results}"
