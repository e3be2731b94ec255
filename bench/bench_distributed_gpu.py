"""Data-parallel LoRA training on 2 NVIDIA GPUs through MLX's NCCL backend, against 1 GPU.

Runs on the lent 2-GPU machine (`nvidia-h100-x2`) with MLX's CUDA backend
(`mlx-cuda-13`), on the Mistral-7B-shaped model and data of bench/gpu_build.py
(built first if absent), with plain mlx-lm's trainer and the settings of
bench/bench_gpu.py (LoRA rank 8, scale 20 on the 7 linear layers of the last 16
blocks: 10,485,760 trainable parameters; rows of 1,159 tokens; Adam 1e-5; seed 0;
35 iterations, a report every 5, the first report of each process skipped):

  probe     `mlx.launch --backend nccl -n 2` of bench/dist_allsum.py: NCCL group up,
            a checked sum, then the all_sum of a tensor the size of the LoRA
            gradients (10,485,760 float32 / bfloat16 values), median of 20
  1gpu-b4   bench/plain_mlx_lm.py on GPU 0, batch 4
  2gpu-b8   `mlx.launch --backend nccl -n 2` of bench/dist_plain.py, global batch 8
            (4 rows a GPU: each GPU does the 1-GPU run's work; weak scaling)
  2gpu-b4   the same, global batch 4 (2 rows a GPU: the 1-GPU run's batch split)
  1gpu-b2   one GPU at batch 2 (the per-GPU load of 2gpu-b4), for comparison

then more rounds of 1gpu-b4 / 2gpu-b8 while --budget-s allows. mlx.launch gives each
rank CUDA_VISIBLE_DEVICES=<rank>, NCCL_HOST_IP/NCCL_PORT, MLX_WORLD_SIZE and
MLX_RANK; every process here also gets NCCL_NVLS_ENABLE=0 (NVLink multicast stays off).
Tokens/s are mlx-lm's own (2 GPUs: the tokens of both ranks over rank 0's time),
scaling efficiency = 2-GPU tokens/s / (2 x 1-GPU tokens/s). If the NCCL group does not
come up, the error is recorded and nothing else runs.

Prints a Markdown table; writes JSON to $OUT/bench_distributed_gpu.json (or --json),
rewritten after every step. See bench/README.md, "GPU: 2 GPUs over NCCL", for the
device calls (the wheels travel as in bench/bench_gpu.py's docstring).

`--smoke` tries the whole script anywhere, CPU included: the small model of the same
architecture (gpu_build.py --smoke, the embedded model's tokenizer; built once into
data/.cache/bench-gpu-smoke, shared with bench_gpu.py's smoke), rows of 32 tokens,
2 iterations, the probe on 65,536 values, one round of 1gpu-b4 and 2gpu-b4, in a temporary
--work folder; results to bench_distributed_gpu-smoke.json, its figures checked. Where MLX
sees no GPU, NCCL cannot run: the probe and the 2-process runs go over MLX's ring backend
on this machine's CPU instead, and the run says so. A smoke's mlx.launch waits for its ranks'
output instead of spinning (SMOKE_LAUNCH), as loraboard's own launcher does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEFAULT_MODEL,
    PROJECT_DIR,
    RESULTS_DIR,
    ChildResult,
    base_env,
    check_figures,
    ensure_defaults,
    gpu_smoke_inputs,
    log_tail,
    package_version,
)
from bench.common import run_child as run_one_process
from bench.rank_forks import rank_forks

BENCH = PROJECT_DIR / "bench"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LAUNCH = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
# A smoke's: mlx.launch as worker/distributed.launch runs it (without the app's imports), so the launcher does
# not take a core from the two CPU ranks it starts: a standard input that never ends (its main loop polls its
# standard input, at once readable on /dev/null) and rank threads that wait for the ranks' output alone (a
# rank's standard input is always writable: select_reads_only)
SMOKE_LAUNCH = [sys.executable, "-c", "import os, select; stdin, never_written = os.pipe(); os.dup2(stdin, 0); "
                "import mlx._distributed_utils.launch as launch; "
                "launch.select = lambda r, w, x, t=None: (select.select(r, [], x, t)[0], [], []); launch.main()"]
MODES = {  # name: (GPUs, global batch)
    "1gpu-b4": (1, 4), "2gpu-b8": (2, 8), "2gpu-b4": (2, 4), "1gpu-b2": (1, 2),
}


def run_child(cmd: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float) -> ChildResult:
    """Run a process in its own session; on timeout kill the whole session (mlx.launch's ranks too)."""
    started = time.perf_counter()
    with log_path.open("ab") as log:
        process = subprocess.Popen(list(cmd), cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with log_path.open("a") as log:
            log.write(f"\n[killed after {timeout_s:.0f} s]\n")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # also whatever a rank left behind
    process.wait()
    return ChildResult(returncode=process.returncode, peak_rss_mb=0.0, wall_s=time.perf_counter() - started,
                       timed_out=timed_out)


def env(**extra: str) -> dict[str, str]:
    return base_env(TOKENIZERS_PARALLELISM="false", **NO_MULTICAST, **extra)


def gpu_info() -> dict[str, Any]:
    def smi(*args: str) -> str:
        try:
            return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"nvidia-smi failed: {exc}"
    info = {"gpus": smi("--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"),
            "topology": smi("topo", "-m"), "python": sys.version.split()[0]}
    info["mlx"] = package_version("mlx")
    return info


def launch(args: argparse.Namespace, ranks: int) -> list[str]:
    """mlx.launch of `ranks` processes on this host, over args.backend, on a fresh rendezvous port."""
    args.port += 1
    launcher = SMOKE_LAUNCH if args.smoke else LAUNCH
    if args.backend == "nccl":
        return [*launcher, "--backend", "nccl", "-n", str(ranks), "--nccl-port", str(args.port), "--"]
    return [*launcher, "--backend", args.backend, "-n", str(ranks), "--starting-port", str(free_port_pair()), "--"]


def free_port_pair() -> int:
    """A port whose successor is free too (the ring backend listens on one port per rank)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def num_layers(model: Path) -> int:
    """LoRA on the last 16 blocks (all of them on the smoke model's 4)."""
    return min(16, int(json.loads((model / "config.json").read_text())["num_hidden_layers"]))


def lora_cli(args: argparse.Namespace, batch: int, work: Path) -> list[str]:
    return [
        "--model", str(args.model), "--train", "--data", str(args.data), "--seed", "0",
        "--batch-size", str(batch), "--iters", str(args.iters), "--num-layers", str(num_layers(args.model)),
        "--learning-rate", "1e-5", "--steps-per-report", str(args.steps_per_report),
        "--steps-per-eval", str(args.iters + 1), "--save-every", str(args.iters + 1),
        "--val-batches", "1", "--max-seq-length", "2048", "--adapter-path", str(work / "adapters"),
    ]


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    out, log = args.work / "allsum.json", args.work / "allsum.log"
    out.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    cmd = [*launch(args, 2), *args.rank_python, str(BENCH / "dist_allsum.py"), "--backend", args.backend, "--out",
           str(out)]
    if args.smoke:
        cmd += ["--values", "65536", "--warmup", "1", "--repeats", "3"]
    child = run_child(cmd, env(), log, args.probe_timeout)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.update({"exit": child.returncode, "wall_s": child.wall_s, "log_tail": log_tail(log, 40)})
    return result


def run_training(args: argparse.Namespace, mode: str, cpu_stream_ok: bool) -> dict[str, Any]:
    gpus, batch = MODES[mode]
    work = args.work / "runs" / mode
    work.mkdir(parents=True, exist_ok=True)
    out, log = work / "reports.json", work / "run.log"
    log.unlink(missing_ok=True)
    cli = lora_cli(args, batch, work)
    if gpus == 1:
        cmd = [sys.executable, str(BENCH / "plain_mlx_lm.py"), "--out", str(out), "--", *cli]
        # one process (no ranks to kill with it); a smoke's in a fork of this interpreter (bench/warm.py)
        child = run_one_process(cmd, env(CUDA_VISIBLE_DEVICES="0"), log, args.timeout, warm=args.smoke)
        reports = out
    else:
        flags = [] if cpu_stream_ok else ["--gpu-stream-reports"]
        cmd = [*launch(args, gpus), *args.rank_python, str(BENCH / "dist_plain.py"), "--backend", args.backend, *flags,
               "--out", str(out), "--", *cli]
        child = run_child(cmd, env(), log, args.timeout)
        reports = out.with_name("reports.rank0.json")
    if child.returncode != 0 or not reports.exists():
        raise RuntimeError(f"{mode} failed (exit {child.returncode}):\n{log_tail(log, 40)}")
    data = json.loads(reports.read_text())
    reports.unlink()
    tps = [r["tokens_per_second"] for r in data["train"]]
    return {
        "mode": mode, "gpus": gpus, "global_batch": batch, "tokens_per_second": tps,
        "measured_median": statistics.median(tps[1:] if len(tps) > 1 else tps),
        "peak_memory_gb": data["train"][-1]["peak_memory"], "world_size": data.get("world_size", 1),
        "wall_s": child.wall_s, "log_tail": log_tail(log, 8),
    }


def summarize(runs: list[dict[str, Any]], probe: dict[str, Any], seq_tokens: int) -> dict[str, Any]:
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        pooled = [t for r in mine for t in (r["tokens_per_second"][1:] or r["tokens_per_second"])]
        tps = statistics.median(pooled)
        gpus, batch = MODES[mode]
        by_mode[mode] = {"gpus": gpus, "global_batch": batch, "runs": len(mine), "tokens_per_second": tps,
                         "run_medians": [r["measured_median"] for r in mine],
                         "step_ms": batch * seq_tokens / tps * 1e3,
                         "peak_memory_gb": statistics.median(r["peak_memory_gb"] for r in mine)}
    for two, one in (("2gpu-b8", "1gpu-b4"), ("2gpu-b4", "1gpu-b4")):
        if two in by_mode and one in by_mode:
            by_mode[two]["speedup"] = by_mode[two]["tokens_per_second"] / by_mode[one]["tokens_per_second"]
            by_mode[two]["efficiency"] = by_mode[two]["speedup"] / 2
    fp32 = probe.get("float32", {}).get("median_ms")
    if fp32 and "2gpu-b8" in by_mode:
        by_mode["2gpu-b8"]["allreduce_share"] = fp32 / by_mode["2gpu-b8"]["step_ms"]
    return by_mode


def report(summary: dict[str, Any], probe: dict[str, Any]) -> str:
    lines = ["| mode | GPUs | global batch | tokens/s (group, median) | run medians | step | speedup vs 1 GPU b4 "
             "| efficiency | peak memory / GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        medians = ", ".join(f"{m:,.0f}" for m in s["run_medians"])
        speed = f"{s['speedup']:.3f}x" if "speedup" in s else ""
        eff = f"{s['efficiency']:.1%}" if "efficiency" in s else ""
        lines.append(f"| {mode} | {s['gpus']} | {s['global_batch']} | {s['tokens_per_second']:,.0f} | {medians} "
                     f"| {s['step_ms']:.0f} ms | {speed} | {eff} | {s['peak_memory_gb']:.2f} GB |")
    values, backend = probe.get("values", 10_485_760), probe.get("backend", "nccl")
    repeats = len(probe.get("float32", {}).get("times_ms", [])) or 20
    lines += ["", f"| all_sum of {values:,} values, 2 ranks ({backend}) | median of {repeats} | min - max "
              "| bus bandwidth |", "|---|---|---|---|"]
    for name in ("float32", "bfloat16"):
        p = probe.get(name)
        if p:
            lines.append(f"| {name} ({p['bytes'] / 1e6:.1f} MB) | {p['median_ms']:.3f} ms | {p['min_ms']:.3f} - "
                         f"{p['max_ms']:.3f} ms | {p['bus_gb_s']:.0f} GB/s |")
    if "2gpu-b8" in summary and "allreduce_share" in summary["2gpu-b8"]:
        lines.append(f"\nfloat32 all_sum / 2gpu-b8 step: {summary['2gpu-b8']['allreduce_share']:.2%}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="model, data, runs (default: /tmp/lb; --smoke: a "
                        "temporary folder, removed after)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder (default: .whl2/tok; --smoke: the embedded model's)")
    parser.add_argument("--iters", type=int, default=35)
    parser.add_argument("--steps-per-report", type=int, default=5)
    parser.add_argument("--seq-tokens", type=int, default=1159)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                        help="first round (default: all); later rounds repeat 1gpu-b4 and 2gpu-b8")
    parser.add_argument("--budget-s", type=float, default=520, help="start no run past this many seconds")
    parser.add_argument("--timeout", type=float, default=400, help="seconds one training launch may take")
    parser.add_argument("--probe-timeout", type=float, default=180)
    parser.add_argument("--port", type=int, default=12400, help="first NCCL rendezvous port")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="the small model, 2 iterations of 32-token rows, "
                        "1gpu-b4 and 2gpu-b4 once, figures checked; without a GPU over the ring backend on the CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.steps_per_report, args.seq_tokens, args.modes = 2, 1, 32, ["1gpu-b4", "2gpu-b4"]
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="bench-dist-gpu-smoke-")) if args.smoke else Path("/tmp/lb")
    if args.tokenizer is None:
        args.tokenizer = DEFAULT_MODEL if args.smoke else PROJECT_DIR / ".whl2" / "tok"
    suffix = "-smoke" if args.smoke else ""
    args.model, args.data = args.work / f"model{suffix}", args.work / f"data{suffix}"
    if args.json is None:
        out = os.environ.get("OUT")
        name = f"bench_distributed_gpu{suffix}.json"
        args.json = Path(out) / name if out else RESULTS_DIR / name
    return args


def has_cuda() -> bool:
    """Whether MLX here has CUDA, asked in a child: this process never imports MLX, so a smoke's children can
    run in forks of it (bench/warm.py)."""
    probe = subprocess.run([sys.executable, "-c", "import mlx.core as mx; print(mx.cuda.is_available())"],
                           capture_output=True, text=True, check=False, env=base_env())
    return probe.stdout.strip() == "True"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.rank_python = [sys.executable]  # what starts a rank
    if not args.smoke:
        return run(args)
    with rank_forks() as client:  # a smoke's ranks forked from this interpreter (bench/rank_forks.py)
        args.rank_python = [sys.executable, *client]
        if not args.work.name.startswith("bench-dist-gpu-smoke-"):
            return run(args)
        try:
            return run(args)
        finally:
            shutil.rmtree(args.work, ignore_errors=True)


def smoke_figures(summary: dict[str, Any], probe: dict[str, Any]) -> list[tuple[str, float | None]]:
    """What a smoke run checks (check_figures): each mode's tokens/s, step and peak memory, the 2-rank speedup
    and efficiency, the probe's all_sum times and bandwidths."""
    figures: list[tuple[str, float | None]] = []
    for mode, s in summary.items():
        figures += [(f"| {mode} |", s["tokens_per_second"]), (f"| {mode} |", s["step_ms"]),
                    (f"| {mode} |", s["peak_memory_gb"])]
        if "speedup" in s:
            figures += [(f"| {mode} |", s["speedup"]), (f"| {mode} |", s["efficiency"] * 100)]
    for name in ("float32", "bfloat16"):
        p = probe.get(name, {})
        figures += [(f"| {name} (", p.get("median_ms")), (f"| {name} (", p.get("bus_gb_s"))]
    return figures


def run(args: argparse.Namespace) -> int:
    """The whole benchmark on args (parse_args)."""
    started = time.perf_counter()
    os.environ.update(NO_MULTICAST)
    args.work.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"gpu": gpu_info(), "env": NO_MULTICAST, "iters": args.iters, "runs": [],
                              "failures": []}
    print(result["gpu"]["gpus"], "\n", result["gpu"]["topology"], "\nmlx", result["gpu"]["mlx"], flush=True)
    args.backend = "nccl"
    if args.smoke and not has_cuda():
        args.backend = "ring"
        print("smoke: MLX sees no GPU, so NCCL cannot run here: the probe and the 2-process runs go over the ring "
              "backend on the CPU", flush=True)
    result["backend"] = args.backend

    def save() -> None:
        args.json.write_text(json.dumps(result, indent=2))

    if args.tokenizer.resolve() == DEFAULT_MODEL.resolve():
        ensure_defaults()
    if args.smoke:  # built once in data/.cache, shared with bench_gpu.py's smoke
        args.model, args.data = gpu_smoke_inputs(args.tokenizer, args.seq_tokens, args.work / "build.log")
    elif not (args.model / "config.json").exists() or not args.data.exists():
        log = args.work / "build.log"
        cmd = [sys.executable, str(BENCH / "gpu_build.py"), "--tokenizer", str(args.tokenizer),
               "--model-out", str(args.model), "--data-out", str(args.data), "--seq-tokens", str(args.seq_tokens)]
        if run_child(cmd, env(), log, 900).returncode != 0:
            raise SystemExit(f"building the model or data failed:\n{log_tail(log, 30)}")

    probe = run_probe(args)
    result["probe"] = probe
    save()
    ok = probe.get("check_sum") is not None and probe.get("check_sum") == probe.get("check_expected")
    print(f"probe: exit {probe['exit']} in {probe['wall_s']:.0f} s; sum check "
          f"{probe.get('check_sum')} (expected {probe.get('check_expected')}); cpu stream "
          f"{probe.get('cpu_stream_all_sum')}", flush=True)
    if not ok or "float32" not in probe:
        print("NCCL probe failed:\n" + probe["log_tail"], flush=True)
        return 1
    cpu_ok = bool(probe.get("cpu_stream_all_sum", {}).get("ok"))

    queue = list(args.modes)
    durations: dict[str, float] = {}
    while queue:
        mode = queue.pop(0)
        elapsed = time.perf_counter() - started
        if elapsed + durations.get(mode, 60) > args.budget_s:
            print(f"stopping: {elapsed:.0f} s used, {mode} would pass --budget-s", flush=True)
            break
        try:
            run = run_training(args, mode, cpu_ok)
        except RuntimeError as exc:
            result["failures"].append({"mode": mode, "error": str(exc)})
            print(str(exc), flush=True)
            save()
            continue
        durations[mode] = run["wall_s"]
        result["runs"].append(run)
        print(f"{mode}: {run['measured_median']:,.0f} tokens/s (world {run['world_size']}) in {run['wall_s']:.0f} s "
              f"{[round(t) for t in run['tokens_per_second']]}", flush=True)
        result["summary"] = summarize(result["runs"], probe, args.seq_tokens)
        save()
        if not queue and not args.smoke:
            queue = ["1gpu-b4", "2gpu-b8"]
    result["summary"] = summarize(result["runs"], probe, args.seq_tokens)
    result["table"] = report(result["summary"], probe)
    save()
    print("\n" + result["table"], flush=True)
    if args.smoke:
        if result["failures"]:
            raise SystemExit(f"smoke: {len(result['failures'])} run(s) failed: "
                             + ", ".join(f["mode"] for f in result["failures"]))
        check_figures(smoke_figures(result["summary"], probe), result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
