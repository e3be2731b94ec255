"""Line-by-line validation of an MLX LoRA dataset folder (train.jsonl, valid.jsonl, test.jsonl).

The rules follow mlx-lm's loader (mlx_lm/tuner/datasets.py): every line is one JSON object in one of the
formats text ({"text"}), chat ({"messages"}), completions ({"prompt", "completion"}) or tools ({"messages",
"tools"}) (the keys can be renamed with the run's prompt_feature, completion_feature, chat_feature and
text_feature); the format of a file is decided by its first line, so a file mixing formats fails mid-training.
Files are streamed line by line; only the first `keep` problems are kept, all of them are counted.
Each split file is opened once through app/contract/confinement.open_confined: a file that links out of the folders
loraboard reads is an error naming the link, and nothing of it is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app import json_text
from app.contract.confinement import PathNotAllowed, open_confined
from app.contract.jsonl import BLANK, json_type, not_an_object, not_json

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = {
    "train": "a dataset needs train.jsonl to train on",
    "valid": "training measures validation loss on valid.jsonl (split some examples off train.jsonl)",
}
ROLES = ("system", "user", "assistant", "tool")
SHOWN_ERRORS = 20
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class FeatureKeys:
    """The keys mlx-lm reads each format from (a run's prompt_feature, completion_feature, chat_feature,
    text_feature; these defaults when unset)."""

    prompt: str = "prompt"
    completion: str = "completion"
    chat: str = "messages"
    text: str = "text"

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> FeatureKeys:
        """From a run config's prompt_feature, completion_feature, chat_feature and text_feature."""
        values = values or {}
        return cls(prompt=values.get("prompt_feature") or "prompt",
                   completion=values.get("completion_feature") or "completion",
                   chat=values.get("chat_feature") or "messages", text=values.get("text_feature") or "text")

    def describe(self, fmt: str) -> str:
        """The keys that make a line this format, e.g. "'prompt' and 'completion'"."""
        return {"text": f"{self.text!r}", "chat": f"{self.chat!r}", "tools": f"{self.chat!r} and 'tools'",
                "completions": f"{self.prompt!r} and {self.completion!r}"}[fmt]


DEFAULT_KEYS = FeatureKeys()


@dataclass(frozen=True)
class Issue:
    """One problem: the file, the line (None: the whole file), the field inside the line, what is wrong."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        return f"{where}: {self.field} {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message,
                "text": str(self)}


@dataclass
class IssueLog:
    """Keeps the first `keep` issues and counts them all."""

    keep: int = SHOWN_ERRORS
    issues: list[Issue] = field(default_factory=list)
    count: int = 0

    def add(self, issue: Issue) -> None:
        self.count += 1
        if len(self.issues) < self.keep:
            self.issues.append(issue)


@dataclass
class SplitSummary:
    name: str
    present: bool = False
    examples: int = 0
    size_bytes: int = 0
    format: str | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"


@dataclass
class ValidationReport:
    folder: str
    splits: dict[str, SplitSummary]
    errors: IssueLog
    warnings: IssueLog

    @property
    def ok(self) -> bool:
        return self.errors.count == 0

    @property
    def format(self) -> str | None:
        """The dataset's format: that of train.jsonl (or of the first split that has one)."""
        return next((s.format for s in self.splits.values() if s.format), None)

    @property
    def counts(self) -> dict[str, int]:
        return {name: split.examples for name, split in self.splits.items()}

    def summary(self, shown: int = SHOWN_ERRORS) -> str:
        """The first `shown` errors, one per line, and how many more there are."""
        return summarize(self.errors, shown)

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder, "ok": self.ok, "format": self.format,
            "splits": {name: {"present": s.present, "examples": s.examples, "size_bytes": s.size_bytes,
                              "format": s.format} for name, s in self.splits.items()},
            "errors": [issue.as_dict() for issue in self.errors.issues], "error_count": self.errors.count,
            "warnings": [issue.as_dict() for issue in self.warnings.issues],
            "warning_count": self.warnings.count, "summary": self.summary() if not self.ok else "",
        }


def summarize(log: IssueLog, shown: int = SHOWN_ERRORS) -> str:
    lines = [str(issue) for issue in log.issues[:shown]]
    if log.count > len(lines):
        more = log.count - len(lines)
        lines.append(f"… and {more:,} more error{'s' if more != 1 else ''} ({log.count:,} in all)")
    return "\n".join(lines)


@dataclass
class LineCheck:
    """What one parsed line is: its format (None when unknown) and its problems as (field, message)."""

    format: str | None = None
    errors: list[tuple[str | None, str]] = field(default_factory=list)
    warnings: list[tuple[str | None, str]] = field(default_factory=list)


def line_format(example: dict[str, Any], keys: FeatureKeys = DEFAULT_KEYS) -> str | None:
    """The format mlx-lm would read this line as (same key order as create_dataset)."""
    if keys.prompt in example and keys.completion in example:
        return "completions"
    if keys.chat in example:
        return "tools" if "tools" in example else "chat"
    if keys.text in example:
        return "text"
    return None


def format_family(fmt: str | None) -> str | None:
    """chat and tools lines are read by the same mlx-lm class and may share a file."""
    return "chat" if fmt == "tools" else fmt


def check_example(example: Any, mask_prompt: bool = False, keys: FeatureKeys = DEFAULT_KEYS) -> LineCheck:
    """Check one parsed JSON line."""
    result = LineCheck()
    if (problem := not_an_object(example)) is not None:
        result.errors.append((None, problem))
        return result
    result.format = line_format(example, keys)
    if result.format is None:
        if keys.prompt in example:
            result.errors.append((repr(keys.completion), f"is missing (a line with {keys.prompt!r} is completions "
                                                         "format)"))
        elif keys.completion in example:
            result.errors.append((repr(keys.prompt), f"is missing (a line with {keys.completion!r} is completions "
                                                     "format)"))
        else:
            found = ", ".join(repr(k) for k in list(example)[:8]) or "none"
            result.errors.append((None, f"has none of the keys of a known format: {keys.chat!r} (chat), "
                                        f"{keys.prompt!r} and {keys.completion!r} (completions) or {keys.text!r} "
                                        f"(text); its keys: {found}"))
        return result
    if result.format == "text":
        _check_string(example, keys.text, result)
    elif result.format == "completions":
        _check_string(example, keys.prompt, result)
        _check_string(example, keys.completion, result)
    else:
        _check_chat(example, keys.chat, mask_prompt, result)
    if "tools" in example:
        _check_tools(example["tools"], result)
    return result


def _check_string(container: dict[str, Any], key: str, result: LineCheck) -> None:
    value, label = container[key], repr(key)
    if not isinstance(value, str):
        result.errors.append((label, f"must be a string, got {json_type(value)}"))
    elif not value.strip():
        result.errors.append((label, "is empty"))


def _check_chat(example: dict[str, Any], key: str, mask_prompt: bool, result: LineCheck) -> None:
    messages, name = example[key], repr(key)
    if not isinstance(messages, list):
        result.errors.append((name, f"must be an array of messages, got {json_type(messages)}"))
        return
    if not messages:
        result.errors.append((name, "is empty"))
        return
    roles: list[str | None] = []
    for index, message in enumerate(messages):
        label = f"{name}[{index}]"
        if not isinstance(message, dict):
            result.errors.append((label, f"must be an object with 'role' and 'content', got {json_type(message)}"))
            roles.append(None)
            continue
        roles.append(_check_message(message, label, result))
    if "assistant" not in roles:
        result.errors.append((name, "has no assistant message: there is nothing to learn"))
        return
    last = roles[-1]
    if last != "assistant" and last is not None:
        label = f"{name}[{len(messages) - 1}].role"
        if mask_prompt:
            result.errors.append((label, f"is {last!r}: with mask_prompt the last message must be the assistant's "
                                         "(the loss falls on the last message)"))
        else:
            result.warnings.append((label, f"is {last!r}: the conversation does not end with the assistant "
                                           "(with mask_prompt this line would be an error)"))


def _check_message(message: dict[str, Any], label: str, result: LineCheck) -> str | None:
    """Check one message; its role when valid."""
    role = message.get("role")
    valid_role: str | None = None
    if "role" not in message:
        result.errors.append((f"{label}.role", "is missing"))
    elif not isinstance(role, str):
        result.errors.append((f"{label}.role", f"must be a string, got {json_type(role)}"))
    elif role not in ROLES:
        result.errors.append((f"{label}.role", f"must be one of {'/'.join(ROLES)}, got {role!r}"))
    else:
        valid_role = role
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        result.errors.append((f"{label}.tool_calls", f"must be an array, got {json_type(tool_calls)}"))
    calls_tools = valid_role == "assistant" and bool(tool_calls)
    if "content" not in message:
        if not calls_tools:
            result.errors.append((f"{label}.content", "is missing"))
        return valid_role
    content = message["content"]
    if content is None and calls_tools:
        return valid_role
    if not isinstance(content, str):
        result.errors.append((f"{label}.content", f"must be a string, got {json_type(content)}"))
    elif not content.strip() and not calls_tools:
        result.errors.append((f"{label}.content", "is empty"))
    return valid_role


def _check_tools(tools: Any, result: LineCheck) -> None:
    if not isinstance(tools, list):
        result.errors.append(("'tools'", f"must be an array of tool definitions, got {json_type(tools)}"))
        return
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            result.errors.append((f"'tools'[{index}]", f"must be an object, got {json_type(tool)}"))


def numbered_lines(source: Path | IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a file (a path, or a handle already open), streamed."""
    if not isinstance(source, Path):
        yield from enumerate(source, 1)
        return
    with source.open("rb") as handle:
        yield from enumerate(handle, 1)


def decode_line(number: int, raw: bytes, file: str, errors: IssueLog) -> str | None:
    """The text of one line, or None (after logging why) when it is blank or not UTF-8."""
    if number == 1 and raw.startswith(UTF8_BOM):
        errors.add(Issue(file, 1, None, "starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 "
                                        "without BOM"))
        raw = raw[len(UTF8_BOM):]
    if not raw.strip():
        errors.add(Issue(file, number, None, BLANK))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.add(Issue(file, number, None, f"is not valid UTF-8: byte 0x{raw[exc.start]:02x} at column "
                                             f"{exc.start + 1} (save the file as UTF-8)"))
        return None


def validate_split(source: Path | IO[bytes], split: SplitSummary, errors: IssueLog, warnings: IssueLog,
                   mask_prompt: bool = False, keys: FeatureKeys = DEFAULT_KEYS) -> None:
    """Stream one split file (a path, or a handle already open), filling `split` (examples, format) and logging
    its problems."""
    file = split.file
    first_format_line = 0
    family: str | None = None
    saw_tools = False
    for number, raw in numbered_lines(source):
        if number == 1 and raw.startswith(UTF16_BOMS):
            errors.add(Issue(file, None, None, "is UTF-16 encoded: save it as UTF-8 (one JSON object per line)"))
            return
        text = decode_line(number, raw, file, errors)
        if raw.strip(b" \t\r\n"):
            split.examples += 1
        if text is None:
            continue
        try:
            example = json_text.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            errors.add(Issue(file, number, None, not_json(exc)))
            continue
        check = check_example(example, mask_prompt, keys)
        for field_name, message in check.errors:
            errors.add(Issue(file, number, field_name, message))
        for field_name, message in check.warnings:
            warnings.add(Issue(file, number, field_name, message))
        if check.format is None:
            continue
        saw_tools = saw_tools or check.format == "tools"
        if family is None:
            family, first_format_line = format_family(check.format), number
        elif format_family(check.format) != family and first_format_line > 0:
            errors.add(Issue(file, number, None, f"is {check.format} format ({keys.describe(check.format)}) but line "
                                                 f"{first_format_line} is {family} format: a file holds one format"))
            first_format_line = -first_format_line  # the first line that differs is named once
    split.format = "tools" if family == "chat" and saw_tools else family


def validate_dataset(folder: Path, mask_prompt: bool = False, keep: int = SHOWN_ERRORS,
                     keys: FeatureKeys = DEFAULT_KEYS, roots: Sequence[Path] | None = None) -> ValidationReport:
    """Check every line of train/valid/test.jsonl in `folder`; train and valid are required.

    `roots`: the folders the split files may lead into, links resolved (app/contract/paths.data_roots); None: the folder
    itself. A file linking out of them is an error naming the link, and nothing of it is read or counted.
    """
    errors, warnings = IssueLog(keep), IssueLog(keep)
    report = ValidationReport(str(folder), {name: SplitSummary(name) for name in SPLITS}, errors, warnings)
    if not folder.is_dir():
        errors.add(Issue(str(folder), None, None, "does not exist or is not a folder"))
        return report
    for name, split in report.splits.items():
        try:
            handle = open_confined(folder / split.file, [folder] if roots is None else roots)
        except PathNotAllowed as exc:
            errors.add(Issue(split.file, None, None, str(exc)))
            continue
        except OSError:  # absent, a folder, not a regular file
            if name in REQUIRED_SPLITS:
                hint = _near_miss(folder, name)
                errors.add(Issue(split.file, None, None, f"is missing: {REQUIRED_SPLITS[name]}{hint}"))
            continue
        with handle:
            split.present, split.size_bytes = True, os.fstat(handle.fileno()).st_size
            validate_split(handle, split, errors, warnings, mask_prompt, keys)
        if split.size_bytes == 0:
            errors.add(Issue(split.file, None, None, "is empty: it has no examples"))
    _check_across_splits(report, mask_prompt)
    return report


def _near_miss(folder: Path, split: str) -> str:
    """A hint when the split is there under a slightly different name."""
    for candidate in sorted(folder.glob(f"{split}*")) + sorted(folder.glob(f"{split.capitalize()}*")):
        if candidate.is_file():
            return f" (found {candidate.name}: rename it to {split}.jsonl)"
    return ""


def _check_across_splits(report: ValidationReport, mask_prompt: bool) -> None:
    reference = next((s for s in report.splits.values() if s.format), None)
    for split in report.splits.values():
        if split.format is None or reference is None:
            continue
        if split is not reference and format_family(split.format) != format_family(reference.format):
            report.errors.add(Issue(split.file, None, None, f"is {split.format} format but {reference.file} is "
                                                            f"{reference.format}: every split needs the same format"))
        if mask_prompt and split.format == "text":
            report.errors.add(Issue(split.file, None, None, "is text format: mask_prompt needs chat or completions "
                                                            "data (there is no prompt to mask)"))
