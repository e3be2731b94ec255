"""One loaded base model and the checkpoint adapters swapped into it (the playground job, worker/playground.py).

A checkpoint is prepared the way mlx_lm's `load_adapters` prepares `--adapter-path`: LoRA/DoRA layers are made
with mlx_lm's own `linear_to_lora_layers` from the run's adapter_config.json (rank, scale, keys, num_layers,
fine_tune_type may differ between runs), the checkpoint's weights are checked against the model's parameters
and loaded; a full fine-tune's checkpoint holds whole layer weights. The layers made this way are then taken out
again and kept as a list of swaps (where in the model, the adapter's module or array, the base model's own), so
the model goes back to exactly the base model's modules and arrays. Putting a column's adapter in place is a few
attribute assignments; nothing is copied (a LoRA layer wraps the base model's own linear) and the model is never
loaded twice.

MLX is lazy: a step's graph holds the arrays that were in place when it was built, so a column's adapter must be
in place while its step is built (worker/playground.py does that), and swapping afterwards does not touch steps
already built or in flight.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

ADAPTER_LEAVES = {"lora_a", "lora_b", "m"}  # what a LoRA/DoRA checkpoint may hold (as mlx_lm's load_adapters)


class AdapterError(Exception):
    """A checkpoint that cannot be put into the loaded model; the message names the file and says why."""


@dataclass
class Swap:
    """One place in the model: `parent[key]` is `original` for the base model and `adapted` for the adapter."""

    parent: Any  # an nn.Module (a dict) or a list of modules
    key: str | int
    adapted: Any
    original: Any


@dataclass
class Adapter:
    """A checkpoint ready to be put in place: its swaps and what it is."""

    key: tuple[int, int, int]  # (run_id, iteration, mtime_ns of the weights file)
    fine_tune_type: str
    swaps: list[Swap]


def resolve(root: nn.Module, path: str) -> tuple[Any, str | int]:
    """The parent (module or list) of a dotted path and the key of the last part in it."""
    parent: Any = root
    parts = path.split(".")
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    return parent, int(last) if isinstance(parent, list) else last


def put(swaps: list[Swap], adapted: bool) -> None:
    for swap in swaps:
        swap.parent[swap.key] = swap.adapted if adapted else swap.original


def mismatches(weights: dict[str, mx.array], allowed: dict[str, mx.array]) -> list[str]:
    """What mlx_lm's load_adapters refuses: names the model lacks, shapes that differ."""
    problems = []
    for name, value in weights.items():
        if name not in allowed:
            problems.append(f"{name} is not an adapter parameter of this model")
        elif value.shape != allowed[name].shape:
            problems.append(f"{name} has shape {tuple(value.shape)}, the model's is {tuple(allowed[name].shape)}")
    return problems


def module_swaps(model: nn.Module, before: dict[str, nn.Module]) -> list[Swap]:
    """The modules linear_to_lora_layers replaced (compared with `before`), outermost only."""
    after = dict(model.named_modules())
    changed = sorted(path for path, module in before.items() if path and after.get(path) is not module)
    outermost = [path for path in changed if not any(path.startswith(other + ".") for other in changed)]
    swaps = []
    for path in outermost:
        parent, key = resolve(model, path)
        swaps.append(Swap(parent, key, after[path], before[path]))
    return swaps


class AdaptedModel:
    """The loaded base model, the adapters of recent columns (least recently used dropped first), and which
    adapter is in place now (None: the base model's own modules)."""

    def __init__(self, model: nn.Module, cache_size: int = 8) -> None:
        self.model = model
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple[int, int, int], Adapter] = OrderedDict()
        self.current: Adapter | None = None

    def use(self, adapter: Adapter | None) -> None:
        """Put this adapter in place (None: the base model), taking out the one in place."""
        if adapter is self.current:
            return
        if self.current is not None:
            put(self.current.swaps, adapted=False)
        if adapter is not None:
            put(adapter.swaps, adapted=True)
        self.current = adapter

    def adapter(self, key: tuple[int, int, int], weights_file: Path, config_file: Path) -> Adapter:
        """The cached adapter of this checkpoint, or a new one prepared from its files."""
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            return cached
        for stale in [k for k in self.cache if k[:2] == key[:2]]:  # the file changed: drop the old one
            self.drop(stale)
        adapter = self.prepare(key, weights_file, config_file)
        self.cache[key] = adapter
        while len(self.cache) > self.cache_size:
            self.drop(next(iter(self.cache)))
        return adapter

    def drop(self, key: tuple[int, int, int]) -> None:
        adapter = self.cache.pop(key)
        if adapter is self.current:
            self.use(None)

    def prepare(self, key: tuple[int, int, int], weights_file: Path, config_file: Path) -> Adapter:
        """Make the adapter's layers on the base model as load_adapters does, then take them out as swaps."""
        self.use(None)
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{config_file}: cannot be read ({type(exc).__name__}: {exc})") from None
        fine_tune_type = str(config.get("fine_tune_type", "lora"))
        try:
            weights = mx.load(str(weights_file))
        except Exception as exc:
            raise AdapterError(f"{weights_file}: cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(weights, dict):
            raise AdapterError(f"{weights_file}: not a safetensors file of named arrays")
        model = self.model
        if fine_tune_type == "full":
            params = dict(tree_flatten(model.parameters()))
            problems = mismatches(weights, params)
            if problems:
                raise self.mismatch(weights_file, problems)
            swaps = []
            for name, value in weights.items():
                parent, leaf = resolve(model, name)
                swaps.append(Swap(parent, leaf, value, parent[leaf]))
            return Adapter(key, fine_tune_type, swaps)
        before = dict(model.named_modules())
        swaps: list[Swap] = []
        try:
            try:
                linear_to_lora_layers(model, int(config["num_layers"]), config["lora_parameters"],
                                      use_dora=fine_tune_type == "dora")
            except (KeyError, TypeError, ValueError) as exc:
                swaps = module_swaps(model, before)
                raise AdapterError(f"{config_file}: its adapter layers cannot be made on this model "
                                   f"({type(exc).__name__}: {exc})") from None
            swaps = module_swaps(model, before)
            params = dict(tree_flatten(model.parameters()))
            allowed = {name: value for name, value in params.items() if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES}
            problems = mismatches(weights, allowed)
            if problems:
                raise self.mismatch(weights_file, problems)
            model.load_weights(list(weights.items()), strict=False)
            model.eval()  # as mlx_lm's load after load_adapters: no dropout
        finally:
            put(swaps, adapted=False)
        return Adapter(key, fine_tune_type, swaps)

    @staticmethod
    def mismatch(weights_file: Path, problems: list[str]) -> AdapterError:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return AdapterError(f"{weights_file} does not fit the loaded model (an adapter of another base model?): "
                            f"{problems[0]}{more}")
