"""Seed-shaped data: lengths with the seed's mean, share over the limit and longest, records in the seed's format
whose answers carry its fields, and conversations that reach their drawn length under a real tokenizer."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from worker.sample_data import parse_analysis
from worker.seed_shaped import (
    ASSISTANT_TAG,
    FIELDS,
    SEED_LIMIT,
    SEED_LONGEST,
    USER_TAG,
    make_example,
    seed_lengths,
    write_seed_shaped,
)


def test_lengths_have_the_seeds_mean_share_over_the_limit_and_longest() -> None:
    lengths = seed_lengths(1500, seed=0)
    assert statistics.mean(min(n, SEED_LIMIT) for n in lengths) == pytest.approx(1159, rel=0.01)
    assert sum(n > SEED_LIMIT for n in lengths) == 24
    assert max(lengths) == SEED_LONGEST
    assert seed_lengths(1500, seed=0) == lengths and seed_lengths(1500, seed=1) != lengths
    half = seed_lengths(1500, seed=0, scale=0.5)
    assert sum(n > SEED_LIMIT // 2 for n in half) == 24
    assert statistics.mean(min(n, SEED_LIMIT // 2) for n in half) == pytest.approx(1159 / 2, rel=0.01)


def words(text: str) -> int:
    return len(text.split())


def test_a_record_reaches_its_length_and_its_answer_carries_the_fields() -> None:
    example = make_example(random.Random(4), 900, words)
    assert 880 <= example.tokens <= 900
    user, _, answer = example.text.partition(f"\n{ASSISTANT_TAG}\n")
    assert user.startswith(f"{USER_TAG}\n") and "Agent:" in user and "Customer:" in user
    fields = dict(line.split(": ", 1) for line in answer.splitlines())
    assert tuple(fields) == FIELDS
    assert fields["Quality"].endswith("/10")
    assert parse_analysis(answer).keys() <= set(FIELDS)


def test_written_splits_are_text_records_counted_by_a_real_tokenizer(tmp_path: Path, default_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    counted = write_seed_shaped(tmp_path, count, scale=0.25, sizes={"train": 60, "valid": 8})
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and all(set(row) == {"text"} for row in rows)
    assert [count(row["text"]) for row in rows] == counted["train"]
    assert len((tmp_path / "valid.jsonl").read_text().splitlines()) == 8
    assert max(counted["train"]) > 3 * statistics.median(counted["train"])  # the long tail is there
