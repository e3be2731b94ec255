"""Comparing runs: overlaid curves and the config keys that differ."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
