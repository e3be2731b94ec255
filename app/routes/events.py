"""Pushed updates for open pages (server-sent events)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
