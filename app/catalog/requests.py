"""What a request for a model's information names: the model (a folder confined to the model folders, or a hub
id), the LoRA keys as typed, and the numbers a run trains with when the request leaves them out."""

from __future__ import annotations

from app.catalog.info import ModelInfoError
from app.contract.paths import MODEL_DIRS_SETTING, PathNotAllowed, confine, model_roots
from app.contract.run_config import LoraParameters, RunConfig, looks_like_path
from app.contract.settings import Settings

DEFAULT_NUM_LAYERS: int = RunConfig.model_fields["num_layers"].default
DEFAULT_RANK: int = LoraParameters.model_fields["rank"].default


def split_keys(text: str | None) -> list[str] | None:
    """'self_attn.q_proj, self_attn.v_proj' -> a list; empty -> None (mlx-lm's default keys)."""
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    return keys or None


def confined_model(model: str, settings: Settings) -> str:
    """A model folder inside the folders models may be read from (a hub id as given); else ModelInfoError."""
    if not model.strip() or not looks_like_path(model.strip()):  # empty: the embedded model
        return model
    try:
        return str(confine(model.strip(), model_roots(settings), "model folder", MODEL_DIRS_SETTING))
    except PathNotAllowed as exc:
        raise ModelInfoError(str(exc), "model") from None
