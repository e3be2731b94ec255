"""A ~20M-parameter Mistral-architecture model with random float32 weights, for the training benchmark.

    python bench/model_20m.py --source data/models/tiny-mistral --out data/.cache/bench-20m

The tokenizer files come from `--source` (the tiny model), so the sample data
tokenizes the same way; the weights are mlx-lm's llama implementation freshly
initialized (seed 0). Written as config.json ("model_type": "mistral") and
model.safetensors, which `mlx_lm.load` reads; a `bench-model.json` stamp, written
last, says the folder is complete and which tokenizer it was built from.

Imports mlx: bench_train.py runs it as its own process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 512,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "intermediate_size": 1536,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
STAMP = "bench-model.json"


def tokenizer_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = source / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def is_built(out_dir: Path, source: Path) -> bool:
    """Whether out_dir holds a finished model built from source's tokenizer (no mlx needed)."""
    stamp = out_dir / STAMP
    if not stamp.is_file() or not (out_dir / "model.safetensors").is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except ValueError:
        return False
    return bool(recorded.get("tokenizer") == tokenizer_digest(source))


def model_config(source: Path) -> dict[str, Any]:
    base = json.loads((source / "config.json").read_text())
    config: dict[str, Any] = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        **ARCHITECTURE,
        "vocab_size": base["vocab_size"],
        "hidden_act": "silu",
        "sliding_window": None,
        "torch_dtype": "float32",
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in base:
            config[key] = base[key]
    return config


def count_parameters(config: dict[str, Any]) -> int:
    """Parameters of the model (computed, so the number is known without building it)."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim, kv = config["head_dim"], config["num_key_value_heads"]
    attention = hidden * config["num_attention_heads"] * head_dim * 2 + hidden * kv * head_dim * 2
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    heads = vocab * hidden * (1 if config["tie_word_embeddings"] else 2)
    return per_layer * config["num_hidden_layers"] + heads + hidden


def build(source: Path, out_dir: Path, seed: int = 0) -> int:
    """Write the model into out_dir (atomically: a temp folder, then renamed); returns its parameters."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    config = model_config(source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        mx.random.seed(seed)
        model = Model(ModelArgs.from_dict(config))
        model.set_dtype(mx.float32)
        weights = dict(tree_flatten(model.parameters()))
        mx.eval(weights)
        n_params = sum(v.size for v in weights.values())
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        stamp = {"tokenizer": tokenizer_digest(source), "parameters": n_params, "architecture": ARCHITECTURE}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return n_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="model folder whose tokenizer is copied")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    args = parser.parse_args(argv)
    source, out_dir = args.source.resolve(), args.out.resolve()
    expected = count_parameters(model_config(source))
    if is_built(out_dir, source):
        print(f"bench model: {out_dir} is already built ({expected / 1e6:.2f}M parameters)")
        return 0
    n_params = build(source, out_dir)
    print(f"bench model: built {out_dir}: {n_params:,} parameters ({n_params / 1e6:.2f}M; computed {expected:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
