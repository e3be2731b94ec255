"""QLoRA in the model panel: the estimated training peak of a model's 4-bit copy beside its own (no mlx).

LoRA trains the same adapter on a quantized base (mlx-lm unpacks the input width), so only the base weights
change: each quantizable layer (linear and embedding weights whose input width the group size divides) is held as
bits/8 bytes a weight plus a scale and a bias per group; the rest stays as it is.
"""

from __future__ import annotations

from typing import Any

from app.runs.memory.estimate import DTYPE_BYTES, estimate_peak, model_shape

QLORA_BITS = 4
GROUP_SIZES = (64, 32, 128)  # mlx-lm's default first


def quantizable_widths(info: Any) -> list[int]:
    return [m.weight.shape[-1] for m in info.modules if m.adaptable and m.weight is not None]


def qlora_group_size(info: Any) -> int | None:
    """The group size that quantizes every layer (mlx-lm's default 64 first), or None."""
    widths = quantizable_widths(info)
    return next((size for size in GROUP_SIZES if all(width % size == 0 for width in widths)), None)


def quantized_weight_bytes(info: Any, bits: int, group_size: int, cpu: bool) -> int:
    """The base weights of a bits-bit copy, as they would train."""
    total = 0
    for module in info.modules:
        for name, tensor in module.tensors.items():
            stored = DTYPE_BYTES.get(tensor.dtype, 4)
            size = 4 if cpu else stored
            if name == "weight" and module.adaptable:
                total += tensor.size * bits // 8 + 2 * (tensor.size // group_size) * stored
            else:
                total += tensor.size * size
    return total


def qlora_choice(info: Any, trainable: Any, batch: int, seq: int, grad_checkpoint: bool, cpu: bool,
                 current_total: int, min_weight_bytes: int = 0) -> dict[str, Any] | None:
    """The 4-bit copy's estimate for LoRA/DoRA on an unquantized model (None: already quantized, full fine-tuning,
    no group size fits every layer, or weights under min_weight_bytes as they would train: too small to matter)."""
    if info.quantization is not None or trainable.fine_tune_type == "full":
        return None
    group_size = qlora_group_size(info)
    if group_size is None:
        return None
    shape = model_shape(info, cpu)
    if shape.weight_bytes < min_weight_bytes:
        return None
    weights = quantized_weight_bytes(info, QLORA_BITS, group_size, cpu)
    quantized = estimate_peak(shape.__class__(**{**shape.__dict__, "weight_bytes": weights}), trainable.trainable,
                              trainable.layers_trained, batch, seq, grad_checkpoint)
    return {"bits": QLORA_BITS, "group_size": group_size, "total_bytes": quantized.total_bytes,
            "weights": weights, "current_total": current_total, "current_weights": shape.weight_bytes,
            "model": info.model, "min_weight_bytes": min_weight_bytes}
