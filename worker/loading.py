"""Loading a run's model and data, and fitting its adapters, as mlx_lm's trainer does (training and evaluation
share these). Imports mlx: only in a worker process, after worker.blas.route_blas.

mlx-lm and transformers open the model's and the data's files by path, so just before each is handed over its
files are confined (app/contract/paths.confine_model_files, confine_data_files): a file linking out of the folders
loraboard reads fails the run with a sentence naming it, before anything is read. A link swapped in after that
check and before their own open is still followed (the window app/contract/confinement.py describes).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.datasets import CacheDataset, load_dataset
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import get_total_parameters, load

from app.contract.paths import confine_data_files, confine_model_files
from app.contract.run_config import FEATURE_KEYS, RunConfig
from app.contract.settings import Settings


def floating_dtype(model: nn.Module) -> str:
    """The dtype of the model's floating-point weights (the most common one)."""
    counts: dict[str, int] = {}
    for _, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            name = str(value.dtype).removeprefix("mlx.core.")
            counts[name] = counts.get(name, 0) + value.size
    return max(counts, key=lambda name: counts[name]) if counts else "unknown"


def load_model(config: RunConfig, settings: Settings | None = None) -> tuple[nn.Module, Any, str]:
    """The model, its tokenizer, and the dtype it trains in (said the way the run page shows it). `settings`
    (default: the worker's environment) say which folders its files may lie in."""
    confine_model_files(config.model, settings or Settings())
    trust = config.trust_remote_code
    model, tokenizer = load(config.model, tokenizer_config={"trust_remote_code": trust}, trust_remote_code=trust)
    stored = floating_dtype(model)
    if mx.default_device() == mx.cpu and stored != "float32":  # bf16/f16 skip BLAS on CPU: train in float32
        model.set_dtype(mx.float32, lambda dtype: mx.issubdtype(dtype, mx.floating))
        return model, tokenizer, f"float32 (weights stored as {stored})"
    return model, tokenizer, stored


@dataclass(frozen=True)
class Datasets:
    train: CacheDataset
    valid: CacheDataset | None
    test: CacheDataset | None


def load_data(config: RunConfig, tokenizer: Any, settings: Settings | None = None) -> Datasets:
    """The run's splits as mlx_lm reads them (its feature keys, prompt masking; test.jsonl only for `test`);
    `settings` (default: the worker's environment) say which folders the split files may lie in."""
    confine_data_files(config.data, settings or Settings())
    features = {key: getattr(config, key) for key in FEATURE_KEYS if getattr(config, key) is not None}
    args = SimpleNamespace(data=config.data, train=True, test=config.test, mask_prompt=config.mask_prompt, **features)
    train_set, valid_set, test_set = load_dataset(args, tokenizer)
    return Datasets(
        CacheDataset(train_set),
        CacheDataset(valid_set) if len(valid_set) else None,
        CacheDataset(test_set) if config.test and len(test_set) else None,
    )


def attach_adapters(model: nn.Module, config: RunConfig) -> int:
    """Freeze the base and add LoRA/DoRA layers (or unfreeze layers for full); returns layers used."""
    layer_count = len(model.layers)  # type: ignore[attr-defined]
    num_layers = layer_count if config.num_layers == -1 else min(config.num_layers, layer_count)
    model.freeze()
    if config.fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:  # type: ignore[attr-defined]
            layer.unfreeze()
    else:
        params = config.lora_parameters.model_dump(exclude_none=True)
        linear_to_lora_layers(model, num_layers, params, use_dora=config.fine_tune_type == "dora")
    return num_layers


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Trainable and total parameters as mlx-lm prints them: the total counts the base model's weights
    (quantized ones unpacked), not the adapters."""
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return trainable, int(get_total_parameters(model))
