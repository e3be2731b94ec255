"""Models the picker lists, and what a model is (read from config.json and safetensors headers; no mlx)."""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def model_choices(settings: Settings) -> list[dict[str, Any]]:
    """Local model folders and Hugging Face cache entries the picker offers."""
    return []
