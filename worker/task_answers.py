"""The task part of an `evaluate` job: greedy answers to a split's prompts, generated in batches, then scored.

Prompts are the examples' messages before the last assistant message (or a completion example's prompt), put
through the tokenizer's chat template with the generation prompt added, as a person would ask the fine-tuned
model; a text example's prompt (its text up to the assistant marker, answers.split_example) is tokenized raw, as
mlx-lm's text dataset tokenized the whole example in training, with no chat template. Answers come from mlx-lm's
batch generation (`mlx_lm.generate.BatchGenerator`, greedy), stopped at the tokenizer's end-of-sequence tokens or
after `max_tokens` new tokens. Scoring is app/contract/answers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.nn as nn

from app.contract.answers import (
    AnswerFormat,
    ExampleOutcome,
    FieldKind,
    answer_format,
    field_kinds,
    parse_answer,
    score_example,
    split_example,
)
from app.contract.run_config import RunConfig


@dataclass(frozen=True)
class TaskExample:
    """One prompt of the split: its line (1-based), the prompt as tokens and as text, the reference answer."""

    line: int
    tokens: list[int]
    prompt: str
    reference: str


@dataclass(frozen=True)
class References:
    """How the references are written, read once per job: their format and, when structured, each field's kind."""

    format: AnswerFormat
    kinds: dict[str, FieldKind] | None

    def score(self, reference: str, output: str) -> ExampleOutcome:
        return score_example(reference, output, self.kinds)


def feature_keys(config: RunConfig) -> dict[str, str]:
    """The run's prompt/completion/chat/text keys, as answers.split_example names them (defaults where unset)."""
    keys = {"prompt_feature": config.prompt_feature, "completion_feature": config.completion_feature,
            "chat_feature": config.chat_feature, "text_feature": config.text_feature}
    return {name: value for name, value in keys.items() if value is not None}


def task_examples(examples: Sequence[dict[str, Any]], tokenizer: Any, config: RunConfig,
                  max_examples: int) -> list[TaskExample]:
    """The first `max_examples` examples that have a prompt and a reference, with their prompts as the model is
    asked: chat-template prompts, or a text example's raw prompt."""
    keys = feature_keys(config)
    chosen: list[TaskExample] = []
    for line, example in enumerate(examples, start=1):
        if len(chosen) >= max_examples:
            break
        split = split_example(example, **keys)
        if split is None:
            continue
        prompt, reference = split
        if isinstance(prompt, str):
            chosen.append(TaskExample(line, raw_prompt_tokens(tokenizer, prompt), prompt, reference))
            continue
        tools = example.get("tools")
        tokens = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, return_dict=False)
        text = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False)
        chosen.append(TaskExample(line, [int(t) for t in tokens], str(text), reference))
    return chosen


def raw_prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """A text example's prompt as tokens, encoded as mlx-lm's TextDataset encodes a training text (the
    tokenizer's own special tokens, such as its start token, and no chat template)."""
    return [int(t) for t in tokenizer.encode(prompt)]


def read_references(references: Sequence[str]) -> References:
    """The references' format and field kinds (None for plain answers)."""
    fmt = answer_format(references)
    if fmt == "plain":
        return References(fmt, None)
    parsed = [fields for fields in (parse_answer(r) for r in references) if fields]
    return References(fmt, field_kinds(parsed))


def generate_answers(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], max_tokens: int, batch_size: int,
    on_answer: Callable[[], None] | None = None, check_stop: Callable[[], None] | None = None,
) -> list[list[int]]:
    """Greedy answers (token ids, end-of-sequence token excluded) to every prompt, `batch_size` generated together.

    on_answer is called once per finished answer; check_stop between generation steps (it raises to end early).
    """
    from mlx_lm.generate import BatchGenerator

    if not prompts:
        return []
    model.eval()
    generator = BatchGenerator(model, max_tokens=max_tokens, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
                               completion_batch_size=batch_size, prefill_batch_size=batch_size)
    try:
        uids = generator.insert([list(p) for p in prompts])
        answers: dict[int, list[int]] = {uid: [] for uid in uids}
        while responses := generator.next_generated():
            for response in responses:
                if response.finish_reason != "stop":
                    answers[response.uid].append(int(response.token))
                if response.finish_reason is not None and on_answer is not None:
                    on_answer()
            if check_stop is not None:
                check_stop()
    finally:
        generator.close()
    return [answers[uid] for uid in uids]


def decode(tokenizer: Any, tokens: Sequence[int]) -> str:
    """An answer as text, stripped."""
    return str(tokenizer.decode(list(tokens))).strip()
