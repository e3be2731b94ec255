"""The `gguf` job (worker/job.py): a model folder written as one GGUF file for llama.cpp, Ollama and LM Studio,
with an Ollama Modelfile beside it.

The file is written with the `gguf` library (llama.cpp's own Python package), the way llama.cpp's
convert_hf_to_gguf.py writes a Llama/Mistral/Mixtral model: architecture "llama", q/k rows permuted for
llama.cpp's rotary layout, 1-D tensors in float32, the tokenizer as llama.cpp tokenizes it (byte-level BPE as
"gpt2" with its merges and pre-tokenizer; SentencePiece-style vocabularies as "llama"), special tokens and the
chat template from the tokenizer files (gguf.vocab.SpecialVocab). Types: f16; q8_0 (gguf.quants, numpy);
q4_k_m: an f16 file quantized by llama.cpp itself (llama-cpp-python's llama_model_quantize).

The output is not trusted: it is read back with gguf's GGUFReader and every tensor is compared with the source
weights (present, the right shape, non-zero where the source is, equal within the type's tolerance).
Everything is written in `<exports>/.<export>.tmp<pid>/`, renamed to `<exports>/<export>/` when whole.
Progress counts tensors written; the detail says which one, then the check.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.contract.kinds import GgufParams
from app.contract.pids import pid_alive
from worker.gguf_modelfile import build_modelfile
from worker.job import JobContext, JobInputError
from worker.model_output import writing

SUPPORTED = ("llama", "mistral", "mixtral")
# Relative error (norm of the difference over the norm of the source) a tensor of this type may show.
TOLERANCE = {"F32": 1e-6, "F16": 2e-3, "Q8_0": 2e-2}
K_QUANT_TOLERANCE = 0.25  # llama.cpp's 4- to 6-bit types
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
EXPERT = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
    "block_sparse_moe.switch_mlp.gate_proj.weight": "ffn_gate_exps.weight",
    "block_sparse_moe.switch_mlp.up_proj.weight": "ffn_up_exps.weight",
    "block_sparse_moe.switch_mlp.down_proj.weight": "ffn_down_exps.weight",
}
EXPERT_NAMES = {"w1": "ffn_gate_exps.weight", "w2": "ffn_down_exps.weight", "w3": "ffn_up_exps.weight"}
SKIPPED = ("rotary_emb.inv_freq",)


@dataclass
class Planned:
    """One GGUF tensor: its name, the safetensors keys it is made of (stacked when several), its shape."""

    name: str
    sources: list[str]
    shape: tuple[int, ...]
    heads: int | None = None  # q/k: permute the rows for this many heads
    qtype: str = "F16"


def safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (names, dtypes, shapes) without reading its data."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows from the Hugging Face rotary layout to llama.cpp's (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def plan_tensors(shapes: dict[str, tuple[int, ...]], config: dict[str, Any], out_type: str) -> list[Planned]:
    """Every source weight with its GGUF name, in a stable order; an unknown weight is a JobInputError."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    planned: dict[str, Planned] = {}
    for key in sorted(shapes):
        if key.endswith(SKIPPED):
            continue
        shape = shapes[key]
        if key in TOP_NAMES:
            planned[TOP_NAMES[key]] = Planned(TOP_NAMES[key], [key], shape)
            continue
        match = LAYER.match(key)
        rest = match.group(2) if match else ""
        expert = EXPERT.match(rest)
        if match and rest in LAYER_NAMES:
            name = f"blk.{match.group(1)}.{LAYER_NAMES[rest]}"
            n_head = heads if rest.startswith("self_attn.q_proj") else \
                kv_heads if rest.startswith("self_attn.k_proj") else None
            planned[name] = Planned(name, [key], shape, n_head)
        elif match and expert:
            name = f"blk.{match.group(1)}.{EXPERT_NAMES[expert.group(2)]}"
            entry = planned.setdefault(name, Planned(name, [], shape))
            entry.sources.append(key)
        else:
            raise JobInputError(f"weight {key} has no GGUF name for a Llama-architecture model (quantized weights, "
                                "biases or extra modules cannot be exported)")
    for entry in planned.values():
        if len(entry.sources) > 1:  # Hugging Face per-expert weights, stacked in expert order
            entry.sources.sort(key=lambda k: int(EXPERT.match(LAYER.match(k).group(2)).group(1)))  # type: ignore[union-attr]
            entry.shape = (len(entry.sources), *entry.shape)
        entry.qtype = tensor_type(entry, out_type)
    return sorted(planned.values(), key=order_key)


def order_key(entry: Planned) -> tuple[int, int, str]:
    if entry.name.startswith("blk."):
        return (1, int(entry.name.split(".")[1]), entry.name)
    return (0 if entry.name == "token_embd.weight" else 2, 0, entry.name)


def tensor_type(entry: Planned, out_type: str) -> str:
    """As convert_hf_to_gguf.py does: 1-D tensors and the expert router in float32, the rest f16 or Q8_0 (a row
    that is not a whole number of 32-value blocks stays f16)."""
    if len(entry.shape) == 1 or entry.name.endswith("ffn_gate_inp.weight"):
        return "F32"
    if out_type == "q8_0" and entry.shape[-1] % 32 == 0:
        return "Q8_0"
    return "F16"


class Weights:
    """The source weights by name, loaded lazily with MLX (any dtype, bfloat16 included), as float32 numpy."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.loaded: dict[Path, dict[str, Any]] = {}

    def array(self, key: str) -> np.ndarray:
        import mlx.core as mx

        path = self.files[key]
        if path not in self.loaded:
            self.loaded[path] = mx.load(str(path))
        return np.array(self.loaded[path][key].astype(mx.float32))

    def source(self, entry: Planned) -> np.ndarray:
        """The tensor as it goes into the file, before conversion: stacked, permuted, float32."""
        arrays = [self.array(key) for key in entry.sources]
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays)
        return permute(data, entry.heads) if entry.heads else data


def encode(data: np.ndarray, qtype: str) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if qtype == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return quantize(np.ascontiguousarray(data, dtype=np.float32), GGMLQuantizationType[qtype])


def add_metadata(writer: Any, config: dict[str, Any], name: str, out_type: str, n_vocab: int) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType, RopeScalingType

    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_rope_freq_base(float(config.get("rope_theta") or 10000.0))
    scaling = config.get("rope_scaling") or {}
    if (scaling.get("type") or scaling.get("rope_type")) == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if config.get("num_local_experts"):
        writer.add_expert_count(int(config["num_local_experts"]))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0 if out_type == "q8_0" else LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(GGML_QUANT_VERSION)


def vocabulary(folder: Path, tokenizer_model: str, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """(tokens, scores, token types) as llama.cpp's converter writes them, padded to the model's vocab size."""
    from gguf import TokenType
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    if tokenizer_model == "gpt2":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        reverse = {i: text for text, i in tok.get_vocab(with_added_tokens=True).items()}
        added = tok.get_added_tokens_decoder()
        for i in range(max(n_vocab, len(reverse))):
            if i not in reverse:
                tokens.append(f"[PAD{i}]".encode())
                types.append(TokenType.UNUSED)
            else:
                tokens.append(reverse[i].encode("utf-8"))
                types.append(TokenType.NORMAL if i not in added else
                             TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
            scores.append(0.0)
        return tokens, scores, types
    vocab: Any = LlamaHfVocab(folder) if (folder / "tokenizer.json").is_file() else SentencePieceVocab(folder)
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)
    return tokens, scores, types


def byte_level_flags(folder: Path) -> tuple[bool, bool]:
    """(add_bos, add_space_prefix) of a byte-level BPE tokenizer.json, as its own encoder behaves: whether encoding
    with special tokens puts a token before the text, and whether its ByteLevel step adds a leading space. Written
    explicitly, since llama.cpp's default for a "gpt2" vocabulary is to add a BOS."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain = tok.encode("a", add_special_tokens=False).ids
    special = tok.encode("a", add_special_tokens=True).ids
    add_bos = len(special) > len(plain) and special[len(special) - len(plain):] == plain
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    add_space_prefix = any(step.get("type") == "ByteLevel" and step.get("add_prefix_space", False) for step in steps)
    return add_bos, add_space_prefix


def write_gguf(ctx: JobContext[GgufParams], folder: Path, path: Path, config: dict[str, Any], plan: list[Planned],
               weights: Weights, out_type: str, name: str) -> int:
    """Write the file tensor by tensor (each converted just before it is written); returns the vocab size."""
    import gguf
    from gguf.quants import quant_shape_to_byte_shape

    tokenizer_model = ctx.params.tokenizer_model or "gpt2"
    tokens, scores, types = vocabulary(folder, tokenizer_model, int(config.get("vocab_size") or 0))
    writer = gguf.GGUFWriter(path, "llama")
    add_metadata(writer, config, name, out_type, len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(ctx.params.tokenizer_pre or "default")
    writer.add_token_list(tokens)
    if tokenizer_model == "llama":
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=tokenizer_model == "gpt2", n_vocab=len(tokens))
    if tokenizer_model == "gpt2":
        add_bos, add_space_prefix = byte_level_flags(folder)
        special.add_special_token.setdefault("bos", add_bos)
        writer.add_add_space_prefix(add_space_prefix)
    special.add_to_gguf(writer, quiet=True)
    for entry in plan:
        if entry.qtype in ("F32", "F16"):
            dtype = np.float32 if entry.qtype == "F32" else np.float16
            writer.add_tensor_info(entry.name, entry.shape, np.dtype(dtype),
                                   int(np.prod(entry.shape)) * np.dtype(dtype).itemsize)
        else:
            qtype = gguf.GGMLQuantizationType[entry.qtype]
            byte_shape = quant_shape_to_byte_shape(entry.shape, qtype)
            writer.add_tensor_info(entry.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for entry in plan:
        ctx.detail = f"writing {entry.name} ({entry.qtype}), {ctx.done + 1} of {len(plan)} tensors"
        writer.write_tensor_data(encode(weights.source(entry), entry.qtype))
        ctx.advance()
        ctx.check_stop()
    writer.close()
    return len(tokens)


def check_file(ctx: JobContext, path: Path, plan: list[Planned], weights: Weights) -> dict[str, Any]:
    """Read the file back and compare every tensor with the source weights; a JobInputError names the first that
    is missing, empty, misshapen or too far from its source."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    found = {t.name: t for t in reader.tensors}
    missing = [entry.name for entry in plan if entry.name not in found]
    if missing:
        raise JobInputError(f"{path.name} lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    worst: dict[str, float] = {}
    for i, entry in enumerate(plan, start=1):
        ctx.detail = f"checking {entry.name} against the source weights, {i} of {len(plan)}"
        tensor = found[entry.name]
        kind = tensor.tensor_type.name
        actual = dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32)
        expected = weights.source(entry)
        if actual.size != expected.size:
            raise JobInputError(f"{entry.name} in {path.name} has {actual.size:,} values, the source "
                                f"{expected.size:,}")
        actual = actual.reshape(expected.shape)
        if np.any(expected) and not np.any(actual):
            raise JobInputError(f"{entry.name} in {path.name} is all zeros: the file was written empty")
        norm = float(np.linalg.norm(expected)) or 1.0
        error = float(np.linalg.norm(actual - expected)) / norm
        if error > TOLERANCE.get(kind, K_QUANT_TOLERANCE):
            raise JobInputError(f"{entry.name} in {path.name} ({kind}) differs from the source weights by "
                                f"{error:.2%} (at most {TOLERANCE.get(kind, K_QUANT_TOLERANCE):.2%} expected)")
        worst[kind] = max(worst.get(kind, 0.0), error)
        ctx.check_stop()
    return {"tensors": len(plan), "max_relative_error": worst}


def quantize_q4_k_m(source: Path, target: Path) -> None:
    """llama.cpp's own quantizer (llama-cpp-python), f16 GGUF in, Q4_K_M out."""
    try:
        import llama_cpp
    except ImportError:
        raise JobInputError("q4_k_m needs llama-cpp-python (pip install 'loraboard[gguf-quant]')") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0 or not target.is_file():
        raise RuntimeError(f"llama.cpp's quantizer failed (code {code}) on {source.name}")


def source_weights(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Path]]:
    shapes: dict[str, tuple[int, ...]] = {}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for key, info in safetensors_header(path).items():
            shapes[key] = tuple(int(n) for n in info["shape"])
            files[key] = path
    if not shapes:
        raise JobInputError(f"{folder} has no .safetensors weights")
    return shapes, files


def remove_stale_temps(dest: Path) -> None:
    """Temporary folders of this export left by a worker that was killed (its pid is gone)."""
    for temp in dest.parent.glob(f".{dest.name}.tmp*"):
        pid = temp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def run(ctx: JobContext[GgufParams]) -> dict[str, Any]:
    params = ctx.params
    folder, dest, out_type = Path(params.model), Path(params.dest), params.type
    started = time.perf_counter()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobInputError(f"{folder} has no config.json (deleted since the request?)") from None
    model_type = str(config.get("model_type"))
    if model_type not in SUPPORTED:
        raise JobInputError(f"model_type {model_type!r} cannot be exported to GGUF; supported: "
                            f"{', '.join(SUPPORTED)}")
    if config.get("quantization") or config.get("quantization_config"):
        raise JobInputError(f"{folder.name} is quantized: fuse it with dequantize (or convert without -q) first")
    if dest.exists():
        raise JobInputError(f"{dest} already exists (made after this job was asked for); choose another name")
    with contextlib.suppress(OSError):
        remove_stale_temps(dest)
    shapes, files = source_weights(folder)
    plan = plan_tensors(shapes, config, "f16" if out_type == "q4_k_m" else out_type)
    weights = Weights(files)
    file_name = params.file
    ctx.set_total(len(plan), "tensors")
    with writing(dest) as temp:
        first = temp / (f".{dest.name}-f16.gguf" if out_type == "q4_k_m" else file_name)
        n_vocab = write_gguf(ctx, folder, first, config, plan, weights, out_type, params.name)
        checked = check_file(ctx, first, plan, weights)
        if out_type == "q4_k_m":
            ctx.detail = "quantizing to Q4_K_M with llama.cpp"
            quantize_q4_k_m(first, temp / file_name)
            first.unlink()
            ctx.check_stop()
            checked = check_file(ctx, temp / file_name, plan, weights)
        ctx.detail = "writing the Modelfile"
        modelfile = build_modelfile(folder, file_name, config.get("max_position_embeddings"))
        (temp / "Modelfile").write_text(modelfile.text(), encoding="utf-8")
    size = (dest / file_name).stat().st_size
    ctx.detail = f"wrote {file_name}"
    return {"name": dest.name, "model": params.name, "type": out_type, "path": str(dest),
            "file": file_name, "gguf_bytes": size, "tensors": len(plan), "vocab_size": n_vocab,
            "template_translated": modelfile.translated, "checked": checked,
            "seconds": round(time.perf_counter() - started, 3)}
