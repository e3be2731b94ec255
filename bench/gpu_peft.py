"""PyTorch + PEFT LoRA training with the GPU benchmark's settings, recording reports as mlx-lm's trainer does.

    python3 bench/gpu_peft.py --data DIR --tokenizer TOKDIR --out R.json [--iters 35 --batch-size 4 ...]

The model is a transformers MistralForCausalLM of the benchmark's shape (bench/gpu_build.py's
MISTRAL_7B, or SMOKE with --smoke) with random bfloat16 weights made on the GPU (the values do not
change the work; loading the 14.5 GB files would only add time). PEFT adds LoRA with the same
settings as the MLX side: rank 8, lora_alpha 160 (scale alpha/r = 20), dropout 0 on the seven
linear layers of the last --num-layers blocks. PEFT's default `autocast_adapter_dtype` keeps the
adapter weights in float32 over the bf16 base. Adam at 1e-5 over the trainable parameters, eager
mode, PyTorch's default attention (SDPA), no gradient checkpointing. Batches are --batch-size rows
of train.jsonl in a seeded shuffled order; each row is BOS + text + EOS, as mlx-lm tokenizes it.

A report every --steps-per-report steps, as mlx-lm's: tokens/s counts the loss's target tokens
(row length - 1, as mlx-lm's length mask does) over the CUDA-synchronised time of those steps;
peak_memory is torch.cuda.max_memory_allocated in GB (1e9 bytes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_build import LORA_KEYS, MISTRAL_7B, SMOKE


def build_model(config: dict[str, Any], num_layers: int, rank: int, scale: float) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_config = MistralConfig(**settings)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = MistralForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(previous)
    layers = config["num_hidden_layers"]
    lora = LoraConfig(r=rank, lora_alpha=rank * scale, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=[key.split(".")[-1] for key in LORA_KEYS],
                      layers_to_transform=list(range(layers - num_layers, layers)))
    return get_peft_model(model, lora)


def load_rows(data: Path, tokenizer_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = []
    for line in (data / "train.jsonl").read_text().splitlines():
        if line.strip():
            ids = tokenizer.encode(json.loads(line)["text"])
            if not ids or ids[0] != tokenizer.bos_token_id:
                ids = [tokenizer.bos_token_id, *ids]
            rows.append([*ids, tokenizer.eos_token_id])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--steps-per-report", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--smoke", action="store_true", help="the small model of the same architecture")
    args = parser.parse_args(argv)

    import peft
    import torch
    import transformers

    started = time.perf_counter()
    config = SMOKE if args.smoke else MISTRAL_7B
    model = build_model(config, min(args.num_layers, config["num_hidden_layers"]), args.rank, args.scale)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    print(f"gpu_peft: trainable {n_trainable:,} of {n_total:,}; adapter dtypes "
          f"{sorted({str(p.dtype) for p in trainable})}", file=sys.stderr, flush=True)
    optimizer = torch.optim.Adam(trainable, lr=1e-5)
    rows = load_rows(args.data, args.tokenizer)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    loaded = time.perf_counter()

    reports: list[dict[str, float]] = []
    window_tokens, window_loss = 0, 0.0
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for step in range(1, args.iters + 1):
        picks = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batch = torch.tensor([rows[i] for i in picks], device="cuda")
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_tokens += batch.shape[0] * (batch.shape[1] - 1)
        window_loss += float(out.loss.detach())  # a sync per step, as mlx-lm's mx.eval of the step
        if step % args.steps_per_report == 0 or step == args.iters:
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - tic
            steps = step - (reports[-1]["iteration"] if reports else 0)
            reports.append({"iteration": step, "train_loss": window_loss / steps,
                            "tokens_per_second": window_tokens / elapsed,
                            "peak_memory": torch.cuda.max_memory_allocated() / 1e9})
            window_tokens, window_loss = 0, 0.0
            tic = time.perf_counter()
    result = {"train": reports, "trainable": n_trainable, "total": n_total, "load_s": loaded - started,
              "train_s": time.perf_counter() - loaded, "torch": torch.__version__, "peft": peft.__version__,
              "transformers": transformers.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
