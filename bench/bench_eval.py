"""Evaluation speed: batched task answers, and N checkpoints in one job against N `mlx_lm lora --test` processes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_eval.py [--prompts 16] [--max-tokens 64] [--checkpoints 4]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_eval.py --smoke   # 2 prompts, 4 tokens, 1 checkpoint, 1 round

1. Generation, A/B in this process (OpenBLAS routed first, as in the worker): loraboard's task generation
   (`worker.task_answers.generate_answers`, mlx-lm's BatchGenerator, greedy) on --prompts chat-template prompts of
   the test split at batch --batch-size, against the same prompts one at a time through `mlx_lm.stream_generate`
   (greedy). Tokens/s = generated tokens / wall time (prompt processing included), median of --rounds, the order
   alternating; and how many answers are identical token for token. Both ways are also timed to the first token
   only (prompt processing, the same work either way), so the decoding rate is shown apart.
2. Checkpoints: --checkpoints LoRA checkpoints (the run's adapter layout, weights drawn at random so every one
   differs) measured on --test-batches batches of the test split, A: one real `python -m worker job` evaluate job
   (loads the model once, swaps the adapters; its rows go to a temporary database), B: one
   `python -m mlx_lm lora --test` process per checkpoint. Both get loraboard's OpenBLAS shim (B through
   LD_PRELOAD) and one BLAS thread, so the difference is the work each way repeats. Wall time, median of --rounds.
   The job's settings allow the temporary folder, --model and --data (LORABOARD_ALLOWED_DIRS): the checkpoints lie
   outside the adapters folder.

Prints Markdown, writes bench/results/bench_eval.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE_DIR,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROJECT_DIR,
    base_env,
    check_figures,
    check_inputs,
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

RUN_CONFIG: dict[str, Any] = {"batch_size": 4, "num_layers": 4, "max_seq_length": 512, "seed": 0}


def shim_path() -> Path | None:
    from worker.blas import build_shim

    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        return None
    return build_shim(CACHE_DIR, Path(spec.origin).parent / "lib")


# 1. Generation ----------------------------------------------------------------------------------------------------


def one_at_a_time(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from mlx_lm.generate import stream_generate

    answers = []
    for prompt in prompts:
        tokens: list[int] = []
        for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
            if response.finish_reason == "stop":
                break
            tokens.append(int(response.token))
        answers.append(tokens)
    return answers


def bench_generation(args: argparse.Namespace) -> dict[str, Any]:
    from worker.blas import route_blas

    routing = route_blas(CACHE_DIR, True, 1)
    from app.contract.run_config import RunConfig
    from worker.loading import load_model
    from worker.task_answers import generate_answers, task_examples
    from worker.token_stats import read_split

    config = RunConfig.model_validate({**RUN_CONFIG, "model": str(args.model), "data": str(args.data)})
    model, tokenizer, _ = load_model(config)
    examples = read_split(args.data / "test.jsonl")
    prompts = [e.tokens for e in task_examples(examples, tokenizer, config, args.prompts)]

    def batched() -> list[list[int]]:
        return generate_answers(model, tokenizer, prompts, args.max_tokens, args.batch_size)

    def single() -> list[list[int]]:
        return one_at_a_time(model, tokenizer, prompts, args.max_tokens)

    def batched_first() -> list[list[int]]:  # the prompts and one token: what the full answers cost on top is decoding
        return generate_answers(model, tokenizer, prompts, 1, args.batch_size)

    def single_first() -> list[list[int]]:
        return one_at_a_time(model, tokenizer, prompts, 1)

    batched(), single()  # warm-up: compiled kernels and caches
    timings: dict[str, list[float]] = {"batched": [], "single": [], "batched_first": [], "single_first": []}
    outputs: dict[str, list[list[int]]] = {}
    for round_index in range(args.rounds):
        order = [("batched", batched), ("single", single), ("batched_first", batched_first),
                 ("single_first", single_first)]
        for name, call in order if round_index % 2 == 0 else reversed(order):
            tic = time.perf_counter()
            outputs[name] = call()
            timings[name].append(time.perf_counter() - tic)
    tokens = {name: sum(len(answer) for answer in answers) for name, answers in outputs.items()}
    decode = {name: (tokens[name] - len(prompts)) / (median(timings[name]) - median(timings[f"{name}_first"]))
              for name in ("batched", "single")}
    identical = sum(a == b for a, b in zip(outputs["batched"], outputs["single"], strict=True))
    first_difference = []
    for a, b in zip(outputs["batched"], outputs["single"], strict=True):
        if a != b:
            pairs = enumerate(zip(a, b, strict=False))
            first_difference.append(next((i for i, (x, y) in pairs if x != y), min(len(a), len(b))))
    return {"backend": f"{routing.library}, {routing.threads} thread(s)", "prompts": len(prompts),
            "prompt_tokens": [len(p) for p in prompts],
            "timings_s": timings, "generated_tokens": tokens, "decode_tokens_per_s": decode, "identical": identical,
            "first_difference_at": first_difference}


# 2. Checkpoints -----------------------------------------------------------------------------------------------------


def make_checkpoints(folder: Path, args: argparse.Namespace) -> list[int]:
    """--checkpoints LoRA checkpoints in the run's layout, with adapter_config.json (in a child: mlx imported)."""
    code = (
        "import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "import mlx.core as mx; from mlx.utils import tree_map\n"
        "from app.contract.run_config import RunConfig\n"
        "from worker.loading import attach_adapters, load_model\n"
        "from worker.train import checkpoint_name, save_adapter, write_adapter_config\n"
        "config = RunConfig.model_validate(json.loads(sys.argv[2])); folder = Path(sys.argv[3])\n"
        "model, _, _ = load_model(config); write_adapter_config(folder, config, attach_adapters(model, config))\n"
        "for it in json.loads(sys.argv[4]):\n"
        "    mx.random.seed(it)\n"
        "    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, model.trainable_parameters()))\n"
        "    save_adapter(model, folder / checkpoint_name(it), f'checkpoint {it}')\n"
    )
    iterations = [100 * (i + 1) for i in range(args.checkpoints)]
    config = {**RUN_CONFIG, "model": str(args.model), "data": str(args.data)}
    subprocess.run([sys.executable, "-c", code, str(PROJECT_DIR), json.dumps(config), str(folder),
                    json.dumps(iterations)], check=True, env=base_env(), cwd=PROJECT_DIR)
    return iterations


def job_database(root: Path, folder: Path, iterations: list[int], args: argparse.Namespace) -> tuple[Path, int]:
    """A temporary database holding a run and its queued evaluate job (no base model, loss only)."""
    from sqlmodel import Session

    from app.contract.kinds import EvaluateParams
    from app.db import make_engine
    from app.jobs.jobs import create_job
    from app.tables import Run

    db_path = root / "bench.db"
    engine = make_engine(db_path)
    config = {**RUN_CONFIG, "model": str(args.model), "data": str(args.data)}
    with Session(engine) as session:
        run = Run(name="bench", status="completed", config_json=json.dumps(config))
        session.add(run)
        session.commit()
        session.refresh(run)
        assert run.id is not None
        params = EvaluateParams(run_id=run.id, model=str(args.model), data=str(args.data), split="test",
                                adapter_dir=str(folder), iterations=iterations, include_base=False,
                                batches=args.test_batches, config=config)
        job = create_job(session, "evaluate", params, unit="steps", run_id=run.id)
        assert job.id is not None
        job_id = job.id
    engine.dispose()
    return db_path, job_id


def bench_checkpoints(args: argparse.Namespace, work: Path, shim: Path | None) -> dict[str, Any]:
    folder = work / "run"
    folder.mkdir()
    iterations = make_checkpoints(folder, args)
    env = base_env(OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cli_env = dict(env, LD_PRELOAD=str(shim)) if shim is not None else env
    timings: dict[str, list[float]] = {"job": [], "processes": []}
    losses: dict[str, Any] = {}

    def one_job(round_index: int) -> float:
        root = work / f"job-{round_index}"
        root.mkdir()
        db_path, job_id = job_database(root, folder, iterations, args)
        allowed = os.pathsep.join(str(path) for path in (work, args.model, args.data))
        job_env = dict(env, LORABOARD_DB_PATH=str(db_path), LORABOARD_ADAPTERS_DIR=str(root / "adapters"),
                       LORABOARD_ALLOWED_DIRS=allowed)
        child = run_child([sys.executable, "-m", "worker", "job", "--job-id", str(job_id)], job_env,
                          root / "job.log", 600, warm=args.smoke)
        with sqlite3.connect(db_path) as conn:
            status, result = conn.execute("SELECT status, result_json FROM job WHERE id = ?", (job_id,)).fetchone()
        if status != "completed":
            raise SystemExit(f"bench: the evaluate job ended {status}:\n{log_tail(root / 'job.log')}")
        losses["job"] = json.loads(result)["losses"]
        losses["job_seconds"] = json.loads(result)["seconds"]  # per checkpoint, inside the job
        return child.wall_s

    def processes(round_index: int) -> float:
        total = 0.0
        found = {}
        for iteration in iterations:
            adapter = work / f"cli-{round_index}-{iteration}"
            adapter.mkdir()
            (adapter / "adapters.safetensors").symlink_to(folder / f"{iteration:07d}_adapters.safetensors")
            (adapter / "adapter_config.json").symlink_to(folder / "adapter_config.json")
            log = adapter / "out.log"
            child = run_child([sys.executable, "-m", "mlx_lm", "lora", "--model", str(args.model), "--adapter-path",
                               str(adapter), "--data", str(args.data), "--test", "--test-batches",
                               str(args.test_batches), "--batch-size", str(RUN_CONFIG["batch_size"]),
                               "--max-seq-length", str(RUN_CONFIG["max_seq_length"]), "--seed", "0"],
                              cli_env, log, 600, cwd=work, warm=args.smoke)
            if child.returncode != 0:
                raise SystemExit(f"bench: mlx_lm lora --test failed:\n{log_tail(log)}")
            total += child.wall_s
            printed = [line for line in log.read_text().splitlines() if line.startswith("Test loss")]
            found[str(iteration)] = printed[-1] if printed else None
        losses["processes"] = found
        return total

    for round_index in range(args.rounds):
        order = [("job", one_job), ("processes", processes)]
        for name, call in order if round_index % 2 == 0 else reversed(order):
            timings[name].append(call(round_index))
    return {"checkpoints": iterations, "test_batches": args.test_batches, "timings_s": timings, "losses": losses,
            "cli_blas": "OpenBLAS shim (LD_PRELOAD)" if shim is not None else "reference BLAS"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--test-batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="2 prompts at batch 2, 4 new tokens, 1 checkpoint on 1 "
                        "test batch, 1 round, figures checked; results to bench_eval-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompts, args.batch_size, args.max_tokens, args.checkpoints, args.test_batches, args.rounds = \
            2, 2, 4, 1, 1, 1
    args.model, args.data = args.model.resolve(), args.data.resolve()
    if args.smoke:  # the sample's first examples: no process tokenizes the whole sample
        args.data = smoke_data(args.data)
    check_inputs(args.model, args.data)
    info = machine_info()
    shim = shim_path()
    with tempfile.TemporaryDirectory(prefix="lb-eval-") as tmp:
        checkpoints = bench_checkpoints(args, Path(tmp), shim)  # child processes first: this one imports mlx next
        generation = bench_generation(args)
    gen_t = {name: median(values) for name, values in generation["timings_s"].items()}
    tps = {name: generation["generated_tokens"][name] / gen_t[name] for name in gen_t if gen_t[name]}
    speedup = ratio(tps.get("batched"), tps.get("single"))
    n = generation["prompts"]
    decode = generation["decode_tokens_per_s"]
    ck_t = {name: median(values) for name, values in checkpoints["timings_s"].items()}
    count = len(checkpoints["checkpoints"])
    found = checkpoints["losses"]
    table = "\n\n".join([
        f"### Task answers: {n} prompts, at most {args.max_tokens} new tokens, greedy ({generation['backend']})",
        markdown_table(["way", "wall s (median)", "tokens", "tokens/s"], [
            [f"loraboard, batch {args.batch_size}", fmt(gen_t["batched"], 2),
             str(generation["generated_tokens"]["batched"]), fmt(tps.get("batched"), 0)],
            ["one at a time (stream_generate)", fmt(gen_t["single"], 2),
             str(generation["generated_tokens"]["single"]), fmt(tps.get("single"), 0)],
            ["ratio batched / single", "", "", f"{fmt(speedup, 1, 'x')} ({verdict(speedup, 4.0)} >= 4x)"],
            ["identical answers (token for token)", "", "", f"{generation['identical']} of {n}"],
        ]),
        "Where the time goes:",
        markdown_table(["part", "batched", "one at a time", "ratio"], [
            ["prompts + first token (s)", fmt(gen_t["batched_first"], 2), fmt(gen_t["single_first"], 2),
             fmt(ratio(gen_t["single_first"], gen_t["batched_first"]), 1, "x")],
            ["decoding the rest (tokens/s)", fmt(decode["batched"], 0), fmt(decode["single"], 0),
             fmt(ratio(decode["batched"], decode["single"]), 1, "x")],
        ]),
        f"### {count} checkpoints, {args.test_batches} test batches each",
        markdown_table(["way", "wall s (median)"], [
            ["one evaluate job (load once, swap adapters)", fmt(ck_t["job"], 1)],
            [f"{count} x `mlx_lm lora --test` ({checkpoints['cli_blas']})", fmt(ck_t["processes"], 1)],
            ["ratio processes / job", fmt(ratio(ck_t["processes"], ck_t["job"]), 1, "x")],
        ]),
        f"Losses: job {found.get('job')}; processes {found.get('processes')}; seconds per checkpoint in the "
        f"job {found.get('job_seconds')}",
        machine_line(info),
    ])
    print(table, flush=True)
    if args.smoke:  # decoding rates are differences of two timings: on a few tokens, noise; not checked here
        check_figures([("loraboard, batch", gen_t["batched"]), ("loraboard, batch", tps.get("batched")),
                       ("one at a time (stream_generate)", gen_t["single"]),
                       ("one at a time (stream_generate)", tps.get("single")), ("ratio batched / single", speedup),
                       ("prompts + first token", gen_t["batched_first"]),
                       ("prompts + first token", gen_t["single_first"]), ("one evaluate job", ck_t["job"]),
                       ("mlx_lm lora --test", ck_t["processes"]),
                       ("ratio processes / job", ratio(ck_t["processes"], ck_t["job"]))], table)
    write_results("bench_eval", {"generation": generation, "checkpoints": checkpoints, "machine": info,
                                 "args": {k: str(v) for k, v in vars(args).items()}}, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
