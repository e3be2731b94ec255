"""`python -m worker tokenstats --job-id N`: the token length of every example, as mlx-lm tokenizes it.

The job's row (table tokenstatsjob, see app/tables.py) names a dataset folder and a model. The
tokenizer is loaded the way mlx_lm.utils.load loads it (local folder or the Hugging Face cache), and
each example goes through mlx-lm's own dataset classes (`create_dataset(...).process`: text gets an
EOS appended, chat and completions go through `apply_chat_template`), so a length here is the
length the trainer sees before it truncates to max_seq_length.

Progress (done/total) and a heartbeat are written by a small thread every half second; the result is
compact: per split, each distinct length with its count.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from worker.reporting import connect, now_text

SPLITS = ("train", "valid", "test")
REPORT_EVERY_S = 0.5
# What mlx_lm.utils.load_tokenizer fetches of a hub model (no weights).
TOKENIZER_FILES = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl",
                   "*.jinja"]


class DatasetFileError(ValueError):
    """A problem in one line of one split file."""


class TokenizerError(RuntimeError):
    """The model's tokenizer cannot be loaded."""


@dataclass
class Progress:
    """Examples done so far, shared between the tokenizing loop and the reporting thread."""

    done: int = 0
    total: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def read_split(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL split as mlx-lm reads it (each line one JSON object), with line-exact errors."""
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                example = json.loads(line)
            except json.JSONDecodeError as exc:
                what = "a blank line" if not line.strip() else f"not valid JSON ({exc.msg}, column {exc.colno})"
                raise DatasetFileError(f"{path.name} line {number}: {what}") from None
            if not isinstance(example, dict):
                raise DatasetFileError(f"{path.name} line {number}: expected a JSON object, got "
                                       f"{type(example).__name__}")
            examples.append(example)
    return examples


def model_folder(model: str) -> Path:
    """A local model folder as is; a hub id from the Hugging Face cache (or hub), tokenizer files only."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder: it has no config.json")
        return path
    if model.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"model folder {path} does not exist")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=TOKENIZER_FILES))


def load_tokenizer(model: str) -> Any:
    """The TokenizerWrapper mlx_lm.utils.load would return for this model."""
    from mlx_lm.utils import load_config
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    folder = model_folder(model)
    return mlx_load_tokenizer(folder, eos_token_ids=load_config(folder).get("eos_token_id"))


def split_lengths(
    name: str, examples: list[dict[str, Any]], tokenizer: Any, on_example: Callable[[], None]
) -> list[int]:
    """Token lengths of one split through mlx-lm's dataset classes (mask_prompt does not change a length)."""
    if not examples:
        return []
    from mlx_lm.tuner.datasets import create_dataset

    try:
        dataset = create_dataset(examples, tokenizer, SimpleNamespace(mask_prompt=False))
    except ValueError as exc:
        keys = ", ".join(sorted(examples[0])) or "none"
        raise DatasetFileError(
            f"{name}.jsonl line 1: {exc.args[0].splitlines()[0]} (keys: {keys}; expected 'text', 'messages',"
            " or 'prompt' and 'completion')"
        ) from None
    lengths = []
    for index in range(len(dataset)):
        try:
            tokens, _offset = dataset.process(dataset[index])
        except Exception as exc:
            raise DatasetFileError(f"{name}.jsonl line {index + 1}: cannot be tokenized: "
                                   f"{type(exc).__name__}: {exc}") from None
        lengths.append(len(tokens))
        on_example()
    return lengths


def length_counts(lengths: list[int]) -> list[list[int]]:
    """[[length, count], ...] ascending: a compact, exact record of a split."""
    return [[length, count] for length, count in sorted(Counter(lengths).items())]


@contextmanager
def reporting(db_path: Path, job_id: int, progress: Progress) -> Iterator[None]:
    """Writes done/total and the heartbeat every REPORT_EVERY_S until the block ends."""

    def loop() -> None:
        conn = connect(db_path)
        try:
            while True:
                stopping = progress.stop.wait(REPORT_EVERY_S)
                with contextlib.suppress(sqlite3.Error):  # a busy database costs one report, never the job
                    conn.execute("UPDATE tokenstatsjob SET done = ?, total = ?, heartbeat_at = ? WHERE id = ?",
                                 (progress.done, progress.total, now_text(), job_id))
                if stopping:
                    return
        finally:
            conn.close()

    thread = threading.Thread(target=loop, name="token-stats-report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        progress.stop.set()
        thread.join()


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The error as one readable line (a message over several lines is joined; a very long one is cut)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if isinstance(exc, DatasetFileError | FileNotFoundError | TokenizerError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def compute(dataset_dir: Path, model: str, progress: Progress) -> dict[str, Any]:
    """The job's result: per split, the number of examples and their length counts."""
    if not (dataset_dir / "train.jsonl").is_file():
        raise FileNotFoundError(f"data folder {dataset_dir} has no train.jsonl")
    splits = {name: read_split(dataset_dir / f"{name}.jsonl") for name in SPLITS
              if (dataset_dir / f"{name}.jsonl").is_file()}
    progress.total = sum(len(examples) for examples in splits.values())
    try:
        tokenizer = load_tokenizer(model)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise TokenizerError(f"cannot load the tokenizer of {model}: {type(exc).__name__}: {exc}") from exc

    def one_done() -> None:
        progress.done += 1

    result: dict[str, Any] = {"splits": {}}
    for name, examples in splits.items():
        lengths = split_lengths(name, examples, tokenizer, one_done)
        result["splits"][name] = {"examples": len(lengths), "lengths": length_counts(lengths)}
    return result


def run_token_stats(db_path: Path, job_id: int) -> int:
    conn = connect(db_path)
    try:
        row = conn.execute("SELECT dataset_path, model FROM tokenstatsjob WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            sys.stderr.write(f"worker: no token statistics job {job_id} in {db_path}\n")
            return 2
        conn.execute("UPDATE tokenstatsjob SET status = 'running', started_at = ?, heartbeat_at = ?, pid = ?"
                     " WHERE id = ?", (now_text(), now_text(), os.getpid(), job_id))
        progress = Progress()
        try:
            with reporting(db_path, job_id, progress):
                result = compute(Path(row[0]), row[1], progress)
        except BaseException as exc:  # every failure is recorded, readable, with its traceback
            conn.execute("UPDATE tokenstatsjob SET status = 'failed', error = ?, traceback = ?, finished_at = ?,"
                         " heartbeat_at = ? WHERE id = ?",
                         (one_line(exc), traceback.format_exc(), now_text(), now_text(), job_id))
            sys.stderr.write(traceback.format_exc())
            return 1
        conn.execute("UPDATE tokenstatsjob SET status = 'completed', done = ?, total = ?, result_json = ?,"
                     " finished_at = ?, heartbeat_at = ? WHERE id = ?",
                     (progress.done, progress.total, json.dumps(result), now_text(), now_text(), job_id))
        return 0
    finally:
        conn.close()
