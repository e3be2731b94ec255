"""What a name or a note may hold: no control characters and no text-direction (bidi) controls.

A NUL or an escape sequence in a run name ends up in terminals (`loraboard runs`), logs and file names; a
right-to-left override makes "run-gpj.yaml" read as "run-lmay.jpg". One pure rule, used wherever a name or a
note comes in: run config names, renames and notes, prompt-set names.
"""

from __future__ import annotations

import unicodedata

# Marks, embeddings, overrides and isolates that reorder the text around them (Unicode's bidi controls).
BIDI_CONTROLS = frozenset({0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})
MULTILINE = frozenset("\n\t\r")  # what a note may keep of the control characters


def _what(char: str) -> str | None:
    """How a character not allowed is named in a message, or None for an allowed one."""
    code = ord(char)
    if code in BIDI_CONTROLS:
        name = unicodedata.name(char).lower()
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name} character"
    if unicodedata.category(char) == "Cc":
        return "a null character" if code == 0 else "a control character"
    return None


def text_problem(text: str, field: str, multiline: bool = False) -> str | None:
    """Why `text` may not be stored as `field` (the first character not allowed), or None.

    multiline: line breaks and tabs are allowed (notes); a name is one line."""
    for index, char in enumerate(text):
        if multiline and char in MULTILINE:
            continue
        what = _what(char)
        if what is not None:
            return (f"{field} contains {what} (U+{ord(char):04X}) at character {index + 1}; control and "
                    "text-direction characters are not allowed")
    return None


def check_text(text: str, field: str, multiline: bool = False) -> str:
    """`text` as given, or a ValueError saying which character is not allowed and where."""
    problem = text_problem(text, field, multiline)
    if problem is not None:
        raise ValueError(problem)
    return text
