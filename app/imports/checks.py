"""What an import checks before anything is written: the config's values and every adapter file's tensors.

The tensors must be what mlx-lm saves for the config's fine_tune_type (its tuner/lora.py and tuner/dora.py
layouts): LoRA/DoRA modules hold lora_a [in, r] and lora_b [r, out] (expert-stacked ones [E, r, in] and
[E, out, r]) with r = lora_parameters.rank, DoRA adds the magnitude vector m, a full fine-tune holds the trained
layers' own weights; every tensor sits in the last num_layers layers, and within the model's layers when its
config.json is at hand.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydantic_core import ErrorDetails

from app.catalog.files import ModelInfoError
from app.catalog.files import read_config as read_model_config
from app.catalog.info import locate_model
from app.contract.paths import MODEL_DIRS_SETTING, PathNotAllowed, confine, model_roots
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.imports.adapter_folder import CONFIG_FILE, AdapterFolder, ImportProblem
from app.imports.safetensors_header import HeaderProblem, TensorEntry, read_header_from

ADAPTER_DTYPES = ("F32", "F16", "BF16")  # what mlx trains in
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
LORA_LEAVES = ("lora_a", "lora_b")
TYPE_SENTENCES = {
    "int_type": "must be a whole number", "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number", "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false", "string_type": "must be a string",
    "list_type": "must be a list", "tuple_type": "must be a list", "model_type": "must be an object of options",
    "dict_type": "must be an object of options", "missing": "is missing", "finite_number": "must be a finite number",
}
BOUND_SENTENCES = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "above"),
                   "less_than_equal": ("le", "at most"), "less_than": ("lt", "below"),
                   "too_short": ("min_length", "at least this many items:"),
                   "string_too_short": ("min_length", "at least this many characters:")}


# The config ---------------------------------------------------------------------------------------------


def config_sentence(err: ErrorDetails) -> str:
    """A pydantic error of RunConfig as a sentence naming the key, what it must be and what it was."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "the config"
    ctx = err.get("ctx") or {}
    kind = err["type"]
    got = json.dumps(err.get("input"), default=str)
    got = got if len(got) <= 60 else got[:57] + "..."
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        sentence = f"{key} must be one of {', '.join(choices)}"
    elif kind in TYPE_SENTENCES:
        sentence = f"{key} {TYPE_SENTENCES[kind]}"
    elif kind in BOUND_SENTENCES:
        name, words = BOUND_SENTENCES[kind]
        sentence = f"{key} must be {words} {ctx.get(name)}"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        sentence = message if message.startswith(key.split(".")[-1]) else f"{key}: {message}"
    return sentence if kind == "missing" or "got " in sentence else f"{sentence} (got {got})"


# The tensors --------------------------------------------------------------------------------------------


def _shape(entry: TensorEntry) -> str:
    return "[" + ", ".join(str(d) for d in entry.shape) + "]"


def _layer_problem(tensors: dict[str, TensorEntry], num_layers: int, model_layers: int | None) -> str | None:
    """Tensors outside the last num_layers layers (of the model's, when known)."""
    indices = {name: int(found[1]) for name in tensors if (found := LAYER.search(name))}
    if model_layers is not None:
        first = 0 if num_layers == -1 else max(0, model_layers - num_layers)
        for name, index in indices.items():
            if not first <= index < model_layers:
                return (f"{name} is in layer {index}, but num_layers {num_layers} of the model's {model_layers} "
                        f"layers adapts layers {first} to {model_layers - 1}")
    distinct = sorted(set(indices.values()))
    if num_layers != -1 and len(distinct) > num_layers:
        return (f"tensors of {len(distinct)} layers ({', '.join(map(str, distinct[:8]))}"
                f"{'...' if len(distinct) > 8 else ''}), but adapter_config.json's num_layers is {num_layers}")
    return None


def _pair_problem(module: str, leaves: dict[str, TensorEntry], rank: int, dora: bool) -> str | None:
    """One adapted module's lora_a, lora_b (and DoRA's m) against the rank."""
    a, b, m = leaves.get("lora_a"), leaves.get("lora_b"), leaves.get("m")
    if a is None or b is None:
        have, lack = ("lora_a", "lora_b") if b is None else ("lora_b", "lora_a")
        if a is None and b is None:
            return f"{module}.m is a DoRA magnitude without the module's lora_a and lora_b"
        return f"{module} has {have} but no {lack}"
    if any(d < 1 for d in a.shape + b.shape):
        return f"{module}: lora_a {_shape(a)} and lora_b {_shape(b)} have an empty dimension"
    if len(a.shape) == 2 and len(b.shape) == 2:
        if a.shape[1] != rank or b.shape[0] != rank:
            return (f"{module}: lora_a {_shape(a)} and lora_b {_shape(b)} do not have lora_parameters.rank {rank} "
                    f"as mlx-lm lays them out (lora_a [in, {rank}], lora_b [{rank}, out])")
    elif len(a.shape) == 3 and len(b.shape) == 3:
        if dora:
            return f"{module}: an expert-stacked (3-D) LoRA, which mlx-lm's DoRA does not support"
        if a.shape[1] != rank or b.shape[2] != rank or a.shape[0] != b.shape[0]:
            return (f"{module}: lora_a {_shape(a)} and lora_b {_shape(b)} do not have lora_parameters.rank {rank} "
                    f"as mlx-lm lays out expert-stacked ones (lora_a [experts, {rank}, in], "
                    f"lora_b [experts, out, {rank}])")
    else:
        return f"{module}: lora_a {_shape(a)} and lora_b {_shape(b)} are not both 2-D (or both 3-D for experts)"
    if dora and m is None:
        return f"{module} has no DoRA magnitude {module}.m (adapter_config.json's fine_tune_type is dora)"
    if m is not None and (len(m.shape) != 1 or m.shape[0] not in (b.shape[-1], a.shape[0])):
        return (f"{module}.m has shape {_shape(m)}: DoRA's magnitude is one value per output "
                f"([{b.shape[-1]}], lora_b's last dimension; an embedding's: [{a.shape[0]}])")
    return None


def _key_allowed(module: str, keys: list[str] | None) -> bool:
    """Whether mlx-lm would adapt `module` with lora_parameters.keys (a layer-relative name, or a full one)."""
    if keys is None or module in keys:
        return True
    found = re.search(r"(?:^|\.)layers\.\d+\.(.+)$", module)
    return found is not None and found[1] in keys


def tensor_problem(tensors: dict[str, TensorEntry], config: RunConfig, model_layers: int | None = None) -> str | None:
    """What keeps these tensors from loading as the config's adapter (None: nothing)."""
    if not tensors:
        return "holds no tensors"
    for name, entry in tensors.items():
        if entry.dtype not in ADAPTER_DTYPES:
            return f"tensor {name} is {entry.dtype}: adapter weights are floating point ({', '.join(ADAPTER_DTYPES)})"
    kind = config.fine_tune_type
    if kind == "full":
        for name in tensors:
            if name.rsplit(".", 1)[-1] in LORA_LEAVES:
                return f"{name} is a LoRA tensor, but adapter_config.json's fine_tune_type is full"
        return _layer_problem(tensors, config.num_layers, model_layers)
    allowed = (*LORA_LEAVES, "m") if kind == "dora" else LORA_LEAVES
    modules: dict[str, dict[str, TensorEntry]] = defaultdict(dict)
    for name, entry in tensors.items():
        module, _, leaf = name.rpartition(".")
        if not module or leaf not in allowed:
            also = " (m is DoRA's)" if leaf == "m" else ""
            return (f"{name} is not a {kind} tensor: adapter_config.json's fine_tune_type {kind} saves only "
                    f"{', '.join(allowed)}{also}")
        modules[module][leaf] = entry
    rank, keys = config.lora_parameters.rank, config.lora_parameters.keys
    for module, leaves in modules.items():
        if not _key_allowed(module, keys):
            return f"{module} is not among adapter_config.json's lora_parameters.keys ({', '.join(keys or [])})"
        if problem := _pair_problem(module, leaves, rank, kind == "dora"):
            return problem
    return _layer_problem(tensors, config.num_layers, model_layers)


# The folder ---------------------------------------------------------------------------------------------


def model_layer_count(config: RunConfig, settings: Settings) -> tuple[int, Path] | None:
    """The number of layers of the config's model (loraboard's default when it names none), from its
    config.json, and its folder; None when it is not at hand."""
    try:
        folder, source, _ = locate_model(config.model, settings)
        if source == "local":
            folder = confine(folder, model_roots(settings), "model folder", MODEL_DIRS_SETTING)
        model_config = read_model_config(folder, model_roots(settings))  # a hub snapshot links into blobs/
    except (ModelInfoError, PathNotAllowed, OSError):
        return None
    text = model_config.get("text_config")
    for source_config in (model_config, text if isinstance(text, dict) else {}):
        for name in ("num_hidden_layers", "n_layer", "num_layers"):
            value = source_config.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, folder
    return None


Opener = Callable[[Path], BinaryIO]


def _open(path: Path) -> BinaryIO:
    return path.open("rb")


def check_file(path: Path, config: RunConfig, model_layers: int | None, opener: Opener = _open) -> None:
    """An adapter file whose header and tensors mlx-lm can load for this config; ImportProblem naming it otherwise.
    `opener` opens it (the import's confined open, where it has one)."""
    try:
        with opener(path) as handle:
            tensors = read_header_from(handle)
    except HeaderProblem as exc:
        raise ImportProblem(f"{path}: {exc}") from None
    except OSError as exc:
        raise ImportProblem(f"{path}: {exc.strerror or exc}") from None
    if problem := tensor_problem(tensors, config, model_layers):
        raise ImportProblem(f"{path}: {problem}")


def check_adapters(adapters: AdapterFolder, config: RunConfig, settings: Settings, opener: Opener = _open) -> None:
    """Every adapter file of the folder (numbered checkpoints, then adapters.safetensors) checked, after the
    config's num_layers against the model's layers."""
    model = model_layer_count(config, settings)
    model_layers = model[0] if model else None
    if model is not None and config.num_layers > model[0]:
        raise ImportProblem(f"{adapters.folder / CONFIG_FILE}: num_layers {config.num_layers} is more than the "
                            f"{model[0]} layers of the model {model[1]} (mlx-lm refuses to load that)")
    files = [c.path for c in adapters.checkpoints] + ([adapters.final.path] if adapters.final else [])
    for path in files:
        check_file(path, config, model_layers, opener)


def drop_unused(payload: dict[str, Any], err: ErrorDetails, dropped: dict[str, str]) -> bool:
    """Handle an error that is not the value's fault: an option loraboard does not use is dropped (and listed), a
    list where a tuple is wanted becomes one. False: the error is the value's (refuse the import)."""
    loc = [str(part) for part in err["loc"]]
    parent: Any = payload
    for part in loc[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or len(loc) < 2:
        return False
    if err["type"] == "extra_forbidden":
        parent.pop(loc[-1], None)
        dropped[".".join(loc)] = "refused: not an option loraboard knows here"
        return True
    options = parent.get(loc[-1])
    if err["type"] == "unknown_option" and isinstance(options, dict):
        unknown = [k for k in str((err.get("ctx") or {}).get("unknown", "")).split(", ") if k in options]
        for key in unknown:
            options.pop(key)
            dropped[".".join([*loc, key])] = "refused: not an option loraboard knows here"
        return bool(unknown)
    if err["type"] == "tuple_type" and isinstance(options, list):
        parent[loc[-1]] = tuple(options)
        return True
    return False
