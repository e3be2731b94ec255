"""The model picker and model information."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
