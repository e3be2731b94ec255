"""How much memory a LoRA run will need at its peak, before it starts (from the model's files alone).

estimate_peak is pure; app/runs/memory_panel.py adds what this machine has free (psutil) for the new-run form.

    peak = weights + trainable state + activations kept for the backward pass + logits

- weights: the base model as it trains (as stored; float32 when MLX trains on the CPU).
- trainable state: LoRA/DoRA parameters are float32 in mlx-lm: parameter, gradient and two
  Adam moments, 16 bytes each (full fine-tuning: four copies in the training dtype).
- activations: only the trained (top) layers keep theirs. Per token and layer, about
  act_per_token copies of a block's intermediates (10 hidden-wide, 3 kv-wide and 4 MLP-wide
  vectors), plus attention_copies copies of the attention weights (heads x L x L) per sequence;
  the two coefficients differ between a GPU (Metal, CUDA) and the CPU.
  With grad_checkpoint each trained layer's input is kept, plus checkpoint_layers layers' worth
  of recomputed activations alive at the peak (2 on the CPU; on a GPU, MLX's lazy evaluation
  keeps far more of them: 11 of 16 in the H200 figure).
- logits: batch x L x vocab in float32, LOGIT_COPIES copies (cast, log-softmax, gradient, ...).

L is max_seq_length: mlx-lm pads a batch to its longest example (a multiple of 32) and cuts at
max_seq_length, so the estimate is the peak of a batch whose examples reach max_seq_length.

Calibration (bench/bench_memory.py; bench/README.md "Memory estimate before Start"): the
coefficients were fitted to the peaks below; error = (estimate - measured) / measured.

    model (training dtype, device)       batch  tokens  layers  rank  grad ckpt  measured   estimate  error
    Mistral-7B (bf16, H200 CUDA, given)      4   1,159      16     8  off        42.0 GB    41.9 GB   -0.2%
    Mistral-7B (bf16, H200 CUDA, given)      4   1,159      16     8  on         35.4 GB    35.3 GB   -0.2%
    Mistral-7B (bf16, Mac Metal, given)      4   2,048      16     8  off        67.7 GB    67.5 GB   -0.3%
    tiny-mistral (float32, CPU)              4     256       4     8  off        0.108 GB   0.113 GB  +5.3%
    tiny-mistral (float32, CPU)              8     512       4     8  off        0.494 GB   0.534 GB  +8.1%
    bench-20m (float32, CPU)                 4     256       6     8  off        0.487 GB   0.519 GB  +6.6%
    bench-20m (float32, CPU)                 4     512       6     8  off        1.011 GB   1.095 GB  +8.3%
    bench-20m (float32, CPU)                 4     512       6     8  on         0.479 GB   0.492 GB  +2.5%
    bench-20m (float32, CPU)                 2   1,024       3    16  off        0.821 GB   0.769 GB  -6.3%
    bench-20m (float32, CPU)                 1   2,048       6     8  off        1.845 GB   1.970 GB  +6.8%
    bench-20m (float32, CPU)                 8     256       6     8  off        0.885 GB   0.949 GB  +7.2%
    bench-20m (float32, CPU)                 4     512       2     8  off        0.505 GB   0.461 GB  -8.6%

The three GPU figures fix the three GPU coefficients (three figures, three unknowns), so their
error says nothing about other GPU settings; the nine CPU rows share three CPU coefficients and
stay within ±9%. The Mac figure assumes bf16 and batches that reach 2,048 tokens. Treat the estimate as a
guide to whether a run fits, not a budget.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any


@dataclass(frozen=True)
class Coefficients:
    act_per_token: float  # copies of a block's per-token intermediates kept for the backward pass
    attention_copies: float  # copies of the (heads x L x L) attention weights kept per trained layer
    checkpoint_layers: float  # with grad_checkpoint: layers' worth of activations still alive at the peak


# Fitted (bench/bench_memory.py): a GPU runs attention's forward pass fused, the CPU keeps more of it.
GPU = Coefficients(act_per_token=1.38, attention_copies=0.63, checkpoint_layers=11.25)
CPU = Coefficients(act_per_token=1.10, attention_copies=1.45, checkpoint_layers=2.0)
LOGIT_COPIES = 5.0  # float32 copies of batch x L x vocab (cast, log-softmax, gradient, ...)
LORA_STATE_BYTES = 16  # float32 parameter, gradient, Adam's two moments
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    weight_bytes: int  # the base weights as they train
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    act_bytes: int  # bytes per activation element (2: bf16/f16, 4: float32)
    cpu: bool = False  # MLX trains on the CPU (float32, attention unfused)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    trainable_state: int
    activations: int
    logits: int

    @property
    def total_bytes(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.logits

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights, "trainable_state": self.trainable_state, "activations": self.activations,
                "logits": self.logits, "total_bytes": self.total_bytes}


def block_elements(shape: ModelShape) -> int:
    """Per-token intermediates of one transformer block, in elements."""
    kv = shape.num_kv_heads * shape.head_dim
    return 10 * shape.hidden_size + 3 * kv + 4 * shape.intermediate_size


def estimate_peak(shape: ModelShape, trainable_params: int, layers_trained: int, batch_size: int,
                  max_seq_length: int, grad_checkpoint: bool = False, full: bool = False) -> MemoryEstimate:
    """Peak memory of a training step, in bytes, split by what holds it."""
    tokens = batch_size * max_seq_length
    coef = CPU if shape.cpu else GPU
    per_layer_tokens = coef.act_per_token * block_elements(shape) * tokens * shape.act_bytes
    per_layer_attention = coef.attention_copies * batch_size * shape.num_heads * max_seq_length ** 2 * shape.act_bytes
    one_layer = per_layer_tokens + per_layer_attention
    if grad_checkpoint:
        kept = min(coef.checkpoint_layers, layers_trained)
        activations = layers_trained * tokens * shape.hidden_size * shape.act_bytes + kept * one_layer
    else:
        activations = layers_trained * one_layer
    state = trainable_params * (4 * shape.act_bytes if full else LORA_STATE_BYTES)
    logits = LOGIT_COPIES * tokens * shape.vocab_size * 4
    return MemoryEstimate(shape.weight_bytes, int(state), int(activations), int(logits))


def model_shape(info: Any, cpu_training: bool = False) -> ModelShape:
    """The shape of a model from app.catalog.info.ModelInfo (its config and safetensors headers).

    cpu_training: MLX trains in float32 on the CPU, whatever the stored dtype (worker/train.py).
    """
    cfg = info.to_json()
    hidden = int(cfg["hidden_size"] or 0)
    heads = int(cfg["num_attention_heads"] or 1)
    head_dim = int(info.config.get("head_dim") or (hidden // heads if heads else 0))
    weight_bytes = 0
    for module in info.modules:
        for tensor in module.tensors.values():
            size = DTYPE_BYTES.get(tensor.dtype)
            if size is None:  # packed quantized weights: 32-bit words
                weight_bytes += tensor.size * 4
            else:
                weight_bytes += tensor.size * (4 if cpu_training else size)
    stored = DTYPE_BYTES.get(info.dtype, 4)
    return ModelShape(
        weight_bytes=weight_bytes,
        num_layers=int(cfg["num_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"] or 4 * hidden),
        num_heads=heads,
        num_kv_heads=int(cfg["num_key_value_heads"] or heads),
        head_dim=head_dim,
        vocab_size=int(cfg["vocab_size"] or 0),
        act_bytes=4 if cpu_training else stored,
        cpu=cpu_training,
    )


def fits(estimate_bytes: int, available_bytes: int | None) -> str | None:
    """A warning when the estimate is above the memory free now (None: it fits, or nothing is known)."""
    if available_bytes is None or estimate_bytes <= available_bytes:
        return None
    return (f"estimated peak {estimate_bytes / 1e9:,.1f} GB is more than the {available_bytes / 1e9:,.1f} GB "
            "of memory free on this machine now: lower batch_size or max_seq_length, train fewer layers, "
            "or turn on grad_checkpoint")


def training_on_cpu() -> bool:
    """Whether MLX will train on the CPU here (no Metal, no CUDA build installed); read without importing mlx."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return False
    names = {(dist.metadata["Name"] or "").lower().replace("_", "-") for dist in metadata.distributions()}
    return not any(name.startswith("mlx-cuda") for name in names)
