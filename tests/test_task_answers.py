"""The prompts task evaluation asks the model: chat and completions examples through the chat template, text
examples raw, as mlx-lm's text dataset tokenized them in training (the tiny model's real tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlx_lm.tuner.datasets import TextDataset
from mlx_lm.utils import load_tokenizer

from app.contract.run_config import RunConfig
from worker.task_answers import task_examples

SEED_TEXT = ("<|user|>\nAnalyze this contact-center conversation:\nAgent: Hello.\nCustomer: My bill is wrong.\n"
             "<|assistant|>\nQuality: 9/10\nIssue: billing\nCSAT: 3/5")


@pytest.fixture(scope="module")
def tokenizer(default_model: Path) -> Any:
    return load_tokenizer(default_model)


def test_a_text_prompt_is_the_training_tokens_up_to_the_marker_with_no_chat_template(tokenizer: Any) -> None:
    examples = [{"text": "no marker: nothing to ask"}, {"text": SEED_TEXT}]
    [example] = task_examples(examples, tokenizer, RunConfig(), max_examples=4)
    assert example.line == 2
    assert example.prompt == SEED_TEXT[:SEED_TEXT.index("\nQuality")]
    assert example.reference == "Quality: 9/10\nIssue: billing\nCSAT: 3/5"
    trained, _offset = TextDataset([{"text": SEED_TEXT}], tokenizer).process({"text": SEED_TEXT})
    assert example.tokens == trained[:len(example.tokens)]  # the very tokens training saw, up to the answer
    assert tokenizer.decode(trained[len(example.tokens):]).strip().startswith("Quality: 9/10")


def test_chat_and_completions_prompts_still_go_through_the_chat_template(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Issue?"}]
    chat = [{"messages": [*messages, {"role": "assistant", "content": "Issue: billing"}]},
            {"prompt": "Issue?", "completion": "Issue: billing"}]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    for example in task_examples(chat, tokenizer, RunConfig(), max_examples=4):
        assert example.tokens == list(templated) and example.reference == "Issue: billing"
        assert example.prompt != "Issue?"


def test_the_runs_text_key_is_the_one_read(tokenizer: Any) -> None:
    config = RunConfig(text_feature="body")
    assert task_examples([{"text": SEED_TEXT}], tokenizer, config, max_examples=4) == []
    assert len(task_examples([{"body": SEED_TEXT}], tokenizer, config, max_examples=4)) == 1


def test_the_playground_takes_no_prompt_from_a_text_example(tmp_path: Path) -> None:
    """Its prompt is raw text, not the system and user messages the playground fills in."""
    from app.playground.view import read_example
    from app.tables import Run

    (tmp_path / "test.jsonl").write_text(json.dumps({"text": SEED_TEXT}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Issue?"}, {"role": "assistant", "content": "Issue: billing"}]}))
    run = Run(id=1, name="r", config_json=json.dumps({"data": str(tmp_path)}))
    assert "has no prompt to take" in (read_example(run, "test", 1).problem or "")
    assert read_example(run, "test", 2).prompt == "Issue?"
