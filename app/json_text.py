"""json.loads for text from outside (request fields, dataset lines, hostfiles): JSON nested past what Python's
parser recurses through is a JSONDecodeError like any other unreadable JSON, not a RecursionError (a 500)."""

from __future__ import annotations

import json
from typing import Any

TOO_DEEP = "nested too deeply (too many arrays and objects inside one another to read)"


def loads(text: str | bytes) -> Any:
    """json.loads(text); RecursionError becomes json.JSONDecodeError (a ValueError) saying it is nested too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, text if isinstance(text, str) else "", 0) from None
