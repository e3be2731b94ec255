"""What is wrong with a line of a JSONL split, in one set of words for the app's check of a dataset
(app/datasets/validation.py) and the workers that read the same files (worker/token_stats.py). Standard library only.
"""

from __future__ import annotations

import json
from typing import Any


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


BLANK = "is blank: every line must hold one JSON object"  # mlx-lm's loader stops at a blank line


def not_json(exc: json.JSONDecodeError) -> str:
    """A line that does not parse: 'is not valid JSON: Expecting value (column 1)'."""
    return f"is not valid JSON: {exc.msg} (column {exc.colno})"


def not_an_object(value: Any) -> str | None:
    """A parsed line that is not a JSON object: 'must be a JSON object, got array'; None for an object."""
    return None if isinstance(value, dict) else f"must be a JSON object, got {json_type(value)}"
