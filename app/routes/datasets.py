"""Dataset pages: register, upload, validate, preview."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
