"""Where one LoRA training step's time goes on the GPU benchmark's work, and A/B of step variants, in one process.

    python3 bench/gpu_profile.py --model /tmp/lb/model --data /tmp/lb/data [--num-layers 16 --batch-size 4]

Loads the model once, adds LoRA (rank 8, scale 20, the seven linear keys of the last
--num-layers blocks) and times, on one batch of --batch-size rows of train.jsonl, each
part below: 3 warm-up calls, then --repeats timed ones (each ends with mx.eval), median.

  prefix forward   embedding + the frozen blocks before the first LoRA block (no gradient)
  forward          the whole model and mlx-lm's loss, no gradient
  logits+loss      the final norm, lm_head and cross-entropy alone, on saved hidden states
  step <variant>   mlx-lm's training step (value_and_grad of its default loss, Adam update,
                   compiled as its trainer compiles it), for each variant:
                   float32   mlx-lm's LoRALinear (products in float32)
                   mixed     loraboard's MixedLoRALinear
                   mixed+sg  mixed, plus stop_gradient on the first LoRA block's input
                             (does MLX already skip the frozen prefix's backward?)

The step variants run interleaved (--rounds), so each variant's median is over all rounds.
Prints Markdown and writes $OUT/gpu_profile.json (or bench/results/).

--smoke tries the script on any machine (CPU included): bench_gpu's small smoke model and its 32-token rows
(built once into data/.cache/bench-gpu-smoke), LoRA on the last 2 of its 4 blocks, batch 2, one warm-up call and
2 timed ones of each part, 1 round, results to gpu_profile-smoke.json, figures checked. Every part runs on MLX's
CPU backend, so none is left out; there the times say nothing of a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx_lm.models.base import create_attention_mask
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import default_loss
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load

from bench.common import DEFAULT_MODEL, RESULTS_DIR, check_figures, fmt, gpu_smoke_inputs, markdown_table, median
from bench.gpu_build import LORA_KEYS
from worker.mixed_lora import MixedLoRALinear, use_mixed_lora


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    """`repeats` times of fn() evaluated, in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        mx.eval(fn())
    out = []
    for _ in range(repeats):
        tic = time.perf_counter()
        mx.eval(fn())
        out.append(time.perf_counter() - tic)
    return out


def set_lora_class(model: nn.Module, cls: type[nn.Module]) -> None:
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.__class__ = cls


def stop_gradient_before(block: nn.Module, on: bool) -> None:
    """Make `block` take mx.stop_gradient of its input (a subclass of its own class), or undo it."""
    base = block.__class__.__bases__[0] if getattr(block.__class__, "_stops_gradient", False) else block.__class__
    if not on:
        block.__class__ = base
        return

    def call(self: nn.Module, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        return base.__call__(self, mx.stop_gradient(x), *args, **kwargs)

    block.__class__ = type(f"StopGradient{base.__name__}", (base,), {"__call__": call, "_stops_gradient": True})


def make_step(model: nn.Module, optimizer: optim.Optimizer) -> Callable[[mx.array, mx.array], mx.array]:
    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch: mx.array, lengths: mx.array) -> mx.array:
        (loss, _), grad = loss_value_and_grad(model, batch, lengths)
        optimizer.update(model, grad)
        return loss

    return step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="required, unless --smoke")
    parser.add_argument("--data", type=Path, default=None, help="required, unless --smoke")
    parser.add_argument("--num-layers", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each part's timed ones")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_MODEL,
                        help="--smoke: the small model's tokenizer files (default: the embedded model's)")
    parser.add_argument("--smoke", action="store_true", help="bench_gpu's small smoke model, 2 LoRA blocks, batch 2, "
                        "2 timed calls, 1 round, figures checked (any machine, CPU included)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_layers, args.batch_size, args.repeats, args.warmup, args.rounds = 2, 2, 2, 1, 1
        if args.model is None or args.data is None:
            with tempfile.TemporaryDirectory(prefix="gpu-profile-smoke-") as folder:
                args.model, args.data = gpu_smoke_inputs(args.tokenizer, 32, Path(folder) / "build.log")
    elif args.model is None or args.data is None:
        parser.error("--model and --data are required (or --smoke)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    model, tokenizer = load(str(args.model))
    rows = []
    for line in (args.data / "train.jsonl").read_text().splitlines()[: args.batch_size]:
        ids = tokenizer.encode(json.loads(line)["text"])
        rows.append([*ids, tokenizer.eos_token_id])
    width = min(len(r) for r in rows)
    batch = mx.array([r[:width] for r in rows])
    lengths = mx.array([[1, width - 1]] * len(rows))
    tokens = len(rows) * (width - 1)
    model.freeze()
    linear_to_lora_layers(model, args.num_layers, {"rank": 8, "scale": 20.0, "dropout": 0.0, "keys": LORA_KEYS})
    model.train()
    inner = model.model  # type: ignore[attr-defined]
    first = len(inner.layers) - args.num_layers
    use_mixed_lora(model)

    def prefix() -> mx.array:
        h = inner.embed_tokens(batch[:, :-1])
        mask = create_attention_mask(h, None)
        for layer in inner.layers[:first]:
            h = layer(h, mask, None)
        return h

    def hidden() -> mx.array:
        h = prefix()
        mask = create_attention_mask(h, None)
        for layer in inner.layers[first:]:
            h = layer(h, mask, None)
        return h

    saved = hidden()
    mx.eval(saved)

    def head() -> mx.array:
        logits = model.lm_head(inner.norm(saved))  # type: ignore[attr-defined]
        return nn.losses.cross_entropy(logits, batch[:, 1:]).astype(mx.float32).mean()

    parts: dict[str, list[float]] = {
        "prefix forward": timed(prefix, args.repeats, args.warmup),
        "forward": timed(lambda: default_loss(model, batch, lengths)[0], args.repeats, args.warmup),
        "logits+loss": timed(head, args.repeats, args.warmup),
    }
    variants: dict[str, tuple[type[nn.Module], bool]] = {
        "step float32": (LoRALinear, False), "step mixed": (MixedLoRALinear, False),
        "step mixed+sg": (MixedLoRALinear, True),
    }
    peaks: dict[str, float] = {}
    for round_no in range(args.rounds):
        names = list(variants) if round_no % 2 == 0 else list(variants)[::-1]
        for name in names:
            cls, sg = variants[name]
            set_lora_class(model, cls)
            stop_gradient_before(inner.layers[first], sg)
            optimizer = optim.Adam(learning_rate=1e-5)
            step = make_step(model, optimizer)
            mx.reset_peak_memory()
            parts.setdefault(name, []).extend(timed(lambda step=step: step(batch, lengths), args.repeats,
                                                    args.warmup))
            peaks[name] = max(peaks.get(name, 0.0), mx.get_peak_memory() / 1e9)
            print(f"gpu_profile: round {round_no} {name}: {median(parts[name][-args.repeats:]) * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
    step_ms = median(parts["step mixed"]) or 1.0
    rows_out = [[name, fmt(median(times) * 1e3, 1), fmt(tokens / median(times), 0) if name.startswith("step") else "",
                 fmt(median(times) / step_ms * 100, 0) + "%", fmt(peaks.get(name), 2) if name in peaks else ""]
                for name, times in parts.items()]
    text = "\n\n".join([
        f"## One step, {tokens:,} tokens ({len(rows)} x {width - 1}), LoRA on the last {args.num_layers} blocks",
        markdown_table(["part", "ms (median)", "tokens/s", "of a mixed step", "peak GB"], rows_out),
    ])
    print(text, flush=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_profile{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps({"device": str(mx.default_device()), "tokens": tokens, "parts_s": parts,
                                "peak_gb": peaks}, indent=2))
    print(f"\nwrote {path}", flush=True)
    if args.smoke:
        check_figures(smoke_figures(parts, peaks, tokens), text)
    return 0


def smoke_figures(parts: dict[str, list[float]], peaks: dict[str, float],
                  tokens: int) -> list[tuple[str, float | None]]:
    """What a smoke checks (check_figures): each part's median ms, and each step variant's tokens/s and peak GB."""
    figures: list[tuple[str, float | None]] = []
    for name, times in parts.items():
        seconds = median(times)
        figures.append((f"| {name} |", seconds * 1e3 if seconds else None))
        if name.startswith("step"):
            figures += [(f"| {name} |", tokens / seconds if seconds else None), (f"| {name} |", peaks.get(name))]
    return figures


if __name__ == "__main__":
    sys.exit(main())
