"""The `token_stats` job (worker/job.py): the token length of every example, as mlx-lm tokenizes it.

The job's params name a dataset folder and a model. The tokenizer is loaded the way
mlx_lm.utils.load loads it (local folder or the Hugging Face cache), and each example goes through
mlx-lm's own dataset classes (`create_dataset(...).process`: text gets an EOS appended, chat and
completions go through `apply_chat_template`), so a length here is the length the trainer sees before
it truncates to max_seq_length.

Progress counts examples; a cancel is seen between two examples (a partial count is not kept: it
would describe some of the data as if it were all of it). The result is compact: per split, each
distinct length with its count.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app.contract.confinement import PathNotAllowed, open_confined
from app.contract.jsonl import BLANK, not_an_object, not_json
from app.contract.kinds import TokenStatsParams
from app.contract.paths import confine_model_files, data_roots
from app.contract.settings import Settings
from worker.job import JobContext, JobInputError

SPLITS = ("train", "valid", "test")
# What mlx_lm.utils.load_tokenizer fetches of a hub model (no weights).
TOKENIZER_FILES = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl",
                   "*.jinja"]


class DatasetFileError(JobInputError, ValueError):
    """A problem in one line of one split file."""


class TokenizerError(JobInputError, RuntimeError):
    """The model's tokenizer cannot be loaded."""


def read_split(path: Path, roots: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """Every line of a JSONL split as mlx-lm reads it (each line one JSON object), with line-exact errors; the file
    opened once within `roots` (the data folders; None: its own folder), a link out of them refused unread."""
    examples = []
    with io.TextIOWrapper(open_confined(path, [path.parent] if roots is None else roots), encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():  # the dataset check's words for the same line (app/contract/jsonl.py)
                raise DatasetFileError(f"{path.name} line {number}: {BLANK}")
            try:
                example = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFileError(f"{path.name} line {number}: {not_json(exc)}") from None
            if (problem := not_an_object(example)) is not None:
                raise DatasetFileError(f"{path.name} line {number}: {problem}")
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


def load_tokenizer(model: str, settings: Settings | None = None) -> Any:
    """The TokenizerWrapper mlx_lm.utils.load would return for this model (a local folder's files confined to the
    model folders first)."""
    from mlx_lm.utils import load_config
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    folder = model_folder(model)
    confine_model_files(folder, settings or Settings())
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


def compute(dataset_dir: Path, model: str, ctx: JobContext) -> dict[str, Any]:
    """The job's result: per split, the number of examples and their length counts."""
    if not (dataset_dir / "train.jsonl").is_file():
        raise FileNotFoundError(f"data folder {dataset_dir} has no train.jsonl")
    roots = data_roots(ctx.settings)
    splits = {name: read_split(dataset_dir / f"{name}.jsonl", roots) for name in SPLITS
              if (dataset_dir / f"{name}.jsonl").is_file() or (dataset_dir / f"{name}.jsonl").is_symlink()}
    ctx.set_total(sum(len(examples) for examples in splits.values()), "examples")
    ctx.check_stop()
    try:
        tokenizer = load_tokenizer(model, ctx.settings)
    except (FileNotFoundError, PathNotAllowed):
        raise
    except Exception as exc:
        raise TokenizerError(f"cannot load the tokenizer of {model}: {type(exc).__name__}: {exc}") from exc

    def one_done() -> None:
        ctx.advance()
        ctx.check_stop()

    result: dict[str, Any] = {"splits": {}}
    for name, examples in splits.items():
        lengths = split_lengths(name, examples, tokenizer, one_done)
        result["splits"][name] = {"examples": len(lengths), "lengths": length_counts(lengths)}
    return result


def run(ctx: JobContext[TokenStatsParams]) -> dict[str, Any]:
    return compute(Path(ctx.params.data), ctx.params.model, ctx)
