"""Training throughput and memory: loraboard's worker against plain mlx-lm, interleaved in one run.

    .venv/bin/python bench/bench_train.py [--iters 100] [--repeats 3] [--model-size tiny 20m]
    .venv/bin/python bench/bench_train.py --smoke    # tiny, 3 iterations at batch 2, 1 round, 3 modes: checks
                                                     # its figures

Modes, all on the same model, data, seed and settings, run round-robin (the order
rotates each round so no mode always runs first):

  plain                   mlx-lm's trainer as `python -m mlx_lm lora` runs it (bench/plain_mlx_lm.py), stock MLX
  plain+openblas          the same with LD_PRELOAD of loraboard's OpenBLAS shim, OPENBLAS_NUM_THREADS=1
  loraboard               the real worker, `python -m worker train --run-id N`, on a temporary database
  loraboard-no-openblas   the same with LORABOARD_OPENBLAS=0

Tokens/s are mlx-lm's own per-report numbers (training steps only), the first report
of each process skipped as warm-up. Peak RSS is each process's own ru_maxrss.
Prints Markdown tables and writes bench/results/bench_train[-20m].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.db import make_engine
from app.jobs.supervisor import worker_env
from app.runs.store.runs import create_run
from app.tables import Run, TrainReport
from bench import model_20m
from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROJECT_DIR,
    base_env,
    check_figures,
    check_inputs,
    ensure_model_20m,
    fmt,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    median,
    ratio,
    run_child,
    smoke_data,
    verdict,
    write_results,
)

MODES = ["plain", "plain+openblas", "loraboard", "loraboard-no-openblas"]
# A smoke's modes: each way the script trains once (loraboard-no-openblas is the same worker run with
# openblas off in its settings).
SMOKE_MODES = ["plain", "plain+openblas", "loraboard"]
# (name, numerator mode, denominator mode, target, higher is better)
SPEED_RATIOS = [
    ("loraboard / plain", "loraboard", "plain", 5.0, True),
    ("loraboard-no-openblas / plain", "loraboard-no-openblas", "plain", 0.99, True),
    ("loraboard / plain+openblas (reporting overhead)", "loraboard", "plain+openblas", 0.99, True),
]
RSS_RATIOS = [
    ("loraboard / plain", "loraboard", "plain", 1.05, False),
    ("loraboard-no-openblas / plain (same BLAS)", "loraboard-no-openblas", "plain", 1.05, False),
    ("loraboard / plain+openblas (same BLAS)", "loraboard", "plain+openblas", 1.05, False),
]
Runner = Callable[[argparse.Namespace, Path], dict[str, Any]]


def openblas_shim() -> Path:
    """loraboard's forwarding shim (compiled once into data/.cache), as the worker builds it."""
    import importlib.util

    from worker.blas import build_shim

    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        raise SystemExit("bench: scipy-openblas32 is not installed, so plain+openblas cannot run")
    return build_shim(CACHE_DIR, Path(spec.origin).parent / "lib")


def train_env(**extra: str) -> dict[str, str]:
    return base_env(OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)


def run_plain(args: argparse.Namespace, work: Path, shim: Path | None) -> dict[str, Any]:
    out = work / "reports.json"
    cli = [
        "--model", str(args.model), "--train", "--data", str(args.data), "--seed", str(args.seed),
        "--batch-size", str(args.batch_size), "--iters", str(args.iters), "--num-layers", str(args.num_layers),
        "--learning-rate", str(args.learning_rate), "--steps-per-report", str(args.steps_per_report),
        "--steps-per-eval", str(args.iters + 1), "--save-every", str(args.iters + 1),
        "--val-batches", str(args.val_batches), "--max-seq-length", str(args.max_seq_length),
        "--adapter-path", str(work / "adapters"),
    ]
    env = train_env()
    if shim is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD", "")]))
    cmd = [sys.executable, str(PROJECT_DIR / "bench" / "plain_mlx_lm.py"), "--out", str(out), "--", *cli]
    log = work / "plain.log"
    child = run_child(cmd, env, log, args.timeout, warm=args.smoke)
    if child.returncode != 0 or not out.exists():
        raise SystemExit(f"bench: plain mlx-lm failed (exit {child.returncode}):\n{log_tail(log)}")
    data = json.loads(out.read_text())
    return {"tokens_per_second": [r["tokens_per_second"] for r in data["train"]], "blas": data["blas"],
            "peak_rss_mb": child.peak_rss_mb, "wall_s": child.wall_s}


def run_worker(args: argparse.Namespace, work: Path, openblas: bool) -> dict[str, Any]:
    settings = Settings(
        adapters_dir=work / "adapters", db_path=work / "loraboard.db", cache_dir=CACHE_DIR,
        openblas=openblas, hf_offline=True, allowed_dirs=os.pathsep.join((str(args.model), str(args.data))),
    )
    config = RunConfig(
        name="bench", model=str(args.model), data=str(args.data), seed=args.seed, batch_size=args.batch_size,
        iters=args.iters, num_layers=args.num_layers, learning_rate=args.learning_rate,
        steps_per_report=args.steps_per_report, steps_per_eval=args.iters + 1, save_every=args.iters + 1,
        val_batches=args.val_batches, max_seq_length=args.max_seq_length,
    ).resolved(settings)
    engine = make_engine(settings.database_path)
    try:
        with Session(engine) as session:
            run_id = create_run(session, config).id
        assert run_id is not None
        env = worker_env(settings)
        env.update(train_env())
        cmd = [sys.executable, "-m", "worker", "train", "--run-id", str(run_id)]
        log = work / "worker.log"
        child = run_child(cmd, env, log, args.timeout, warm=args.smoke)
        with Session(engine) as session:
            run = session.get(Run, run_id)
            reports = session.exec(
                select(TrainReport).where(TrainReport.run_id == run_id).order_by(col(TrainReport.iteration))
            ).all()
            tokens = [r.tokens_per_second for r in reports]
            status, backend, error = (run.status, run.backend, run.error) if run else ("missing", None, None)
    finally:
        engine.dispose()
    if child.returncode != 0 or status != "completed":
        raise SystemExit(f"bench: worker run ended {status} (exit {child.returncode}): {error}\n{log_tail(log)}")
    return {"tokens_per_second": tokens, "blas": backend, "peak_rss_mb": child.peak_rss_mb,
            "wall_s": child.wall_s}


def runners() -> dict[str, Runner]:
    """Each mode's runner; the OpenBLAS shim is built only for the mode that needs it (a GPU machine may lack it)."""
    return {
        "plain": lambda a, w: run_plain(a, w, None),
        "plain+openblas": lambda a, w: run_plain(a, w, openblas_shim()),
        "loraboard": lambda a, w: run_worker(a, w, True),
        "loraboard-no-openblas": lambda a, w: run_worker(a, w, False),
    }


def measured(tokens: list[float]) -> list[float]:
    """Per-report tokens/s without the first report (warm-up: compilation, first batches)."""
    return tokens[1:] if len(tokens) > 1 else tokens


def run_rounds(args: argparse.Namespace, modes: list[str], scratch: Path) -> dict[str, list[dict[str, Any]]]:
    table = runners()
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_no in range(args.repeats):
        shift = round_no % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            work = scratch / f"r{round_no}-{mode.replace('+', '-')}"
            work.mkdir(parents=True)
            result = table[mode](args, work)
            result["round"] = round_no
            result["median_tokens_per_second"] = median(measured(result["tokens_per_second"]))
            results[mode].append(result)
            print(f"  round {round_no + 1}/{args.repeats} {mode:<22} {fmt(result['median_tokens_per_second'], 0)}"
                  f" tok/s, peak RSS {result['peak_rss_mb']:.0f} MB, {result['wall_s']:.1f} s ({result['blas']})",
                  file=sys.stderr, flush=True)
    return results


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for mode, runs in results.items():
        pooled = [x for run in runs for x in measured(run["tokens_per_second"])]
        rounds = [run["median_tokens_per_second"] for run in runs]
        summary[mode] = {
            "median_tokens_per_second": median(pooled),
            "round_medians": rounds,
            "reports_used": len(pooled),
            "median_peak_rss_mb": median([run["peak_rss_mb"] for run in runs]),
            "median_wall_s": median([run["wall_s"] for run in runs]),
            "blas": runs[0]["blas"] if runs else None,
        }
    return summary


def comparisons(summary: dict[str, dict[str, Any]], key: str, specs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for name, top, bottom, target, higher in specs:
        if top in summary and bottom in summary:
            value = ratio(summary[top][key], summary[bottom][key])
            rows.append({"name": name, "value": value, "target": target, "higher_is_better": higher,
                         "verdict": verdict(value, target, higher)})
    return rows


def report(title: str, summary: dict[str, dict[str, Any]], speed: list[dict[str, Any]],
           rss: list[dict[str, Any]], info: dict[str, Any]) -> str:
    mode_rows = [
        [mode, fmt(s["median_tokens_per_second"], 0),
         " / ".join(fmt(x, 0) for x in s["round_medians"]), str(s["reports_used"]),
         fmt(s["median_peak_rss_mb"], 0), fmt(s["median_wall_s"], 1), str(s["blas"])]
        for mode, s in summary.items()
    ]
    ratio_rows = [[f"tokens/s {r['name']}", fmt(r["value"], 3, "x"), f"≥ {r['target']}x", r["verdict"]]
                  for r in speed]
    ratio_rows += [[f"peak RSS {r['name']}", fmt(r["value"], 3, "x"), f"≤ {r['target']}x", r["verdict"]]
                   for r in rss]
    return "\n\n".join([
        f"## {title}",
        markdown_table(["mode", "tokens/s (median)", "per round", "reports", "peak RSS (MB)", "wall (s)",
                        "BLAS"], mode_rows),
        markdown_table(["comparison", "ratio", "target", ""], ratio_rows),
        machine_line(info),
    ])


def model_for(size: str, args: argparse.Namespace) -> Path:
    if size == "tiny":
        return Path(args.model).resolve()
    source = Path(args.model).resolve()
    expected = model_20m.count_parameters(model_20m.model_config(source))
    print(f"bench: 20M model: {expected:,} parameters ({expected / 1e6:.2f}M)", file=sys.stderr)
    return ensure_model_20m(source, args.timeout)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (default: %(default)s)")
    parser.add_argument("--model-size", nargs="+", choices=["tiny", "20m"], default=["tiny"],
                        help="tiny: --model itself; 20m: a ~20M-parameter model with --model's tokenizer")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="modes to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every mode once")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=4, help="layers to adapt (-1: all)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--steps-per-report", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=2,
                        help="batches of the two validations every run still does (start and end)")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one training process may take")
    parser.add_argument("--smoke", action="store_true", help="the tiny model alone, plain, plain+openblas and "
                        "loraboard once (unless --modes): 3 iterations at batch 2 of 64 tokens (a report each), 1 "
                        "validation batch, figures checked; results to bench_train-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model_size, args.repeats, args.iters, args.batch_size = ["tiny"], 1, 3, 2
        if args.modes == MODES:  # each way of training once, unless --modes says
            args.modes = SMOKE_MODES
        args.steps_per_report, args.val_batches, args.max_seq_length = 1, 1, 64
    return args


def measure(args: argparse.Namespace, modes: list[str], title: str, name: str, info: dict[str, Any]) -> Path:
    """`run_rounds` of the modes, then the report printed (a smoke's figures checked) and the results written to
    bench/results/<name>.json; the path written."""
    with tempfile.TemporaryDirectory(prefix=f"loraboard-{name}-") as scratch:
        results = run_rounds(args, modes, Path(scratch))
    summary = summarize(results)
    speed = comparisons(summary, "median_tokens_per_second", SPEED_RATIOS)
    rss = comparisons(summary, "median_peak_rss_mb", RSS_RATIOS)
    table = report(title, summary, speed, rss, info)
    print(table, flush=True)
    if args.smoke:
        check_figures([(f"| {mode} |", s[key]) for mode, s in summary.items()
                       for key in ("median_tokens_per_second", "median_peak_rss_mb", "median_wall_s")]
                      + [(f"tokens/s {r['name']} |", r["value"]) for r in speed]
                      + [(f"peak RSS {r['name']} |", r["value"]) for r in rss], table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return write_results(name, {"settings": settings, "machine": info, "summary": summary, "speed_ratios": speed,
                                "rss_ratios": rss, "runs": results}, smoke=args.smoke)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:  # the sample's first examples: no process tokenizes the whole sample
        args.data = smoke_data(args.data)
    check_inputs(args.model, args.data)
    info = machine_info()
    for size in dict.fromkeys(args.model_size):
        size_args = argparse.Namespace(**vars(args))
        size_args.model = model_for(size, args)
        modes = [m for m in MODES if m in args.modes]
        print(f"bench: {size} model {size_args.model}, {args.iters} iters x {args.repeats} rounds: "
              f"{', '.join(modes)}", file=sys.stderr, flush=True)
        title = (f"Training throughput: {size} model ({size_args.model.name}), {args.iters} iters, "
                 f"batch {args.batch_size}, {args.repeats} rounds")
        path = measure(size_args, modes, title, "bench_train" if size == "tiny" else f"bench_train-{size}", info)
        print(f"\nwrote {path.relative_to(PROJECT_DIR)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
