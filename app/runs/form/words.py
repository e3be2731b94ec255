"""Validation errors in loraboard's own words (pure): a sentence naming the field and what it takes, for the
new-run form, instead of pydantic's "Input should be a valid integer, unable to parse string as an integer"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUOTE_MAX = 40  # characters of a refused value quoted back


def _quoted(value: Any) -> str:
    text = str(value)
    return f"“{text[:QUOTE_MAX]}…”" if len(text) > QUOTE_MAX else f"“{text}”"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sentence(error: Mapping[str, Any], name: str) -> str:
    """One pydantic error (as ValidationError.errors() gives it) as a sentence about the field `name`."""
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    given = error.get("input")
    shown = "" if given in (None, "") else f"; {_quoted(given)} is not one"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{name} takes a whole number, such as 200{shown}"
    if kind in ("float_parsing", "float_type"):
        return f"{name} takes a number, such as 0.0001 or 1e-4{shown}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{name} takes on or off (true or false){shown}"
    if kind == "greater_than_equal":
        return f"{name} must be at least {_number(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"{name} must be more than {_number(ctx.get('gt'))}"
    if kind == "less_than_equal":
        return f"{name} must be at most {_number(ctx.get('le'))}"
    if kind == "less_than":
        return f"{name} must be less than {_number(ctx.get('lt'))}"
    if kind in ("literal_error", "enum"):
        return f"{name} takes one of {ctx.get('expected', 'the listed values')}"
    if kind == "missing":
        return f"{name} is needed"
    if kind == "string_too_long":
        return f"{name} takes at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"{name} takes at least {ctx.get('min_length')} characters"
    if kind == "too_short":
        return f"{name} takes at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"{name} takes at most {ctx.get('max_length')} items"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if kind == "value_error":  # loraboard's own validators: already a sentence about the field
        return message
    return f"{name}: {message}" if message else f"{name} is not valid"
