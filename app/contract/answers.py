"""Scoring generated answers against a split's references (pure: standard library only, no I/O).

An answer is structured (a JSON object, or `Key: value` lines) or plain free text. Structured answers are scored
per field, each field by its kind: category (exact match), number (read as a person writes it) or text (token F1).
The worker scores every example with `score_example`; `task_result` sums the outcomes into the API's figures.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

FieldKind = Literal["category", "number", "text"]
AnswerFormat = Literal["json", "lines", "plain"]
T = TypeVar("T")

PLAIN_FIELD = "answer"  # the one field of a plain answer
ASSISTANT_MARKER = "<|assistant|>"  # where a text example's answer begins (the seed's format, worker/seed_shaped.py)
_SHARE = 0.9  # share of references that must be structured for the split to count as structured
_CATEGORY_WORDS = 4  # a category's values are at most this long (mean, in words)

# `Key: value`: a key of 1-4 words (letters, digits, '_' and '-'), after an optional list bullet.
_LINE = re.compile(r"^\s*(?:[-*\u2022]\s+)?([^\W_][\w-]*(?:[ \t]+[\w-]+){0,3})[ \t]*:(.*)$")
# A leading number: digits with optional thousands commas and decimals, not followed by more of a word,
# a date, a time or a version ('2024-01-05', '10:30', '1.2.3' are not numbers).
_NUMBER = re.compile(r"\s*([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+)(?![\w:-]|[.,]\d)")


class _Float(float):
    """A JSON float that remembers how it was written ('4.50' stays '4.50')."""

    written: str

    def __new__(cls, written: str) -> _Float:
        number = super().__new__(cls, written)
        number.written = written
        return number


def split_example(example: dict[str, Any], *, prompt_feature: str = "prompt", completion_feature: str = "completion",
                  chat_feature: str = "messages",
                  text_feature: str = "text") -> tuple[list[dict[str, str]] | str, str] | None:
    """(the prompt, the reference answer) of one dataset example, as mlx-lm trains on it.

    chat: the prompt is every message before the LAST assistant message, the reference that message's content;
    prompt/completion: one user message and the completion; text: the prompt is the raw text up to and including
    the last ASSISTANT_MARKER (a string, to be fed as it is, without a chat template, as training saw it) and the
    reference the rest, stripped. A text without the marker, a chat with no assistant message: None. Other keys
    are ignored.
    """
    messages = example.get(chat_feature)
    if isinstance(messages, list):
        last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
                   default=None)
        if last is None:
            return None
        prompt = [{"role": str(m.get("role", "")), "content": _content(m.get("content"))}
                  for m in messages[:last] if isinstance(m, dict)]
        return prompt, _content(messages[last].get("content"))
    prompt_text, completion = example.get(prompt_feature), example.get(completion_feature)
    if isinstance(prompt_text, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt_text}], completion
    text = example.get(text_feature)
    if isinstance(text, str) and ASSISTANT_MARKER in text:
        cut = text.rindex(ASSISTANT_MARKER) + len(ASSISTANT_MARKER)
        return text[:cut], text[cut:].strip()
    return None


def _content(content: Any) -> str:
    return content if isinstance(content, str) else "" if content is None else json.dumps(content)


def parse_answer(text: str) -> dict[str, str] | None:
    """The fields of an answer: a JSON object (the whole text, or the first {...} object in it), values as text;
    else `Key: value` lines (lines without a key are ignored; a repeated key keeps its first value).
    None when no field is found. Keys keep their spelling."""
    return _json_fields(text) or _line_fields(text) or None


def _json_fields(text: str) -> dict[str, str] | None:
    """The fields of the whole text as a JSON object, else of the first {...} object found in it."""
    decoder = json.JSONDecoder(parse_float=_Float)
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return {str(key): _as_text(item) for key, item in value.items()}
        start = text.find("{", start + 1)
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, _Float):
        return value.written
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value)  # int, bool, null


def _line_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            fields.setdefault(match[1], match[2].strip())
    return fields


def answer_format(references: Sequence[str]) -> AnswerFormat:
    """'json' when at least 90% of references parse as JSON objects, 'lines' when at least 90% have >= 2
    `Key: value` fields, else 'plain'."""
    if not references:
        return "plain"
    needed = _SHARE * len(references)
    if sum(1 for r in references if _json_fields(r)) >= needed:
        return "json"
    if sum(1 for r in references if len(_line_fields(r)) >= 2) >= needed:
        return "lines"
    return "plain"


def read_number(value: str) -> float | None:
    """A number as a person writes it: '3', '-2.5', '1,200', '3/5' (a score: 3), '4 out of 5' (4), '80%' (80);
    None when the text does not start with a number ('high', '', 'n/a', a date or a time)."""
    match = _NUMBER.match(value)
    return float(match[1].replace(",", "")) if match else None


def field_kinds(references: Sequence[dict[str, str]]) -> dict[str, FieldKind]:
    """The kind of each field of the references (first-seen order and spelling; keys match as `score_example`
    matches them): 'number' when every value reads as a number; 'category' when the values are short (mean <= 4
    words) and repeat (distinct values <= max(2, half the number of values)); else 'text'."""
    names: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for reference in references:
        for name, value in reference.items():
            names.setdefault(_key(name), name)
            values.setdefault(_key(name), []).append(value)
    kinds: dict[str, FieldKind] = {}
    for key, name in names.items():
        present = values[key]
        if all(read_number(v) is not None for v in present):
            kinds[name] = "number"
        elif (sum(len(v.split()) for v in present) <= _CATEGORY_WORDS * len(present)
              and len({normalize(v) for v in present}) <= max(2, len(present) // 2)):
            kinds[name] = "category"
        else:
            kinds[name] = "text"
    return kinds


def normalize(value: str) -> str:
    """Trimmed, casefolded, inner whitespace collapsed, trailing '.' stripped."""
    return " ".join(value.casefold().split()).rstrip(".").rstrip()


def _key(name: str) -> str:
    """A field name as matched between reference and output: normalized, '_' and '-' read as spaces."""
    return normalize(name.replace("_", " ").replace("-", " "))


def _words(value: str) -> list[str]:
    kept = "".join(c for c in value if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    return kept.casefold().split()


def token_f1(predicted: str, reference: str) -> float:
    """Token-overlap F1 (as SQuAD scores answers) over casefolded words with punctuation removed; both empty: 1."""
    got, expected = _words(predicted), _words(reference)
    if not got or not expected:
        return 1.0 if got == expected else 0.0
    common = sum((Counter(got) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class FieldOutcome:
    """One field of one answer: what was expected, what came out (None: missing) and its score 0..1."""

    kind: FieldKind
    expected: str
    got: str | None
    score: float
    error: float | None = None  # numbers: |got - expected| (None when missing or unreadable)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "expected": self.expected, "got": self.got, "score": self.score}
        if self.kind == "text":
            out["f1"] = self.score
        else:
            out["correct"] = self.score == 1
        if self.kind == "number":
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ExampleOutcome:
    """One answer scored: parsed (structured: into fields; plain: non-empty), complete (every reference field
    present), per-field outcomes, the mean field score and whether it is exactly right."""

    parsed: bool
    complete: bool
    fields: dict[str, FieldOutcome]
    score: float
    exact: bool

    def as_json(self) -> dict[str, Any]:
        return {"parsed": self.parsed, "complete": self.complete, "score": self.score, "exact": self.exact,
                "fields": {name: field.as_json() for name, field in self.fields.items()}}


def score_example(reference: str, output: str, kinds: dict[str, FieldKind] | None) -> ExampleOutcome:
    """Score one output. kinds None: a plain answer (exact match and token F1 of the whole text). Otherwise both
    are parsed into fields; output keys match reference keys ignoring case, spacing, '_' and '-'; output fields the
    reference lacks are ignored; a reference field absent from `kinds` is scored as text. A reference with no
    fields is scored as a plain answer."""
    expected = parse_answer(reference) if kinds is not None else None
    if expected is None:
        blank = not output.strip()
        f1 = 0.0 if blank else token_f1(output, reference)
        field = FieldOutcome("text", reference, None if blank else output, f1)
        return ExampleOutcome(parsed=not blank, complete=not blank, fields={PLAIN_FIELD: field}, score=field.score,
                              exact=normalize(output) == normalize(reference))
    kind_of = {_key(name): kind for name, kind in (kinds or {}).items()}
    got_fields = parse_answer(output)
    got_by_key: dict[str, str] = {}
    for name, value in (got_fields or {}).items():
        got_by_key.setdefault(_key(name), value)
    fields = {name: _score_field(kind_of.get(_key(name), "text"), value, got_by_key.get(_key(name)))
              for name, value in expected.items()}
    scores = [f.score for f in fields.values()]
    return ExampleOutcome(parsed=got_fields is not None, complete=all(f.got is not None for f in fields.values()),
                          fields=fields, score=sum(scores) / len(scores), exact=all(s == 1 for s in scores))


def _score_field(kind: FieldKind, expected: str, got: str | None) -> FieldOutcome:
    if got is None:
        return FieldOutcome(kind, expected, None, 0.0)
    if kind == "text":
        return FieldOutcome(kind, expected, got, token_f1(got, expected))
    if kind == "number":
        want, have = read_number(expected), read_number(got)
        if want is not None and have is not None:
            right = math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)
            return FieldOutcome(kind, expected, got, 1.0 if right else 0.0, abs(have - want))
        if have is None:
            return FieldOutcome(kind, expected, got, 0.0)
    return FieldOutcome(kind, expected, got, 1.0 if normalize(got) == normalize(expected) else 0.0)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def task_result(outcomes: Sequence[ExampleOutcome], kinds: dict[str, FieldKind] | None,
                answer_format: AnswerFormat) -> dict[str, Any]:
    """The API's task figures: format, examples, parsed/complete/exact shares, per-field figures and the main
    score (plain answers: mean F1; structured: mean over fields of category accuracy, number accuracy, text F1).
    kinds None: plain answers. No outcomes: zero shares and score, no fields."""
    n = len(outcomes)
    result: dict[str, Any] = {
        "format": answer_format, "examples": n,
        "parsed": _mean([float(o.parsed) for o in outcomes]),
        "complete": _mean([float(o.complete) for o in outcomes]),
        "fields": {}, "exact": _mean([float(o.exact) for o in outcomes]), "score": 0.0,
    }
    if n == 0:
        return result
    if kinds is None:
        f1 = _mean([o.fields[PLAIN_FIELD].score for o in outcomes if PLAIN_FIELD in o.fields])
        result["fields"] = {PLAIN_FIELD: {"kind": "text", "f1": f1, "exact": result["exact"]}}
        result["score"] = f1
        return result
    by_name: dict[str, list[FieldOutcome]] = {name: [] for name in kinds}
    for outcome in outcomes:
        for name, field in outcome.fields.items():
            by_name.setdefault(name, []).append(field)
    fields = {name: _field_figures(found) for name, found in by_name.items() if found}
    result["fields"] = fields
    result["score"] = _mean([f["f1"] if f["kind"] == "text" else f["accuracy"] for f in fields.values()])
    return result


def _field_figures(found: Sequence[FieldOutcome]) -> dict[str, Any]:
    kind = found[0].kind
    mean_score = _mean([f.score for f in found])
    if kind == "text":
        return {"kind": kind, "f1": mean_score}
    if kind == "category":
        return {"kind": kind, "accuracy": mean_score}
    errors = [f.error for f in found if f.error is not None]
    return {"kind": kind, "mae": _mean(errors) if errors else None, "accuracy": mean_score, "answered": len(errors)}


def rank_examples(items: Sequence[T], score: Callable[[T], float], line: Callable[[T], int],
                  order: Literal["worst", "best"], limit: int) -> list[T]:
    """The `limit` worst (lowest score first) or best (highest first) items; ties by line ascending."""
    sign = 1 if order == "worst" else -1
    return sorted(items, key=lambda item: (sign * score(item), line(item)))[:max(limit, 0)]
