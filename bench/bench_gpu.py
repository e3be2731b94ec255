"""GPU training throughput: loraboard's worker against plain mlx-lm on a Mistral-7B-shaped model (MLX CUDA).

Runs on an NVIDIA GPU with MLX's CUDA backend (`mlx-cuda-13`). Builds, if absent, a
Mistral-7B-shaped model with random bf16 weights and data of fixed-length rows
(bench/gpu_build.py), then trains it interleaved, one process per run:

  plain              mlx-lm's trainer as `python -m mlx_lm lora --train` runs it (bench/plain_mlx_lm.py)
  loraboard-float32  the real worker, `python -m worker train --run-id N`, on a run row of a temporary
                     SQLite database, with the environment the dashboard's supervisor gives it, and
                     lora_precision float32 (LoRA products in float32, as mlx-lm's layers)
  loraboard-mixed    the same with lora_precision mixed (worker/mixed_lora.py: float32 LoRA weights,
                     products in bf16)
  loraboard-mixed-pad32  mixed, with batch_padding mlx_lm (rows padded to a multiple of 32 as mlx-lm pads
                     them; the worker modes above pad tight, worker/batch_padding.py)
  peft               PyTorch + PEFT with the same settings (bench/gpu_peft.py: bf16 base, float32
                     adapters, eager, Adam at 1e-5; the image's PyTorch, a carried PEFT wheel)

Same settings for all: LoRA rank 8, scale 20, dropout 0 on the 7 linear layers of the
last 16 blocks (10,485,760 trainable parameters, checked), batch 4, rows of 1,159
tokens, max_seq_length 2048, Adam at 1e-5, seed 0, a report every 5 steps, one
validation batch at the start and the end (outside the timed steps), no checkpoint
during the run, no gradient checkpointing. Rounds rotate the order (--modes as given, then
reversed, ...). Tokens/s are mlx-lm's own per-report numbers, the first
report of each process skipped as warm-up, median over the rest (PEFT: the same per-report
count of target tokens over CUDA-synchronised time); peak memory is mlx-lm's reported
`peak_memory` (GB, MLX's allocator peak; PEFT: torch.cuda.max_memory_allocated), the last
report of a run, median over runs. Then, time allowing (--budget-s), experiments: plain mlx-lm with
one MLX setting changed each (CUDA graphs, cuDNN attention, compile, allocator cache,
gradient checkpointing), one run each.

Prints Markdown tables and writes JSON (--json; default $OUT/bench_gpu.json when OUT
is set, else bench/results/bench_gpu.json), rewritten after every run.

On the lent H200 (bench/README.md, "GPU (NVIDIA H200)", says how the wheels in .whl/
and .whl2/ are made): MLX's CUDA wheel is over one call's 64 MiB carry, so it travels
as two parts of an xz tarball of the unpacked wheel, in two calls back to back (the
first part waits in /tmp; the machine stays warm only ~30 s after a call).
Call 1, carry [".whl2/p1", ".whl2/tok"] (35 s):

    mkdir -p /tmp/lbpart && cp .whl2/p1/* /tmp/lbpart/ &&
    python3 bench/gpu_build.py --tokenizer .whl2/tok --model-out /tmp/lb/model --data-out /tmp/lb/data

Call 2, carry [".whl2/p2", ".whl", ".whl2/tok"] (7 minutes):

    cat /tmp/lbpart/mlxcu.tar.xz.00 .whl2/p2/mlxcu.tar.xz.01 > /tmp/mlxcu.tar.xz &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && tar xJf /tmp/mlxcu.tar.xz -C /tmp/site &&
    ln -sfn "$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')" /tmp/site/nvidia &&
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 &&
    python3 bench/bench_gpu.py --work /tmp/lb --tokenizer .whl2/tok --budget-s 510 2>&1 | tee $OUT/bench_gpu.txt

(libmlx.so looks for the CUDA libraries in <site>/nvidia, hence the link to the
image's own.) Call 3, while the machine is still warm, carry [".whl2/tok"]: more A/B
rounds and the experiments not run yet, added to the same results:

    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 &&
    python3 bench/bench_gpu.py --work /tmp/lb --tokenizer .whl2/tok --continue --rounds 5 --budget-s 520

`--list` names the experiments; `--experiments NAME ...` picks some; `--smoke` tries
the whole script on a small model of the same architecture (CPU included): 2 iterations
of 2 rows of 32 tokens, 1 round, in a temporary --work folder (removed after), the model and
data built once into data/.cache/bench-gpu-smoke (shared with bench_distributed_gpu.py's
smoke), results to bench_gpu-smoke.json, its figures checked. Unless --modes or --experiments
say otherwise it trains each way once (SMOKE_MODES: plain, loraboard-mixed, peft;
SMOKE_EXPERIMENTS: gpu_plain.py's two flags). Without CUDA it leaves out the CUDA-only
experiments, and PEFT where PyTorch or PEFT is not installed, each with a line saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from app.contract.run_config import LoraParameters, RunConfig
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.supervisor import worker_env
from app.runs.store.runs import create_run
from app.tables import Run, TrainReport
from bench.common import (
    CACHE_DIR,
    PROJECT_DIR,
    RESULTS_DIR,
    base_env,
    check_figures,
    fmt,
    gpu_smoke_inputs,
    log_tail,
    machine_info,
    median,
    package_version,
    run_child,
)
from bench.gpu_build import LORA_KEYS, MISTRAL_7B, SMOKE, count_parameters, lora_parameter_count
from bench.gpu_modes import EXPERIMENTS, MODES, PLAIN, REFERENCE, WORKER_MODES, Variant, measured, report, summarize

# A smoke's modes and experiments: each way the script starts a training process once. The worker's other modes
# are the same run_worker with another lora_precision or batch_padding; the experiments left out are
# plain_mlx_lm.py with one environment variable or flag more, as plain runs it; gpu_plain.py's two flags both run.
SMOKE_MODES = ["plain", "loraboard-mixed", "peft"]
SMOKE_EXPERIMENTS = ["clear-cache-1gb", "cache-limit-4gb"]
TRAINABLE_RE = re.compile(r"Trainable parameters: [\d.]+% \(([\d.]+)M/([\d.]+)M\)")


def gpu_info() -> dict[str, Any]:
    query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return {"nvidia_smi": out, "mlx_cuda_13": package_version("mlx-cuda-13")}


PROBE = """
import json, sys, time
import mlx.core as mx
info = {"mlx": mx.__version__, "cuda": bool(mx.cuda.is_available()), "device": str(mx.default_device())}
n = int(sys.argv[1])
a = mx.random.normal((n, n)).astype(mx.bfloat16)
b = mx.random.normal((n, n)).astype(mx.bfloat16)
mx.eval(a, b)
for _ in range(5):
    mx.eval(a @ b)
best = []
for _ in range(3):
    tic = time.perf_counter()
    outs = [a @ b for _ in range(20)]
    mx.eval(outs)
    best.append(20 * 2 * n**3 / (time.perf_counter() - tic) / 1e12)
    del outs
info["bf16_matmul_tflops"] = max(best)
info["size"] = n
print("PROBE " + json.dumps(info))
"""


def probe(work: Path, size: int = 8192, warm: bool = False) -> dict[str, Any]:
    """MLX's version, whether it sees CUDA, and its bf16 n^3 matrix-product rate (best of 3 x 20).
    warm: a smoke's, in a fork of this interpreter (bench/warm.py), as the smoke's other children."""
    log = work / "probe.log"
    log.unlink(missing_ok=True)
    child = run_child([sys.executable, "-c", PROBE, str(size)], base_env(), log, 300, warm=warm)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise SystemExit(f"bench_gpu: MLX probe failed (exit {child.returncode}):\n{log_tail(log, 30)}")


def build_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.smoke:  # built once in data/.cache, shared with bench_distributed_gpu.py's smoke
        return gpu_smoke_inputs(args.tokenizer, args.seq_tokens, args.work / "build.log")
    model, data = args.work / "model", args.work / "data"
    cmd = [sys.executable, str(PROJECT_DIR / "bench" / "gpu_build.py"), "--tokenizer", str(args.tokenizer),
           "--model-out", str(model), "--data-out", str(data), "--seq-tokens", str(args.seq_tokens)]
    log = args.work / "build.log"
    child = run_child(cmd, base_env(), log, 1800)
    if child.returncode != 0:
        raise SystemExit(f"bench_gpu: building the model or data failed:\n{log_tail(log, 30)}")
    return model, data


def lora_cli(args: argparse.Namespace, work: Path) -> list[str]:
    return [
        "--model", str(args.model), "--train", "--data", str(args.data), "--seed", "0",
        "--batch-size", str(args.batch_size), "--iters", str(args.iters), "--num-layers", str(args.num_layers),
        "--learning-rate", "1e-5", "--steps-per-report", str(args.steps_per_report),
        "--steps-per-eval", str(args.iters + 1), "--save-every", str(args.iters + 1),
        "--val-batches", "1", "--max-seq-length", "2048", "--adapter-path", str(work / "adapters"),
    ]


def run_plain(args: argparse.Namespace, work: Path, variant: Variant) -> dict[str, Any]:
    out = work / "reports.json"
    cli = lora_cli(args, work) + variant.cli
    if variant.wrapper:
        script = PROJECT_DIR / "bench" / "gpu_plain.py"
        cmd = [sys.executable, str(script), *variant.wrapper, "--out", str(out), "--", *cli]
    else:
        cmd = [sys.executable, str(PROJECT_DIR / "bench" / "plain_mlx_lm.py"), "--out", str(out), "--", *cli]
    log = work / "run.log"
    child = run_child(cmd, base_env(TOKENIZERS_PARALLELISM="false", **variant.env), log, args.timeout,
                      warm=args.smoke)
    if child.returncode != 0 or not out.exists():
        raise RuntimeError(f"plain mlx-lm ({variant.name}) failed (exit {child.returncode}):\n{log_tail(log, 30)}")
    data = json.loads(out.read_text())
    match = TRAINABLE_RE.search(log.read_text(errors="replace"))
    return {
        "tokens_per_second": [r["tokens_per_second"] for r in data["train"]],
        "peak_memory_gb": [r["peak_memory"] for r in data["train"]],
        "trainable": f"{match.group(1)}M of {match.group(2)}M" if match else None,
        "backend": None, "load_s": data["load_s"], "wall_s": child.wall_s,
    }


def run_peft(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """PyTorch + PEFT with the same settings (bench/gpu_peft.py)."""
    out, log = work / "reports.json", work / "run.log"
    cmd = [sys.executable, str(PROJECT_DIR / "bench" / "gpu_peft.py"), "--data", str(args.data), "--tokenizer",
           str(args.tokenizer), "--out", str(out), "--iters", str(args.iters), "--batch-size", str(args.batch_size),
           "--num-layers", str(args.num_layers), "--steps-per-report", str(args.steps_per_report),
           *(["--smoke"] if args.smoke else [])]
    child = run_child(cmd, base_env(TOKENIZERS_PARALLELISM="false"), log, args.timeout, warm=args.smoke)
    if child.returncode != 0 or not out.exists():
        raise RuntimeError(f"PyTorch+PEFT failed (exit {child.returncode}):\n{log_tail(log, 30)}")
    data = json.loads(out.read_text())
    return {
        "tokens_per_second": [r["tokens_per_second"] for r in data["train"]],
        "peak_memory_gb": [r["peak_memory"] for r in data["train"]],
        "trainable": f"{data['trainable']:,} of {data['total']:,}", "trainable_params": data["trainable"],
        "backend": f"PyTorch {data['torch']}, PEFT {data['peft']}", "wall_s": child.wall_s,
    }


def run_worker(args: argparse.Namespace, work: Path, mode: tuple[str, str] = ("mixed", "tight")) -> dict[str, Any]:
    lora_precision, batch_padding = mode
    settings = Settings(adapters_dir=work / "adapters", db_path=work / "loraboard.db",
                        cache_dir=CACHE_DIR if args.smoke else work / "cache",  # a smoke: the shim compiled once
                        hf_offline=True, allowed_dirs=os.pathsep.join((str(args.work), str(args.model.parent),
                                                                       str(args.data.parent))))
    config = RunConfig(
        name="bench-gpu", model=str(args.model), data=str(args.data), seed=0, batch_size=args.batch_size,
        iters=args.iters, num_layers=args.num_layers, learning_rate=1e-5, steps_per_report=args.steps_per_report,
        steps_per_eval=args.iters + 1, save_every=args.iters + 1, val_batches=1, max_seq_length=2048,
        grad_checkpoint=False, lora_precision=lora_precision, batch_padding=batch_padding,
        lora_parameters=LoraParameters(rank=8, scale=20.0, dropout=0.0, keys=list(LORA_KEYS)),
    ).resolved(settings)
    engine = make_engine(settings.database_path)
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        assert run_id is not None
        log = work / "run.log"
        cmd = [sys.executable, "-m", "worker", "train", "--run-id", str(run_id)]
        child = run_child(cmd, worker_env(settings), log, args.timeout, warm=args.smoke)
        with Session(engine) as session:
            run = session.get(Run, run_id)
            reports = session.exec(
                select(TrainReport).where(TrainReport.run_id == run_id).order_by(col(TrainReport.iteration))
            ).all()
            result = {
                "tokens_per_second": [r.tokens_per_second for r in reports],
                "peak_memory_gb": [r.peak_memory for r in reports],
                "trainable": f"{run.trainable_params:,} of {run.total_params:,}" if run and run.trainable_params
                else None,
                "trainable_params": run.trainable_params if run else None,
                "backend": f"{run.backend}, {run.train_dtype}" if run else None, "wall_s": child.wall_s,
            }
            status, error = (run.status, run.error) if run else ("missing", None)
    finally:
        engine.dispose()
    text = log.read_text(errors="replace") if log.exists() else ""
    result["blas_warning"] = "OpenBLAS routing unavailable" in text
    if child.returncode != 0 or status != "completed":
        raise RuntimeError(f"worker run ended {status} (exit {child.returncode}): {error}\n{log_tail(log, 30)}")
    return result


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.runs: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.unavailable: dict[str, str] = {}  # label: why this machine cannot run it
        self.failed: list[dict[str, str]] = []
        self.cuda = True  # set from the probe
        self.payload: dict[str, Any] = {}

    def time_left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def estimate(self) -> float:
        walls = [r["wall_s"] for r in self.runs]
        return (median(walls) or 90.0) if walls else 90.0  # the first run on a machine compiles kernels: slower

    def missing(self, name: str, variant: Variant | None) -> str | None:
        """Why this machine cannot run a mode or experiment (None: it can). PEFT missing fails a real run."""
        if variant is not None and variant.cuda_only and not self.cuda:
            return "a setting of MLX's CUDA backend; MLX sees no GPU here"
        if name == "peft" and self.args.smoke and not all(importlib.util.find_spec(m) for m in ("torch", "peft")):
            return "PyTorch and PEFT are not installed here"
        return None

    def one(self, name: str, variant: Variant | None, label: str) -> None:
        reason = self.missing(name, variant)
        if reason is not None:
            self.unavailable[label] = reason
            print(f"  not run {label}: {reason}", file=sys.stderr, flush=True)
            return
        if self.time_left() < self.estimate() * 1.15:
            self.skipped.append(label)
            print(f"  skip {label}: {self.time_left():.0f} s left, a run takes ~{self.estimate():.0f} s",
                  file=sys.stderr, flush=True)
            return
        work = self.args.work / "runs" / f"{time.strftime('%H%M%S')}-{label}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            if name == "peft":
                result = run_peft(self.args, work)
            elif variant is None:
                result = run_worker(self.args, work, WORKER_MODES[name])
            else:
                result = run_plain(self.args, work, variant)
        except RuntimeError as exc:
            self.failed.append({"run": label, "error": str(exc)})
            print(f"  FAILED {label}: {exc}", file=sys.stderr, flush=True)
            self.append_log(label, work / "run.log")
            return
        result.update({"mode": name, "label": label,
                       "median_tokens_per_second": median(measured(result["tokens_per_second"])),
                       "peak_memory_gb_final": result["peak_memory_gb"][-1] if result["peak_memory_gb"] else None})
        self.runs.append(result)
        self.append_log(label, work / "run.log")
        print(f"  {label:<22} {fmt(result['median_tokens_per_second'], 0)} tok/s, peak "
              f"{fmt(result['peak_memory_gb_final'], 2)} GB, trainable {result['trainable']}, "
              f"{result['wall_s']:.0f} s", file=sys.stderr, flush=True)
        self.write()

    def append_log(self, label: str, log: Path) -> None:
        if self.args.log is not None:
            self.args.log.parent.mkdir(parents=True, exist_ok=True)
            with self.args.log.open("a") as out:
                out.write(f"\n===== {label} =====\n{log_tail(log, 40)}\n")

    def write(self) -> None:
        self.payload.update({"runs": self.runs, "skipped": self.skipped, "unavailable": self.unavailable,
                             "failed": self.failed, "summary": summarize(self.runs)})
        text = json.dumps(self.payload, indent=2, sort_keys=True, default=str)
        for path in (self.args.json, self.args.work / "results.json"):  # the second for --continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="model, data and runs (default: /tmp/lb; --smoke: a temporary folder)")
    parser.add_argument("--tokenizer", type=Path, default=PROJECT_DIR / "data" / "models" / "tiny-mistral",
                        help="folder of the tokenizer files to use (default: the embedded model's)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each: every mode once)")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES, help="modes of each round "
                        "(default: all; order reversed every other round)")
    parser.add_argument("--iters", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--steps-per-report", type=int, default=5)
    parser.add_argument("--seq-tokens", type=int, default=1159)
    parser.add_argument("--experiments", nargs="*", default=[v.name for v in EXPERIMENTS],
                        choices=[v.name for v in EXPERIMENTS], help="experiments after the A/B (default: all)")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="start no run that would end after this many seconds from the start")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one training process may take")
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument("--log", type=Path, default=None, help="append each run's log tail here")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="add to the runs of the last invocation on --work (its results.json): more A/B rounds, "
                        "and the experiments it has not run")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--smoke", action="store_true",
                        help="a small model of the same architecture, 2 iterations of 2 x 32 tokens, 1 round, figures "
                        "checked (tries the script anywhere, e.g. on CPU); results to bench_gpu-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.iters, args.steps_per_report, args.batch_size, args.seq_tokens = 1, 2, 1, 2, 32
        if args.modes == MODES:  # one run of each way the script trains, unless --modes or --experiments say
            args.modes = SMOKE_MODES
        if args.experiments == [v.name for v in EXPERIMENTS]:
            args.experiments = SMOKE_EXPERIMENTS
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="bench-gpu-smoke-")) if args.smoke else Path("/tmp/lb")
    out = os.environ.get("OUT")
    name = "bench_gpu-smoke.json" if args.smoke else "bench_gpu.json"
    if args.json is None:
        args.json = Path(out) / name if out else RESULTS_DIR / name
    if args.log is None and out:
        args.log = Path(out) / "bench_gpu_runs.log"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for v in EXPERIMENTS:
            print(f"{v.name:<18} {v.what}")
        return 0
    if args.smoke and args.work.name.startswith("bench-gpu-smoke-"):
        try:
            return run(args)
        finally:
            shutil.rmtree(args.work, ignore_errors=True)
    return run(args)


def smoke_figures(bench: Bench) -> list[tuple[str, float | None]]:
    """What a smoke run checks (check_figures): each mode's and experiment's tokens/s and peak memory."""
    figures: list[tuple[str, float | None]] = []
    for name, s in summarize(bench.runs).items():
        figures += [(f"| {name} |", s["median_tokens_per_second"]), (f"| {name} |", s["median_peak_memory_gb"])]
    return figures


def run(args: argparse.Namespace) -> int:
    """The whole benchmark on args (parse_args)."""
    args.work = args.work.resolve()
    args.tokenizer = args.tokenizer.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    info, gpu = machine_info(), gpu_info()
    config = SMOKE if args.smoke else MISTRAL_7B
    args.num_layers = min(args.num_layers, config["num_hidden_layers"])
    expected = lora_parameter_count(config, 8, args.num_layers)
    print(f"bench_gpu: {gpu['nvidia_smi']}; model {count_parameters(config):,} parameters, LoRA "
          f"{expected:,} trainable expected", file=sys.stderr, flush=True)
    tic = time.perf_counter()
    args.model, args.data = build_inputs(args)
    print(f"bench_gpu: inputs ready in {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
    probe_info = probe(args.work, 256 if args.smoke else 8192, warm=args.smoke)
    print(f"bench_gpu: probe {probe_info}", file=sys.stderr, flush=True)
    bench.cuda = bool(probe_info.get("cuda"))
    bench.payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info, "gpu": gpu, "probe": probe_info, "expected_trainable": expected,
        "reference": REFERENCE, "experiments": [vars(v) for v in EXPERIMENTS],
    }
    first_round = 0
    previous = args.work / "results.json"
    if args.resume and previous.exists():
        bench.runs = json.loads(previous.read_text()).get("runs", [])
        first_round = len({r["label"].split("-")[0] for r in bench.runs if r["mode"] in MODES})
        print(f"bench_gpu: continuing {len(bench.runs)} runs of {previous}", file=sys.stderr, flush=True)
    for round_no in range(first_round, first_round + args.rounds):
        order = args.modes if round_no % 2 == 0 else args.modes[::-1]
        for mode in order:
            bench.one(mode, PLAIN if mode == "plain" else None, f"r{round_no}-{mode}")
    by_name = {v.name: v for v in EXPERIMENTS}
    done = {r["mode"] for r in bench.runs}
    for name in args.experiments:
        if name not in done:
            bench.one(name, by_name[name], name)
    bench.write()
    worker_runs = [r for r in bench.runs if r["mode"] in WORKER_MODES]
    for r in worker_runs:
        if r.get("trainable_params") != expected:
            print(f"bench_gpu: WARNING worker trained {r.get('trainable_params')} parameters, expected {expected:,}",
                  file=sys.stderr)
        if r.get("blas_warning"):
            print("bench_gpu: WARNING the worker printed the OpenBLAS fallback warning", file=sys.stderr)
    table = report(bench, info, gpu, probe_info)
    print(table, flush=True)
    print(f"\nwrote {args.json}", flush=True)
    if args.smoke and not bench.failed:
        check_figures(smoke_figures(bench), table)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
