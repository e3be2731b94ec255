"""Dataset jobs: token statistics, subsets and splits."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
