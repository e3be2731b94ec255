"""json.loads for text from outside (request fields, dataset lines, hostfiles, files of model and adapter
folders): JSON nested past what Python's parser recurses through is a JSONDecodeError like any other unreadable
JSON, not a RecursionError (a 500)."""

from __future__ import annotations

import json
from typing import Any

TOO_DEEP = "nested too deeply (too many arrays and objects inside one another to read)"


def loads(text: str | bytes, **options: Any) -> Any:
    """json.loads(text, **options); RecursionError becomes json.JSONDecodeError (a ValueError) saying it is nested
    too deeply."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, text if isinstance(text, str) else "", 0) from None
