"""A run's summary cards: best validation, improvement, throughput, tokens, memory, wall time."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.models import Run


def run_summary(session: Session, run: Run) -> dict[str, Any]:
    """The figures of the run page's summary cards (filled in by the summary work)."""
    return {}
