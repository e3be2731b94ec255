"""GGUF export: wall time, and the files loaded and run in llama.cpp against mlx_lm's greedy tokens.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_gguf.py                  # tiny model and the 20M model
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_gguf.py --models tiny --rounds 1
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_gguf.py --models smollm2 --rounds 1   # the real model
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_gguf.py --smoke     # tiny, f16 only, 1 round, 4 tokens: checks

For each model (the embedded tiny model; the ~20M bench model, built by bench/model_20m.py on first use; with
`--models smollm2`, SmolLM2-135M-Instruct as `loraboard defaults` converts it, the `smollm` pre-tokenizer) and each
type (f16, q8_0, and q4_k_m when llama-cpp-python is installed: `pip install 'loraboard[gguf-quant]'`), the export
job runs `--rounds` times as the dashboard runs it (request checks, a job row in a temporary database,
`python -m worker job` as its own process: write, read back and check every tensor, Modelfile); the median wall
time of the process is reported, and the part of it inside the export function. The last file of each type is
then loaded in llama.cpp (llama_cpp.Llama, CPU) and generates `--tokens` tokens greedily (temperature 0, no repeat
penalty) from the chat prompt's token ids; mlx_lm generates from the same ids (argmax). The table gives the number
of leading tokens that agree, and whether llama.cpp tokenizes the prompt text to the same ids as the model's own
tokenizer. Nothing is asserted; results go to bench/results/bench_gguf.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.contract.kinds import SMOLLM2_FOLDER
from bench.common import (
    DEFAULT_MODEL,
    base_env,
    check_figures,
    ensure_defaults,
    ensure_model_20m,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    run_child,
    write_results,
)

PROMPT = "My order has not arrived yet. What should I do?"


def has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def export(model: Path, out_type: str, exports: Path, warm: bool = False) -> tuple[float, dict[str, Any]]:
    """One export as the dashboard runs it: the request checked (app/models/gguf.prepare), a job row in a temporary
    database, `python -m worker job --job-id N` as its own process (warm: a smoke's, forked from this interpreter:
    bench/warm.py); (the process's wall seconds, the result)."""
    from sqlmodel import Session

    from app.contract.settings import Settings
    from app.db import make_engine
    from app.jobs.jobs import create_job
    from app.models.gguf import KIND, GgufRequest, prepare

    root = Path(tempfile.mkdtemp(prefix="job-", dir=exports))
    settings = Settings(models_dir=model.parent, exports_dir=root / "exports", db_path=root / "bench.db")
    engine = make_engine(settings.database_path)
    with Session(engine) as session:
        params = prepare(session, settings, model.name, GgufRequest(type=out_type))  # type: ignore[arg-type]
        job_id = create_job(session, KIND, params, key=model.name, unit="tensors").id
    engine.dispose()
    env = base_env(LORABOARD_DB_PATH=str(settings.database_path), LORABOARD_MODELS_DIR=str(model.parent),
                   LORABOARD_EXPORTS_DIR=str(settings.local_exports_dir))
    child = run_child([sys.executable, "-m", "worker", "job", "--job-id", str(job_id)], env, root / "job.log", 600,
                      warm=warm)
    with sqlite3.connect(settings.database_path) as conn:
        status, result = conn.execute("SELECT status, result_json FROM job WHERE id = ?", (job_id,)).fetchone()
    if status != "completed":
        raise SystemExit(f"bench: the gguf job ended {status}:\n{log_tail(root / 'job.log')}")
    return child.wall_s, json.loads(result)


def prompt_ids(model: Path) -> tuple[str, list[int]]:
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=False)
    return text, list(tokenizer.encode(text, add_special_tokens=False))


def mlx_greedy(model_path: Path, ids: list[int], n: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(model_path))
    out: list[int] = []
    for token, _ in generate_step(mx.array(ids), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1)):
        out.append(int(token))
    return out


def llama_greedy(path: Path, text: str, ids: list[int], n: int) -> dict[str, Any]:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, seed=0)
    load_s = time.perf_counter() - started
    tokenized = llm.tokenize(text.encode(), add_bos=False, special=True)
    out: list[int] = []
    started = time.perf_counter()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            break
    gen_s = time.perf_counter() - started
    return {"tokens": out, "load_s": load_s, "tokens_per_s": len(out) / gen_s if gen_s else None,
            "tokenized": list(tokenized), "text": llm.detokenize(out).decode(errors="replace")}


def bench_model(key: str) -> Path:
    """The model folder a --models key names: tiny, 20m (built on first use) or smollm2 (`loraboard defaults`)."""
    if key == "tiny":
        return DEFAULT_MODEL
    if key == "20m":
        return ensure_model_20m()
    if key == "smollm2":
        folder = DEFAULT_MODEL.parent / SMOLLM2_FOLDER
        if not (folder / "config.json").is_file():
            raise SystemExit(f"bench: {folder} is missing: run `loraboard defaults` (it converts SmolLM2)")
        return folder
    raise SystemExit(f"bench: --models takes tiny, 20m and smollm2, not {key!r}")


def leading_agreement(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,20m", help="comma-separated: tiny, 20m, smollm2 (SmolLM2-135M-"
                        "Instruct, as `loraboard defaults` converts it)")
    parser.add_argument("--rounds", type=int, default=3, help="exports per model and type (median reported)")
    parser.add_argument("--tokens", type=int, default=24, help="greedy tokens to compare")
    parser.add_argument("--smoke", action="store_true", help="the tiny model's f16 export alone, 1 round, 4 tokens, "
                        "figures checked; results to bench_gguf-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.rounds, args.tokens = "tiny", 1, 4
    ensure_defaults()
    quant = has_llama_cpp()
    types = ["f16"] if args.smoke else ["f16", "q8_0"] + (["q4_k_m"] if quant else [])
    info = machine_info()
    rows: list[list[str]] = []
    raw: list[dict[str, Any]] = []
    exports = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    try:
        for key in args.models.split(","):
            model = bench_model(key)
            # the exports before this process imports MLX, so that a smoke's export jobs can be forked from it
            exported = {out_type: [export(model, out_type, exports, args.smoke) for _ in range(args.rounds)]
                        for out_type in types}
            text, ids = prompt_ids(model)
            reference = mlx_greedy(model, ids, args.tokens)
            for out_type in types:
                times = [wall for wall, _ in exported[out_type]]
                inside = [result["seconds"] for _, result in exported[out_type]]
                result = exported[out_type][-1][1]
                entry: dict[str, Any] = {"model": key, "type": out_type, "export_s": times, "inside_s": inside,
                                         "export_median_s": statistics.median(times),
                                         "gguf_bytes": result["gguf_bytes"], "checked": result["checked"],
                                         "mlx_tokens": reference}
                cells = [key, out_type, f"{statistics.median(times):.2f}", f"{statistics.median(inside):.2f}",
                         f"{result['gguf_bytes'] / 1e6:.1f}"]
                if quant:
                    llama = llama_greedy(Path(result["path"]) / result["file"], text, ids, args.tokens)
                    agree = leading_agreement(reference, llama["tokens"])
                    entry.update(llama=llama, agree=agree, tokenization_equal=llama["tokenized"] == ids)
                    cells += [f"{llama['load_s']:.2f}", f"{agree}/{args.tokens}",
                              "yes" if llama["tokenized"] == ids else "no", f"{llama['tokens_per_s']:.0f}"]
                else:
                    cells += ["-", "-", "-", "-"]
                rows.append(cells)
                raw.append(entry)
    finally:
        shutil.rmtree(exports, ignore_errors=True)
    headers = ["model", "type", "export job s", "of which export", "MB", "llama.cpp load s", "greedy tokens = mlx_lm",
               "same prompt ids", "llama.cpp tok/s"]
    table = f"{markdown_table(headers, rows)}\n{machine_line(info)}"
    if not quant:
        table += ("\nllama-cpp-python is not installed: no q4_k_m, no llama.cpp load "
                  "(pip install 'loraboard[gguf-quant]')")
    print(table, flush=True)
    if args.smoke:
        figures: list[tuple[str, float | None]] = []
        for entry in raw:
            line = f"| {entry['model']} | {entry['type']} |"
            figures += [(line, entry["export_median_s"]), (line, statistics.median(entry["inside_s"])),
                        (line, entry["gguf_bytes"] / 1e6)]
            if "llama" in entry:
                figures += [(line, entry["llama"]["load_s"]), (line, entry["llama"]["tokens_per_s"])]
        check_figures(figures, table)
    path = write_results("bench_gguf", {"machine": info, "rows": raw, "tokens": args.tokens, "prompt": PROMPT},
                         smoke=args.smoke)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
