"""The new-run form's memory panel: the estimated training peak (app/runs/memory/estimate.py) of the form's current
values, the same for the model's 4-bit copy (app/runs/memory/estimate_qlora.py), and the memory free now (psutil).
"""

from __future__ import annotations

from typing import Any

import psutil

from app.contract.run_config import RunConfig
from app.runs.memory.estimate import estimate_peak, fits, model_shape, training_on_cpu
from app.runs.memory.estimate_qlora import qlora_choice


def _whole(text: str | None, default: int) -> int | None:
    text = (text or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def panel_memory(info: Any, trainable: Any, form: dict[str, str], qlora_min_bytes: int = 0) -> dict[str, Any] | None:
    """The new-run form's memory estimate for its current values, against the memory free now (psutil), and the
    4-bit copy's where the model's weights take at least qlora_min_bytes (Settings.qlora_offer_min_gb).

    None when batch_size or max_seq_length cannot be read (the form's own check says why).
    """
    defaults = RunConfig.model_fields
    batch = _whole(form.get("batch_size"), defaults["batch_size"].default)
    seq = _whole(form.get("max_seq_length"), defaults["max_seq_length"].default)
    if batch is None or seq is None:
        return None
    grad_checkpoint = form.get("grad_checkpoint", "off") not in ("", "off", "false")  # a checkbox: sent when on
    cpu = training_on_cpu()
    estimate = estimate_peak(model_shape(info, cpu), trainable.trainable, trainable.layers_trained, batch, seq,
                             grad_checkpoint, full=trainable.fine_tune_type == "full")
    available = int(psutil.virtual_memory().available)
    qlora = qlora_choice(info, trainable, batch, seq, grad_checkpoint, cpu, estimate.total_bytes, qlora_min_bytes)
    return {**estimate.to_json(), "available_bytes": available, "batch_size": batch, "max_seq_length": seq,
            "grad_checkpoint": grad_checkpoint, "cpu": cpu, "warning": fits(estimate.total_bytes, available),
            "qlora": qlora}
