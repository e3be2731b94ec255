"""The synthetic contact-center dataset: deterministic, well-formed, and its analysis follows the transcript."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from worker.sample_data import (
    CLOSINGS,
    CURT_GOODBYES,
    ESCALATIONS,
    FIELDS,
    ISSUES,
    NO_EMPATHY,
    NO_OWNERSHIP,
    REPEAT_LINES,
    SYSTEM_PROMPT,
    THREATS,
    USER_PREFIX,
    generate_examples,
    generic_chats,
    generic_corpus,
    parse_analysis,
    write_sample_dataset,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
SPLITS = ("train", "valid", "test")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cc")
    write_sample_dataset(out, seed=3, n_train=120, n_valid=20, n_test=20)
    return out


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    write_sample_dataset(tmp_path / "a", seed=7, n_train=50, n_valid=10, n_test=10)
    write_sample_dataset(tmp_path / "b", seed=7, n_train=50, n_valid=10, n_test=10)
    write_sample_dataset(tmp_path / "c", seed=8, n_train=50, n_valid=10, n_test=10)
    for split in SPLITS:
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a != (tmp_path / "c" / f"{split}.jsonl").read_bytes()
    assert generic_corpus(2, 30) == generic_corpus(2, 30)
    assert generic_chats(2, 30) == generic_chats(2, 30)


def test_files_are_clean_jsonl(small_dataset: Path) -> None:
    sizes = {}
    for split in SPLITS:
        text = (small_dataset / f"{split}.jsonl").read_text(encoding="utf-8")
        assert not text.endswith("\n") and "\n\n" not in text and text.strip() == text
        sizes[split] = len(text.split("\n"))
    assert sizes == {"train": 120, "valid": 20, "test": 20}
    assert not [p.name for p in small_dataset.iterdir() if p.name.endswith(".tmp")]


def test_every_line_is_a_three_role_chat(small_dataset: Path) -> None:
    for split in SPLITS:
        for row in read_rows(small_dataset / f"{split}.jsonl"):
            messages = row["messages"]
            assert [m["role"] for m in messages] == ["system", "user", "assistant"]
            assert all(isinstance(m["content"], str) and m["content"] for m in messages)
            assert messages[0]["content"] == SYSTEM_PROMPT
            assert messages[1]["content"].startswith(USER_PREFIX)
            transcript = messages[1]["content"][len(USER_PREFIX):].split("\n")
            assert len(transcript) >= 6
            assert all(re.match(r"^(Agent|Customer): \S", line) for line in transcript)
            assert list(parse_analysis(messages[2]["content"])) == list(FIELDS)


def test_splits_are_disjoint(small_dataset: Path) -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for row in read_rows(small_dataset / f"{split}.jsonl"):
            key = row["messages"][1]["content"]
            assert key not in seen, f"example in both {seen.get(key)} and {split}"
            seen[key] = split


def expected_analysis(transcript: str) -> dict[str, str]:
    """Re-derive the analysis from the transcript text alone, by the documented rules."""
    lines = transcript.split("\n")
    customer = [line for line in lines if line.startswith("Customer: ")]
    agent = [line for line in lines if line.startswith("Agent: ")]
    issue = next(name for name, spec in ISSUES.items()
                 if any(_matches(template, customer[0]) for template in spec["open"]))
    csat = next(score for score, texts in CLOSINGS.items() if customer[-1][len("Customer: "):] in texts)
    escalation = any(text in transcript for text in ESCALATIONS)
    repeat = any(text in transcript for text in REPEAT_LINES)
    journey = "escalation" if escalation else "repeat contact" if repeat else "first contact"
    threat = issue == "cancellation request" or any(text in transcript for text in THREATS)
    resolved = any(_matches(t, line) for t in ISSUES[issue]["fixed"] for line in agent)
    if (threat and not resolved) or csat == 1:
        churn = "high"
    elif threat or csat == 2 or journey != "first contact":
        churn = "medium"
    else:
        churn = "low"
    topic = ISSUES[issue]["topic"]
    if any(text in transcript for text in NO_EMPATHY):
        coaching = f"Acknowledge the frustration before explaining the {topic}."
    elif ISSUES[issue]["jargon"] in transcript:
        coaching = f"Explain the {topic} in plain words instead of technical jargon."
    elif any(text in transcript for text in NO_OWNERSHIP):
        coaching = f"Take ownership of the {topic} instead of passing it to another team."
    elif agent[-1][len("Agent: "):] in CURT_GOODBYES:
        coaching = "Recap the resolution and next steps before ending the call."
    else:
        coaching = "Strong call: keep confirming the next steps with the customer."
    return {"Issue": issue, "CSAT": f"{csat}/5", "Churn risk": churn, "Journey": journey,
            "Coaching": coaching}


def _matches(template: str, line: str) -> bool:
    pattern = re.escape(template)
    pattern = re.sub(r"\\\{[a-z]+\\\}", ".+?", pattern)
    return re.search(pattern, line) is not None


def test_analysis_follows_the_transcript() -> None:
    examples = generate_examples(11, 400)
    for example in examples:
        user, answer = example["messages"][1]["content"], example["messages"][2]["content"]
        assert parse_analysis(answer) == expected_analysis(user[len(USER_PREFIX):]), user


def test_fields_vary() -> None:
    values: dict[str, set[str]] = {name: set() for name in FIELDS}
    for example in generate_examples(5, 300):
        for name, value in parse_analysis(example["messages"][2]["content"]).items():
            values[name].add(value)
    assert len(values["Issue"]) == len(ISSUES)
    assert values["CSAT"] == {f"{n}/5" for n in range(1, 6)}
    assert values["Churn risk"] == {"low", "medium", "high"}
    assert values["Journey"] == {"first contact", "repeat contact", "escalation"}
    assert len(values["Coaching"]) >= 10


def test_generic_text_has_no_analysis() -> None:
    texts = generic_corpus(0, 200)
    texts += [m["content"] for chat in generic_chats(0, 200) for m in chat]
    for text in texts:
        assert not parse_analysis(text)
        assert USER_PREFIX.strip() not in text
    assert len(set(texts)) > 150


def test_committed_dataset_is_the_default_output(tmp_path: Path) -> None:
    committed = PROJECT_DIR / "data" / "contact-center"
    write_sample_dataset(tmp_path)
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (committed / f"{split}.jsonl").read_bytes()
    total = sum((committed / f"{split}.jsonl").stat().st_size for split in SPLITS)
    assert total < 3_000_000

