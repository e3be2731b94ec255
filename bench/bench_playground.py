"""The playground's overhead: time to the first token and tokens/s of a generation answered by the playground worker,
against `mlx_lm.generate.stream_generate` in a plain process, same model, prompt and max_tokens, greedy.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_playground.py [--rounds 7] [--max-tokens 64] [--models tiny 20m]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_playground.py --smoke    # tiny, 1 round, 8 tokens: checks

A: one real `python -m worker job` of kind playground on a temporary database. The bench queues one single-column
   generation (the base model) at a time and waits for it; the figures are the worker's own, from its
   GenerationColumn row: first_token_s (the column's start to its first token) and tokens_per_second (the tokens
   after the first over the time after the first). The first generation loads the model and is not counted.
B: one plain child process that loads the model with mlx_lm.utils.load and, per round, runs `stream_generate` on
   the same prompt tokens (the chat template, as the worker and `mlx_lm generate` make them); its figures are
   measured the same way: the call to the first response, and the responses after the first over their time.
   It routes OpenBLAS the way every loraboard worker does (worker/blas.py), so the difference is the playground's
   own work: the database, the token rows, the adapter slot, the detokenizer.
The rounds alternate A and B (the other one waits idle), medians of --rounds. Also shown: A's wall time from
queueing the row to seeing it completed (the worker's polling and commits included). Both sides must give the
same text. Overhead = B/A - 1 for tokens/s and A/B - 1 for the first token; the target is at most 5%.

The 20M model is built on first use (bench/model_20m.py). Prints Markdown, writes
bench/results/bench_playground.json.
"""

from __future__ import annotations

import argparse
import json
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
    DEFAULT_MODEL,
    PROJECT_DIR,
    base_env,
    check_figures,
    ensure_defaults,
    ensure_model_20m,
    fmt,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    median,
    ratio,
    run_child,
    verdict,
    write_results,
)
from bench.warm import Forked, forkable, popen_forked, warm_up

PROMPT = "I want to cancel my subscription and get my money back, and also change my address and my phone number."
TARGET_OVERHEAD = 0.05
MODELS = {"tiny": DEFAULT_MODEL, "20m": CACHE_DIR / "bench-20m"}

# The plain side: reads one line per round, answers one JSON line. OpenBLAS is routed as in the workers.
PLAIN = r"""
import json, sys, time
from pathlib import Path
from app.contract.settings import Settings
from worker.blas import route_blas
settings = Settings()
route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)
from mlx_lm.generate import stream_generate
from mlx_lm.utils import load
model, tokenizer = load(sys.argv[1])
max_tokens = int(sys.argv[2])
messages = [{"role": "user", "content": sys.argv[3]}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
prompt = tokenizer.encode(text, add_special_tokens=False)
print("ready", flush=True)
for _line in sys.stdin:
    times, out = [], []
    start = time.perf_counter()
    for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        times.append(time.perf_counter())
        out.append(response.text)
    tokens = response.generation_tokens - (1 if response.finish_reason == "stop" else 0)
    first = times[0] - start
    speed = (tokens - 1) / (times[tokens - 1] - times[0]) if tokens > 1 else None
    print(json.dumps({"first_token_s": first, "tokens_per_second": speed, "tokens": tokens,
                      "text": "".join(out)}), flush=True)
"""


def queue_generation(db: Path, model: str, max_tokens: int) -> int:
    request = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.0,
               "top_p": 1.0, "seed": None}
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            cursor = conn.execute("INSERT INTO generation (model, request_json, status, created_at) VALUES"
                                  " (?, ?, 'queued', datetime('now'))", (model, json.dumps(request)))
            generation_id = int(cursor.lastrowid or 0)
            conn.execute("INSERT INTO generationcolumn (generation_id, column_index, text, tokens, prompt_tokens,"
                         " done) VALUES (?, 0, '', 0, 0, 0)", (generation_id,))
        return generation_id
    finally:
        conn.close()


def playground_round(db: Path, model: str, max_tokens: int, timeout_s: float = 600) -> dict[str, Any]:
    started = time.perf_counter()
    generation_id = queue_generation(db, model, max_tokens)
    conn = sqlite3.connect(db, timeout=30)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            status, error = conn.execute("SELECT status, error FROM generation WHERE id = ?",
                                         (generation_id,)).fetchone()
            if status not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: generation {generation_id} still {status} after {timeout_s} s")
            time.sleep(0.01)  # light polling: the bench must not take the worker's CPU
        wall = time.perf_counter() - started
        if status != "completed":
            raise SystemExit(f"bench: generation {generation_id} {status}: {error}")
        first, speed, tokens, text = conn.execute(
            "SELECT first_token_s, tokens_per_second, tokens, text FROM generationcolumn WHERE generation_id = ?",
            (generation_id,)).fetchone()
    finally:
        conn.close()
    return {"first_token_s": first, "tokens_per_second": speed, "tokens": tokens, "text": text, "wall_s": wall}


def start_playground(root: Path, model: Path, warm: bool) -> tuple[Path, subprocess.Popen[bytes] | Forked]:
    """The playground worker on a temporary database; its settings allow `model`, wherever it lies.
    warm: a smoke's, its processes forked from this interpreter where they can be (bench/warm.py)."""
    env = base_env(LORABOARD_DB_PATH=str(root / "loraboard.db"), LORABOARD_ADAPTERS_DIR=str(root / "adapters"),
                   LORABOARD_ALLOWED_MODEL_DIRS=str(model))
    create = run_child([sys.executable, "-c", "from app.db import make_engine; from app.contract.settings import "
                        "Settings; make_engine(Settings().database_path)"], env, root / "create.log", 300, warm=warm)
    if create.returncode != 0:
        raise SystemExit(f"bench: creating the playground's database failed:\n{log_tail(root / 'create.log')}")
    db = root / "loraboard.db"
    conn = sqlite3.connect(db)
    with conn:
        job_id = conn.execute("INSERT INTO job (kind, key, params_json, status, done, total, unit,"
                              " allow_while_training, created_at) VALUES ('playground', '', ?, 'queued', 0, 0, '', 0,"
                              " datetime('now'))", (json.dumps({"idle_s": 3600}),)).lastrowid
    conn.close()
    cmd = [sys.executable, "-m", "worker", "job", "--job-id", str(job_id)]
    with (root / "worker.log").open("ab") as log:
        if warm and forkable(cmd, env):
            warm_up()
            return db, popen_forked(cmd, env, PROJECT_DIR, log.fileno())
        return db, subprocess.Popen(cmd, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_plain(model: Path, max_tokens: int, warm: bool) -> subprocess.Popen[str] | Forked:
    """The plain stream_generate process (PLAIN), its standard input and output text pipes; a smoke's forked
    from this interpreter where it can be (bench/warm.py)."""
    cmd = [sys.executable, "-c", PLAIN, str(model), str(max_tokens), PROMPT]
    if warm and forkable(cmd, base_env()):
        warm_up()
        return popen_forked(cmd, base_env(), PROJECT_DIR)
    return subprocess.Popen(cmd, cwd=PROJECT_DIR, env=base_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def bench_model(name: str, model: Path, rounds: int, max_tokens: int, warm: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-playground-") as tmp:
        db, worker = start_playground(Path(tmp), model, warm)
        plain = start_plain(model, max_tokens, warm)
        assert plain.stdin is not None and plain.stdout is not None
        try:
            if plain.stdout.readline().strip() != "ready":
                raise SystemExit("bench: the plain stream_generate process did not start")

            def plain_round() -> dict[str, Any]:
                assert plain.stdin is not None and plain.stdout is not None
                plain.stdin.write("go\n")
                plain.stdin.flush()
                return dict(json.loads(plain.stdout.readline()))

            playground_round(db, str(model), max_tokens)  # loads the model: not counted
            plain_round()  # warm-up, as the playground's first generation
            a: list[dict[str, Any]] = []
            b: list[dict[str, Any]] = []
            for index in range(rounds):
                order = (playground_round, plain_round) if index % 2 == 0 else (plain_round, playground_round)
                for step in order:
                    if step is plain_round:
                        b.append(plain_round())
                    else:
                        a.append(playground_round(db, str(model), max_tokens))
        finally:
            plain.stdin.close()
            plain.wait(timeout=60)
            conn = sqlite3.connect(db)
            with conn:
                conn.execute("UPDATE job SET status = 'stopping' WHERE kind = 'playground'")
            conn.close()
            worker.wait(timeout=60)
    same_text = all(x["text"] == a[0]["text"] for x in a) and all(x["text"] == a[0]["text"] for x in b)
    return {
        "model": name, "path": str(model), "rounds": rounds, "max_tokens": max_tokens, "same_text": same_text,
        "tokens": a[0]["tokens"],
        "playground": {key: median([x[key] for x in a]) for key in ("first_token_s", "tokens_per_second", "wall_s")},
        "stream_generate": {key: median([x[key] for x in b]) for key in ("first_token_s", "tokens_per_second")},
        # the best round each way: what each side does when nothing else takes the cores
        "best": {"playground": best(a), "stream_generate": best(b)},
        "samples": {"playground": [{k: v for k, v in x.items() if k != "text"} for x in a],
                    "stream_generate": [{k: v for k, v in x.items() if k != "text"} for x in b]},
    }


def best(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {"first_token_s": min(x["first_token_s"] for x in samples),
            "tokens_per_second": max(x["tokens_per_second"] or 0.0 for x in samples)}


def overheads(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    """(first token, tokens/s) overheads of the playground (a) over stream_generate (b)."""
    first = ratio(a["first_token_s"], b["first_token_s"])
    speed = ratio(b["tokens_per_second"], a["tokens_per_second"])
    return (first - 1 if first is not None else None), (speed - 1 if speed is not None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="measured generations each way (median of these)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["tiny", "20m"], choices=sorted(MODELS))
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 1 round each way, 8 tokens, figures "
                        "checked; results to bench_playground-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.rounds, args.max_tokens = ["tiny"], 1, 8
    info = machine_info()
    results = []
    for name in args.models:
        model = ensure_model_20m() if name == "20m" else MODELS[name]
        ensure_defaults()
        results.append(bench_model(name, model, args.rounds, args.max_tokens, warm=args.smoke))
    rows = []
    for result in results:
        for label, a, b in (("median", result["playground"], result["stream_generate"]),
                            ("best", result["best"]["playground"], result["best"]["stream_generate"])):
            first_over, speed_over = overheads(a, b)
            worst = max((x for x in (first_over, speed_over) if x is not None), default=None)
            rows.append([result["model"], label, str(result["tokens"]), fmt(a["first_token_s"] * 1000, 1),
                         fmt(b["first_token_s"] * 1000, 1),
                         fmt(None if first_over is None else first_over * 100, 1, "%"),
                         fmt(a["tokens_per_second"], 1), fmt(b["tokens_per_second"], 1),
                         fmt(None if speed_over is None else speed_over * 100, 1, "%"),
                         fmt(a["wall_s"] * 1000, 1) if "wall_s" in a else "",
                         "yes" if result["same_text"] else "NO",
                         verdict(worst, TARGET_OVERHEAD, higher_is_better=False)])
            result.setdefault("overhead", {})[label] = {"first_token": first_over, "tokens_per_second": speed_over}
    table = "\n".join([
        markdown_table(["model", "of rounds", "tokens", "first token ms (playground)",
                        "first token ms (stream_generate)", "overhead", "tokens/s (playground)",
                        "tokens/s (stream_generate)", "overhead", "queued→completed ms", "same text", "≤5%"], rows),
        f"\n{args.rounds} rounds each way, A/B alternating, max_tokens {args.max_tokens}, greedy; median and best"
        " round (lowest first token, highest tokens/s) of each side.",
        machine_line(info),
    ])
    print(table, flush=True)
    if args.smoke:
        figures: list[tuple[str, float | None]] = []
        for result in results:
            line = f"| {result['model']} | median |"
            a, b = result["playground"], result["stream_generate"]
            figures += [(line, a["first_token_s"] * 1000), (line, b["first_token_s"] * 1000),
                        (line, a["tokens_per_second"]), (line, b["tokens_per_second"]), (line, a["wall_s"] * 1000)]
        check_figures(figures, table)
    path = write_results("bench_playground", {"machine": info, "results": results, "target": TARGET_OVERHEAD},
                         smoke=args.smoke)
    print(f"written {path.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
