"""Mixed-precision LoRA layers: float32 adapter weights, low-rank products in the activations' dtype.

mlx-lm's LoRALinear multiplies bfloat16 activations by a float32 `lora_a`, which
promotes the whole (tokens x rank) product, and its backward, to float32. The layers
here keep `lora_a`/`lora_b` (and DoRA's `m`) in float32, so the optimizer updates
and state stay float32, but cast them to the input's dtype for the two small matrix
products: `(dropout(x) @ lora_a.astype(x.dtype)) @ lora_b.astype(x.dtype)`. The cast
is differentiable, so gradients reach the float32 weights as float32.

On float32 activations every cast is a no-op and the layers compute exactly what
mlx-lm's do. They are subclasses that add no attributes: `use_mixed_lora` swaps the
class of the adapter modules mlx-lm attached (nothing in mlx-lm is patched), and the
saved adapters have the same keys, dtypes and adapter_config as before, so
`mlx_lm generate/fuse/server` load them with mlx-lm's own classes.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

HALF_DTYPES = ("bfloat16", "float16")


class MixedLoRALinear(LoRALinear):
    """LoRALinear (plain or over a QuantizedLinear) with the low-rank path in the input's dtype."""

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(x.dtype)


class MixedDoRALinear(DoRALinear):
    """DoRALinear with the low-rank path in the input's dtype; the weight norm stays in float32 as mlx-lm's."""

    def __call__(self, x: mx.array) -> mx.array:
        w = self._dequantized_weight()
        y = x @ w.T
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        out = y + (self.scale * z).astype(x.dtype)
        adapted = w + (self.scale * self.lora_b.T) @ self.lora_a.T  # weight-sized, not activation-sized
        denom = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))
        out = (self.m / denom).astype(x.dtype) * out
        if "bias" in self.linear:
            out = out + self.linear.bias
        return out


class MixedLoRASwitchLinear(LoRASwitchLinear):
    """LoRASwitchLinear (mixture-of-experts) with the per-expert low-rank products in the input's dtype."""

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        y = self.linear(x, indices, sorted_indices=sorted_indices)
        z = mx.gather_mm(self.dropout(x), self.lora_a.astype(x.dtype).swapaxes(-1, -2), rhs_indices=indices,
                         sorted_indices=sorted_indices)
        z = mx.gather_mm(z, self.lora_b.astype(x.dtype).swapaxes(-1, -2), rhs_indices=indices,
                         sorted_indices=sorted_indices)
        return y + (self.scale * z).astype(x.dtype)


class MixedLoRAEmbedding(LoRAEmbedding):
    """LoRAEmbedding with the low-rank product in the embedding's (or, as a linear head, the input's) dtype."""

    def __call__(self, x: mx.array) -> mx.array:
        y = self.embedding(x)
        z = self.dropout(self.lora_a[x].astype(y.dtype) @ self.lora_b.astype(y.dtype))
        return y + (self.scale * z).astype(y.dtype)

    def as_linear(self, x: mx.array) -> mx.array:
        y = self.embedding.as_linear(x)
        z = (self.dropout(x) @ self.lora_b.T.astype(x.dtype)) @ self.lora_a.T.astype(x.dtype)
        return y + (self.scale * z).astype(x.dtype)


# mlx-lm's class -> loraboard's mixed one (exact types: a subclass of these is left alone).
MIXED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    LoRALinear: MixedLoRALinear,
    DoRALinear: MixedDoRALinear,
    LoRASwitchLinear: MixedLoRASwitchLinear,
    LoRAEmbedding: MixedLoRAEmbedding,
}


def mixed_applies(lora_precision: str, fine_tune_type: str, train_dtype: str) -> bool:
    """Whether the mixed layers are used: asked for, adapters (not full), and a half-precision model."""
    return lora_precision == "mixed" and fine_tune_type != "full" and train_dtype in HALF_DTYPES


def precision_label(lora_precision: str, fine_tune_type: str, train_dtype: str) -> str:
    """The run page's text for the dtype the run trains in: a half-precision model's adapters add their
    precision; a float32 model (CPU) keeps its text, since the option changes nothing there."""
    if fine_tune_type == "full" or train_dtype not in HALF_DTYPES:
        return train_dtype
    if mixed_applies(lora_precision, fine_tune_type, train_dtype):
        return f"{train_dtype}, mixed-precision LoRA (float32 weights, {train_dtype} products)"
    return f"{train_dtype}, float32 LoRA"


def use_mixed_lora(model: nn.Module) -> int:
    """Swap mlx-lm's adapter layers in `model` for the mixed-precision ones; returns how many were swapped."""
    swapped = 0
    for _, module in model.named_modules():
        mixed: Any = MIXED_CLASSES.get(type(module))
        if mixed is not None:
            module.__class__ = mixed
            swapped += 1
    return swapped
