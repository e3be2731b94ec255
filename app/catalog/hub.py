"""Whether a run's model, given as a Hugging Face hub id, can be had before the run is queued: it is in the local
cache, or the hub answers. A run whose model can be had neither way would only fail in its worker, with the hub
library's own error ("LocalEntryNotFoundError … Name or service not known"); it is refused before a row exists."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from app.catalog.info import HUB_ID, cached_hub_model
from app.contract.run_config import looks_like_path
from app.contract.settings import Settings

DEFAULT_ENDPOINT = "https://huggingface.co"
REACH_TIMEOUT_S = 3.0


def hub_reachable(environ: Mapping[str, str] | None = None, timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """Whether the hub (HF_ENDPOINT, else huggingface.co) takes a TCP connection now: its name resolves and its
    port answers within timeout_s."""
    endpoint = urlsplit((environ if environ is not None else os.environ).get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_model_problem(model: str, settings: Settings, environ: Mapping[str, str] | None = None,
                      reachable: Callable[[], bool] | None = None) -> str | None:
    """Why a hub id cannot be loaded by a run now (None: a folder, cached, or the hub answers)."""
    model = model.strip()
    if not model or looks_like_path(model) or not HUB_ID.match(model) or "/" not in model:
        return None
    env = environ if environ is not None else os.environ
    hub, snapshot = cached_hub_model(model, env)
    if snapshot is not None:
        return None
    fetch = f"download it first (`hf download {model}`, where there is a network) or pick a local folder"
    if settings.hf_offline or env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f"{model} is not in the local Hugging Face cache ({hub}) and loraboard works offline: {fetch}"
    if not (reachable or (lambda: hub_reachable(env)))():
        return f"{model} is not in the local Hugging Face cache ({hub}) and the hub cannot be reached: {fetch}"
    return None
