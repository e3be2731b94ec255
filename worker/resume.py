"""Optimizer state beside each checkpoint, and continuing a run from one.

mlx-lm's --resume-adapter-file restores weights only; the iteration count, the
learning-rate schedule position (the optimizer's `step`) and Adam's moments
restart. Saving `optimizer.state` next to each adapter file and loading both
makes a continued run pick up exactly where the checkpoint left off.
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
    model: nn.Module, optimizer: optim.Optimizer, adapter_file: Path, optimizer_file: Path
) -> None:
    """Load adapter weights and optimizer state saved by an earlier run at the same iteration."""
    model.load_weights(str(adapter_file), strict=False)
    optimizer.init(model.trainable_parameters())
    saved = mx.load(str(optimizer_file))
    state = tree_unflatten(list(saved.items()))
    merged = dict(optimizer.state)
    merged.update(state)
    optimizer.state = merged
    mx.eval(model.parameters(), optimizer.state)
