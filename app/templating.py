"""Jinja filters shared by the pages, and the one global (what frees a waiting run or job)."""

from __future__ import annotations

from datetime import datetime

from fastapi.templating import Jinja2Templates

from app.jobs.jobs import free_action


def human_bytes(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC" if value else "—"


def register_filters(templates: Jinja2Templates) -> None:
    templates.env.filters["human_bytes"] = human_bytes
    templates.env.filters["number"] = number
    templates.env.filters["when"] = when
    templates.env.globals["free_action"] = free_action
