"""Run configs as mlx_lm YAML: export a run's, read one into the form."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
