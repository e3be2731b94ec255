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


# pydantic's error type -> what the field takes, and the value pydantic refused is quoted back after it
TAKES = {
    "int_parsing": "a whole number, such as 200", "int_type": "a whole number, such as 200",
    "int_from_float": "a whole number, such as 200", "float_parsing": "a number, such as 0.0001 or 1e-4",
    "float_type": "a number, such as 0.0001 or 1e-4", "bool_parsing": "on or off (true or false)",
    "bool_type": "on or off (true or false)",
}
# pydantic's error type -> (the sentence's words, the key of its limit in the error's context)
LIMITS = {
    "greater_than_equal": ("must be at least", "ge"), "greater_than": ("must be more than", "gt"),
    "less_than_equal": ("must be at most", "le"), "less_than": ("must be less than", "lt"),
    "literal_error": ("takes one of", "expected"), "enum": ("takes one of", "expected"),
    "string_too_long": ("takes at most this many characters:", "max_length"),
    "string_too_short": ("takes at least this many characters:", "min_length"),
    "too_long": ("takes at most this many items:", "max_length"),
    "too_short": ("takes at least this many items:", "min_length"),
}


def sentence(error: Mapping[str, Any], name: str) -> str:
    """One pydantic error (as ValidationError.errors() gives it) as a sentence about the field `name`."""
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    given = error.get("input")
    if kind in TAKES:
        return f"{name} takes {TAKES[kind]}" + ("" if given in (None, "") else f"; {_quoted(given)} is not one")
    if kind in LIMITS:
        words, key = LIMITS[kind]
        return f"{name} {words} {_number(ctx.get(key))}"
    if kind == "missing":
        return f"{name} is needed"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if kind == "value_error":  # loraboard's own validators: already a sentence about the field
        return message
    return f"{name}: {message}" if message else f"{name} is not valid"
