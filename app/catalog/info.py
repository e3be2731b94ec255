"""Models the picker lists, what a model is, and how many parameters a run of it trains (no mlx).

A model folder is what mlx-lm loads: config.json plus model*.safetensors. Only the
safetensors headers are read (app/catalog/files.py), so a 7B model is described in
milliseconds. The trainable count follows mlx-lm's own rules (tuner/utils.py
linear_to_lora_layers, tuner/lora.py and tuner/dora.py shapes, full fine-tuning
unfreezing whole layers) as loraboard's trainer applies them.
Every file is read within the folders models may be read from (app/contract/paths.model_roots) or the model folder
itself: a file linking out of them is refused, and nothing of it is described.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import json_text
from app.catalog.files import (
    FLOATING,
    ModelInfoError,
    Module,
    Tensor,
    converted_origin,
    folder_size,
    quant_params,
    read_config,
    read_weights,
)
from app.contract.confinement import PathNotAllowed, confine_tree, read_confined_bytes, unlinked_folder
from app.contract.paths import hf_hub_cache_dir, model_roots
from app.contract.run_config import looks_like_path, resolve_model
from app.contract.settings import Settings

__all__ = ["ModelInfo", "ModelInfoError", "Trainable", "format_millions", "model_choices", "model_info",
           "trainable_params"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?\Z")
LAYER_TENSOR = re.compile(r"^(?P<prefix>(?:[\w.]*?\.)?(?:layers|h|blocks))\.(?P<index>\d+)\.(?P<rest>.+)$")


# ---------- where models live ----------

def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _choice(name: str, model: str, source: str, folder: Path, roots: list[Path], revision: str | None = None,
            origin: str | None = None) -> dict[str, Any]:
    """One picker entry; its files read within `roots` (a file linking out of them says nothing)."""
    try:
        model_type = json_text.loads(read_confined_bytes(folder / "config.json", roots)).get("model_type", "")
    except (OSError, ValueError, AttributeError):  # PathNotAllowed is a ValueError: a link out says nothing
        model_type = ""
    return {"name": name, "model": model, "source": source, "path": str(folder), "revision": revision,
            "model_type": model_type if isinstance(model_type, str) else "",
            "size_bytes": folder_size(folder, roots), "origin": origin or converted_origin(folder, roots)}


def hub_snapshot(repo_dir: Path) -> tuple[str, Path] | None:
    """(revision, snapshot folder) of a cached hub repo: the one refs/main names, else the newest."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text().strip()
        if (repo_dir / "snapshots" / revision).is_dir():
            return revision, repo_dir / "snapshots" / revision
    snapshots = _visible_dirs(repo_dir / "snapshots")
    if not snapshots:
        return None
    newest = max(snapshots, key=lambda p: p.stat().st_mtime)
    return newest.name, newest


def model_choices(settings: Settings, environ: Mapping[str, str] | None = None,
                  origins: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Local model folders (one level of nesting: org/name) and Hugging Face cache entries the picker offers.

    origins: resolved folder -> where a model loraboard wrote came from ("fused from run 3 @ 40"), from the
    registry (app/models/registry.origins); a folder loraboard converted says it in its ORIGIN_FILE
    (app/catalog/files.converted_origin); the choice's `origin` is None for the others."""
    choices: list[dict[str, Any]] = []
    roots = model_roots(settings, environ)
    root = settings.local_models_dir
    for child in _visible_dirs(root):
        candidates = [child] if (child / "config.json").is_file() else _visible_dirs(child)
        for folder in candidates:
            if (folder / "config.json").is_file():
                resolved = str(folder.resolve())
                choices.append(_choice(folder.relative_to(root).as_posix(), resolved, "local", folder, roots,
                                       origin=(origins or {}).get(resolved)))
    for repo_dir in _visible_dirs(hf_hub_cache_dir(environ)):
        if not repo_dir.name.startswith("models--"):
            continue
        snapshot = hub_snapshot(repo_dir)
        if snapshot is not None and (snapshot[1] / "config.json").is_file():
            hub_id = repo_dir.name.removeprefix("models--").replace("--", "/")
            choices.append(_choice(hub_id, hub_id, "hf-cache", snapshot[1], roots, snapshot[0]))
    return choices


def cached_hub_model(model: str, environ: Mapping[str, str] | None = None) -> tuple[Path, tuple[str, Path] | None]:
    """(the Hugging Face cache, the hub id's snapshot there as hub_snapshot gives it, or None when not cached)."""
    hub = hf_hub_cache_dir(environ)
    return hub, hub_snapshot(hub / ("models--" + model.replace("/", "--")))


def locate_model(model: str, settings: Settings, environ: Mapping[str, str] | None = None,
                 ) -> tuple[Path, str, str | None]:
    """(folder, source, revision) of a model given as the form gives it: a path, a hub id, or empty."""
    model = model.strip() or str(settings.default_model_dir)
    if looks_like_path(model):
        folder = Path(resolve_model(model))
        if not folder.exists():
            raise ModelInfoError(f"model folder {folder} does not exist")
        if not folder.is_dir():
            raise ModelInfoError(f"{folder} is a file; the model must be a folder holding config.json and "
                                 "model*.safetensors")
        return folder, "local", None
    if not HUB_ID.match(model):
        raise ModelInfoError(f"'{model}' is neither an existing folder nor a Hugging Face model id (org/name)")
    hub, snapshot = cached_hub_model(model, environ)
    if snapshot is None:
        if settings.hf_offline:
            raise ModelInfoError(f"{model} is not in the local Hugging Face cache ({hub}); this machine works "
                                 "offline, so download it where there is a network or give a local folder")
        raise ModelInfoError(f"{model} is not in the local Hugging Face cache ({hub}); a run would download it "
                             "first, so its details are not known yet")
    return snapshot[1], "hf-cache", snapshot[0]


# ---------- what the model is ----------

@dataclass
class ModelInfo:
    model: str
    path: Path
    source: str
    revision: str | None
    config: dict[str, Any]
    layers: list[dict[str, Module]]
    top_modules: dict[str, Module]
    weight_files: int
    size_bytes: int

    def _cfg(self, *names: str) -> Any:
        text = self.config.get("text_config") if isinstance(self.config.get("text_config"), dict) else {}
        for source in (self.config, text):
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return None

    @property
    def modules(self) -> list[Module]:
        return [m for layer in self.layers for m in layer.values()] + list(self.top_modules.values())

    @property
    def total_params(self) -> int:
        return sum(m.params for m in self.modules)

    @property
    def stored_params(self) -> int:
        return sum(m.stored_params for m in self.modules)

    @property
    def dtype(self) -> str:
        """The most common floating dtype of the weights (scales of quantized layers count too)."""
        counts: dict[str, int] = {}
        for module in self.modules:
            for tensor in module.tensors.values():
                if tensor.dtype in FLOATING:
                    counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.size
        return max(counts, key=lambda k: counts[k]) if counts else "unknown"

    @property
    def quantization(self) -> dict[str, Any] | None:
        quantized = [m for m in self.modules if m.bits is not None]
        if not quantized:
            declared = self._cfg("quantization_config")
            if isinstance(declared, dict):
                return {"method": declared.get("quant_method", "unknown"), "bits": declared.get("bits"),
                        "group_size": declared.get("group_size"), "quantized_params": 0, "mixed": False}
            return None
        bits = sorted({m.bits for m in quantized if m.bits is not None})
        groups = sorted({m.group_size for m in quantized if m.group_size is not None})
        quant = self._cfg("quantization") or {}
        return {"method": quant.get("mode", "affine"), "bits": bits[0] if len(bits) == 1 else bits,
                "group_size": groups[0] if len(groups) == 1 else groups,
                "quantized_params": sum(m.params for m in quantized), "mixed": len(bits) > 1}

    def default_lora_keys(self) -> list[str]:
        """mlx-lm's default keys: every linear-like module name found in any layer."""
        return sorted({name for layer in self.layers for name, m in layer.items() if m.adaptable})

    def to_json(self) -> dict[str, Any]:
        heads = self._cfg("num_attention_heads", "n_head", "n_heads")
        return {
            "model": self.model, "path": str(self.path), "source": self.source, "revision": self.revision,
            "model_type": self._cfg("model_type"), "architectures": self._cfg("architectures") or [],
            "num_layers": len(self.layers), "hidden_size": self._cfg("hidden_size", "n_embd", "d_model", "dim"),
            "intermediate_size": self._cfg("intermediate_size", "ffn_dim"), "num_attention_heads": heads,
            "num_key_value_heads": self._cfg("num_key_value_heads", "n_kv_heads") or heads,
            "vocab_size": self._cfg("vocab_size"), "total_params": self.total_params,
            "stored_params": self.stored_params, "dtype": self.dtype, "quantization": self.quantization,
            "size_bytes": self.size_bytes, "weight_files": self.weight_files,
            "default_lora_keys": self.default_lora_keys(),
        }


def _group_modules(tensors: dict[str, Tensor], config: dict[str, Any]) -> tuple[list[dict[str, Module]],
                                                                                dict[str, Module]]:
    """Leaf modules per layer (names relative to the layer) and outside the layers (full names)."""
    tied = bool(config.get("tie_word_embeddings", False))
    kept = {n: t for n, t in tensors.items()
            if not n.endswith("rotary_emb.inv_freq") and not (tied and n.startswith("lm_head."))}
    per_prefix: dict[str, int] = {}
    for name in kept:
        if match := LAYER_TENSOR.match(name):
            per_prefix[match["prefix"]] = per_prefix.get(match["prefix"], 0) + 1
    prefix = max(per_prefix, key=lambda p: per_prefix[p]) if per_prefix else None
    by_index: dict[int, dict[str, Module]] = {}
    top: dict[str, Module] = {}
    for name, tensor in kept.items():
        module_name, _, param = name.rpartition(".")
        match = LAYER_TENSOR.match(name)
        if match and match["prefix"] == prefix:
            layer = by_index.setdefault(int(match["index"]), {})
            rel = match["rest"].rpartition(".")[0]
            layer.setdefault(rel, Module(f"{prefix}.{match['index']}.{rel}")).tensors[param] = tensor
        else:
            top.setdefault(module_name, Module(module_name)).tensors[param] = tensor
    layers = [by_index[i] for i in sorted(by_index)]
    quant = config.get("quantization") or config.get("quantization_config") or {}
    modules = [m for layer in layers for m in layer.values()] + list(top.values())
    known_dims = {m.weight.shape[-2] for m in modules if m.weight is not None and len(m.weight.shape) >= 2}
    for source in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        known_dims |= {v for v in source.values() if isinstance(v, int) and not isinstance(v, bool) and v >= 16}
    for module in modules:
        if "scales" in module.tensors and module.weight is not None and isinstance(quant, dict):
            module.bits, module.group_size = quant_params(module, quant, known_dims)
    return layers, top


def model_info(model: str, settings: Settings, environ: Mapping[str, str] | None = None) -> ModelInfo:
    """What a model is: architecture, sizes, parameters, dtype and quantization, from its files alone.

    Its files must lie, links resolved, in the folders models may be read from or in the model folder itself
    (when no link leads to it: a path given over HTTP was confined to those folders before); a file linking out
    is a ModelInfoError naming it (as the worker refuses it before loading)."""
    folder, source, revision = locate_model(model, settings, environ)
    roots = [*model_roots(settings, environ), *unlinked_folder(folder)]
    try:
        confine_tree(folder, roots)
    except PathNotAllowed as exc:
        raise ModelInfoError(str(exc)) from None
    config = read_config(folder, roots)
    tensors, files = read_weights(folder, roots)
    layers, top = _group_modules(tensors, config)
    return ModelInfo(model.strip() or str(folder), folder, source, revision, config, layers, top, len(files),
                     folder_size(folder, roots))


def format_millions(count: int) -> str:
    return f"{count / 1e6:,.3f}M"


# ---------- what a run trains ----------

FINE_TUNE_TYPES = ("lora", "dora", "full")


@dataclass(frozen=True)
class Trainable:
    """The parameters a run trains, counted as mlx-lm counts them."""

    fine_tune_type: str
    num_layers: int  # as asked (-1: all)
    layers_trained: int
    layer_count: int
    rank: int
    keys: list[str]  # lora/dora: the keys applied (mlx-lm's default set when none were given)
    adapted: list[str]  # lora/dora: module names adapted in the trained layers, and full names outside them
    trainable: int
    total: int  # the model's parameters as mlx-lm reports them (quantized weights unpacked, adapters apart)
    total_with_adapters: int  # elements of the trained model's parameter tree (base as stored, plus adapters)
    warnings: list[str]

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def text(self) -> str:
        """As mlx-lm prints it: 0.145% (10.486M / 7,241.732M)."""
        return f"{self.percent:.3f}% ({format_millions(self.trainable)} / {format_millions(self.total)})"

    def to_json(self) -> dict[str, Any]:
        return {"fine_tune_type": self.fine_tune_type, "num_layers": self.num_layers,
                "layers_trained": self.layers_trained, "layer_count": self.layer_count, "rank": self.rank,
                "keys": self.keys, "adapted": self.adapted, "trainable_params": self.trainable,
                "total_params": self.total, "total_params_with_adapters": self.total_with_adapters,
                "percent": self.percent, "text": self.text, "warnings": self.warnings}


def lora_params(module: Module, rank: int, dora: bool) -> int:
    """Parameters LoRALinear / LoRAEmbedding / LoRASwitchLinear (or DoRA's, with its magnitude m) add."""
    assert module.weight is not None
    shape = module.weight.shape
    if len(shape) == 3:
        if dora:
            raise ModelInfoError(f"{module.name} is an expert (switch) layer, which mlx-lm's DoRA does not support "
                                 "yet; use lora", "fine_tune_type")
        experts, out_dims, in_dims = shape
        in_dims = in_dims * 32 // module.bits if module.bits else in_dims
        return experts * rank * (in_dims + out_dims)
    out_dims, in_dims = shape
    if module.bits:  # as tuner/lora.py and tuner/dora.py unpack the input width (DoRA rounds 32 // bits first)
        in_dims = in_dims * (32 // module.bits) if dora else in_dims * 32 // module.bits
    return rank * (in_dims + out_dims) + (out_dims if dora else 0)


def _check_key(key: str, names: list[str], modules: Mapping[str, Module]) -> None:
    """mlx-lm turns any module named by a key into a LoRA layer and fails on what is not linear: say so first."""
    module = modules.get(key)
    if module is not None and not module.adaptable:
        raise ModelInfoError(f"lora key {key} names {module.name}, whose weight has shape "
                             f"{list(module.weight.shape) if module.weight else 'none'}: LoRA adapts linear and "
                             "embedding layers only", "keys")
    inner = sorted({n for n in names if n.startswith(key + ".")})
    if module is None and inner:
        raise ModelInfoError(f"lora key {key} names a block, not a linear layer; name the layers inside it, "
                             f"e.g. {', '.join(inner[:3])}", "keys")


def trainable_params(info: ModelInfo, fine_tune_type: str = "lora", num_layers: int = 16, rank: int = 8,
                     keys: list[str] | None = None) -> Trainable:
    """The exact count loraboard's trainer (and mlx-lm) will train, and the total it is a share of.

    num_layers counts from the top; -1 (and 0, which mlx-lm reads as layers[-0:]) means all,
    and more than the model has means all of them. Without keys, mlx-lm adapts every
    linear-like module found in the layers; keys naming whole modules (lm_head,
    model.embed_tokens) adapt those too, whatever num_layers says.
    """
    if fine_tune_type not in FINE_TUNE_TYPES:
        raise ModelInfoError(f"fine_tune_type must be one of {', '.join(FINE_TUNE_TYPES)}, not {fine_tune_type!r}",
                             "fine_tune_type")
    if num_layers < -1:
        raise ModelInfoError(f"num_layers must be -1 (all layers) or at least 0, not {num_layers}", "num_layers")
    if rank < 1:
        raise ModelInfoError(f"rank must be at least 1, not {rank}", "rank")
    count = len(info.layers)
    used = count if num_layers <= 0 else min(num_layers, count)
    selected = info.layers[count - used:]
    warnings = []
    if num_layers > count:
        warnings.append(f"the model has {count} layers, so num_layers {num_layers} trains all {count}")
    elif num_layers == 0:
        warnings.append("num_layers 0 trains every layer (mlx-lm reads it as all of them); -1 says so plainly")
    if fine_tune_type == "full":
        trainable = sum(m.stored_params for layer in selected for m in layer.values())
        if any(m.bits for layer in selected for m in layer.values()):
            warnings.append("these layers hold quantized weights, which full fine-tuning cannot train; use lora "
                            "or dora, or an unquantized model")
        return Trainable(fine_tune_type, num_layers, used, count, rank, [], [], trainable, info.total_params,
                         info.stored_params, warnings)
    dora = fine_tune_type == "dora"
    key_list = [k.strip() for k in keys or [] if k.strip()] or info.default_lora_keys()
    trainable, adapted = 0, []
    layer_names = sorted({name for layer in info.layers for name in layer})
    full_names = {m.name: m for m in info.modules}
    for key in key_list:
        for layer in selected:
            _check_key(key, list(layer), layer)
            if key in layer:
                trainable += lora_params(layer[key], rank, dora)
                if key not in adapted:
                    adapted.append(key)
        _check_key(key, list(full_names), full_names)
        if key in full_names:  # mlx-lm's second pass: whole-model names, any layer
            trainable += lora_params(full_names[key], rank, dora)
            adapted.append(key)
        elif key not in layer_names:
            warnings.append(f"lora key {key} matches no layer of this model (its layers hold "
                            f"{', '.join(info.default_lora_keys())})")
    if trainable == 0:
        warnings.append("nothing would be trained: no lora key matches a layer of this model")
    return Trainable(fine_tune_type, num_layers, used, count, rank, key_list, adapted, trainable, info.total_params,
                     info.stored_params + trainable, warnings)
