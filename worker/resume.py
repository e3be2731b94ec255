"""Optimizer state beside each checkpoint, and continuing a run from one.

mlx-lm's --resume-adapter-file restores weights only; the iteration count, the
learning-rate schedule position (the optimizer's `step`) and Adam's moments
restart. Saving `optimizer.state` next to each adapter file and loading both
makes a continued run pick up exactly where the checkpoint left off. A checkpoint saved without
optimizer state (one imported from the mlx_lm CLI) continues with its weights, iteration count and
schedule position; only the optimizer's moments start afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from worker.durable import write_safetensors


def optimizer_name(iteration: int) -> str:
    return f"{iteration:07d}_optimizer.safetensors"


def save_optimizer(optimizer: optim.Optimizer, path: Path, what: str = "optimizer state") -> None:
    """Write the optimizer's whole state (step, learning rate, moments) durably (worker/durable.py)."""
    write_safetensors(dict(tree_flatten(optimizer.state)), path, what)


@dataclass(frozen=True)
class ResumePoint:
    iteration: int
    trained_tokens: int


def restore(
    model: nn.Module, optimizer: optim.Optimizer, adapter_file: Path, optimizer_file: Path | None, iteration: int
) -> None:
    """Load adapter weights and the optimizer state saved by an earlier run at `iteration`; without an optimizer
    file the state starts afresh at that step (the learning-rate schedule continues where it was)."""
    model.load_weights(str(adapter_file), strict=False)
    optimizer.init(model.trainable_parameters())
    merged = dict(optimizer.state)
    if optimizer_file is not None:
        merged.update(tree_unflatten(list(mx.load(str(optimizer_file)).items())))
    else:
        merged["step"] = mx.array(iteration, mx.uint64)
    optimizer.state = merged
    mx.eval(model.parameters(), optimizer.state)
