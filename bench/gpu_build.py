"""Inputs of the GPU benchmark: a Mistral-7B-shaped model with random bf16 weights, and fixed-length text data.

    python3 bench/gpu_build.py --tokenizer TOKDIR --model-out DIR --data-out DIR [--seq-tokens 1159]

The model has Mistral-7B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, vocabulary 32768: 7,248,023,552 parameters) with random
weights (normal, std 0.02; norms 1) in bfloat16, written as one safetensors file
per block (`model-*.safetensors`, ~14.5 GB in all), which `mlx_lm.load` reads. The
weights are drawn with PyTorch on the GPU when it is there (the device image has
it), else with MLX. The tokenizer files are those of TOKDIR (the embedded tiny
model's: its ids, < 1,536, are valid rows of the 32,768-row embedding).

The data are `{"text": ...}` rows of random words from that tokenizer's vocabulary,
each tokenizing (BOS + text + the EOS mlx-lm appends) to exactly --seq-tokens tokens.
Both are skipped when already built with the same settings.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MISTRAL_7B: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "sliding_window": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
# A small model of the same architecture, to try the scripts anywhere (--smoke): 4 blocks and the embedded tokenizer's
# 1,536-token vocabulary (its ids are all below it), ~1M parameters, so that a step takes milliseconds even on a CPU.
SMOKE: dict[str, Any] = dict(MISTRAL_7B, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=32, intermediate_size=256, vocab_size=1536)
LORA_KEYS = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
STD = 0.02


def block_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Weight shapes of one decoder block (PyTorch layout: out x in)."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (inter, h),
        "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }


def count_parameters(config: dict[str, Any]) -> int:
    per_block = sum(_size(s) for s in block_shapes(config).values())
    h, vocab = config["hidden_size"], config["vocab_size"]
    return config["num_hidden_layers"] * per_block + 2 * vocab * h + h


def lora_parameter_count(config: dict[str, Any], rank: int, num_layers: int) -> int:
    """Trainable parameters of rank-`rank` LoRA on the 7 linear layers of the last `num_layers` blocks."""
    shapes = block_shapes(config)
    per_block = sum(rank * (shapes[f"{k}.weight"][0] + shapes[f"{k}.weight"][1]) for k in LORA_KEYS)
    return per_block * num_layers


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class TorchWriter:
    """Draws weights with PyTorch (on the GPU if there is one) and writes safetensors."""

    def __init__(self, seed: int) -> None:
        import torch
        from safetensors.torch import save_file

        self.torch, self.save_file = torch, save_file
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def normal(self, shape: tuple[int, ...]) -> Any:
        t = self.torch.randn(shape, generator=self.gen, device=self.device, dtype=self.torch.float32)
        return t.mul_(STD).to(self.torch.bfloat16).cpu()

    def ones(self, shape: tuple[int, ...]) -> Any:
        return self.torch.ones(shape, dtype=self.torch.bfloat16)

    def save(self, path: Path, tensors: dict[str, Any]) -> None:
        self.save_file(tensors, str(path), metadata={"format": "pt"})


class MlxWriter:
    """The same with MLX, where PyTorch is missing."""

    def __init__(self, seed: int) -> None:
        import mlx.core as mx

        self.mx = mx
        self.key = mx.random.key(seed)

    def normal(self, shape: tuple[int, ...]) -> Any:
        self.key, sub = self.mx.random.split(self.key)
        t = (self.mx.random.normal(shape, key=sub) * STD).astype(self.mx.bfloat16)
        self.mx.eval(t)
        return t

    def ones(self, shape: tuple[int, ...]) -> Any:
        return self.mx.ones(shape, dtype=self.mx.bfloat16)

    def save(self, path: Path, tensors: dict[str, Any]) -> None:
        self.mx.save_safetensors(str(path), tensors, metadata={"format": "pt"})


def _writer(seed: int) -> TorchWriter | MlxWriter:
    try:
        return TorchWriter(seed)
    except ImportError:
        return MlxWriter(seed)


def model_stamp(config: dict[str, Any], seed: int, tokenizer: Path) -> dict[str, Any]:
    tok = {name: (tokenizer / name).read_text() for name in TOKENIZER_FILES if (tokenizer / name).exists()}
    return {"config": config, "seed": seed, "std": STD, "tokenizer": tok}


def build_model(out: Path, tokenizer: Path, seed: int = 0, config: dict[str, Any] | None = None) -> bool:
    """Write the model unless it is already there; True when it was (re)built."""
    config = dict(config or MISTRAL_7B)
    stamp = model_stamp(config, seed, tokenizer)
    marker = out / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return False
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tic = time.perf_counter()
    writer = _writer(seed)
    layers = config["num_hidden_layers"]
    shards = layers + 1
    h, vocab = config["hidden_size"], config["vocab_size"]
    for i in range(layers):
        tensors = {
            f"model.layers.{i}.{name}": writer.ones(shape) if name.endswith("norm.weight") else writer.normal(shape)
            for name, shape in block_shapes(config).items()
        }
        writer.save(out / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", tensors)
        del tensors
    writer.save(out / f"model-{shards:05d}-of-{shards:05d}.safetensors", {
        "model.embed_tokens.weight": writer.normal((vocab, h)),
        "model.norm.weight": writer.ones((h,)),
        "lm_head.weight": writer.normal((vocab, h)),
    })
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, out / name)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    marker.write_text(json.dumps(stamp))
    size = sum(p.stat().st_size for p in out.glob("model-*.safetensors"))
    print(f"gpu_build: model {out}: {count_parameters(config):,} parameters, {size / 1e9:.2f} GB, "
          f"{type(writer).__name__}, {time.perf_counter() - tic:.1f} s", file=sys.stderr, flush=True)
    return True


def _word_pieces(tokenizer: Any) -> list[str]:
    """Whole words of the vocabulary: byte-level tokens 'Ġword' of letters only, as ' word'."""
    words = []
    for piece in tokenizer.get_vocab():
        if piece.startswith("Ġ") and piece[1:].isalpha() and piece[1:].isascii():
            words.append(" " + piece[1:])
    return sorted(words)


def _exact_text(tokenizer: Any, words: list[str], rng: random.Random, target: int) -> str:
    """Random words whose encoding (BOS included) plus one EOS is exactly `target` tokens."""
    chosen: list[str] = []
    while True:
        length = len(tokenizer.encode("".join(chosen))) + 1  # + the EOS mlx-lm appends
        if length == target:
            return "".join(chosen)
        if length < target:
            chosen.extend(rng.choice(words) for _ in range(max(1, (target - length) // 2)))
        else:
            chosen.pop()


def build_data(out: Path, tokenizer_dir: Path, seq_tokens: int, train_rows: int = 64, valid_rows: int = 8,
               seed: int = 0) -> bool:
    """Write train.jsonl and valid.jsonl unless already there; True when (re)built."""
    stamp = {"seq_tokens": seq_tokens, "train": train_rows, "valid": valid_rows, "seed": seed,
             "tokenizer": (tokenizer_dir / "tokenizer.json").read_text()}
    marker = out / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return False
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    words = _word_pieces(tokenizer)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("valid", valid_rows)):
        lines = []
        for _ in range(rows):
            text = _exact_text(tokenizer, words, rng, seq_tokens)
            ids = tokenizer.encode(text)
            if ids[-1] != tokenizer.eos_token_id:
                ids.append(tokenizer.eos_token_id)
            assert len(ids) == seq_tokens, len(ids)
            lines.append(json.dumps({"text": text}))
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(stamp))
    print(f"gpu_build: data {out}: {train_rows} train + {valid_rows} valid rows of {seq_tokens} tokens "
          f"({len(words)} distinct words)", file=sys.stderr, flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (+ config)")
    parser.add_argument("--model-out", type=Path, help="model folder to build")
    parser.add_argument("--data-out", type=Path, help="data folder to build")
    parser.add_argument("--seq-tokens", type=int, default=1159)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a small model of the same architecture instead")
    args = parser.parse_args(argv)
    if args.data_out:
        build_data(args.data_out, args.tokenizer, args.seq_tokens, seed=args.seed)
    if args.model_out:
        build_model(args.model_out, args.tokenizer, seed=args.seed, config=SMOKE if args.smoke else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
