"""Scoring generated answers: parsing, field kinds, per-field scores and the task figures (pure functions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.contract.answers import (
    ASSISTANT_MARKER,
    FieldKind,
    answer_format,
    field_kinds,
    normalize,
    parse_answer,
    rank_examples,
    read_number,
    score_example,
    split_example,
    task_result,
    token_f1,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_TEST = PROJECT_DIR / "data" / "contact-center" / "test.jsonl"

LINES_REF = "Issue: plan upgrade\nCSAT: 3/5\nChurn risk: low\nJourney: first contact\n" \
            "Coaching: Recap the resolution and next steps before ending the call."
KINDS: dict[str, FieldKind] = {"Issue": "category", "CSAT": "number", "Churn risk": "category",
                               "Journey": "category", "Coaching": "text"}


# --- split_example ---------------------------------------------------------------------------------------------

def test_chat_prompt_is_everything_before_the_last_assistant_message() -> None:
    example = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Issue?", "name": "x"},
        {"role": "assistant", "content": "Issue: billing"},
        {"role": "user", "content": "thanks"},
    ], "tools": [{"type": "function"}]}
    prompt, reference = split_example(example) or ([], "")
    assert reference == "Issue: billing"
    assert prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Issue?"}]


def test_completion_example_is_one_user_message() -> None:
    assert split_example({"prompt": "Q?", "completion": "A."}) == ([{"role": "user", "content": "Q?"}], "A.")
    assert split_example({"input": "Q?", "output": "A."}, prompt_feature="input", completion_feature="output") == (
        [{"role": "user", "content": "Q?"}], "A.")


def test_text_examples_split_at_the_last_assistant_marker_into_a_raw_prompt_and_the_reference() -> None:
    text = "<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nIssue?\n<|assistant|>\nIssue: billing\nCSAT: 2/5\n"
    assert split_example({"text": text}) == (
        "<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nIssue?\n<|assistant|>", "Issue: billing\nCSAT: 2/5")
    assert split_example({"body": "Q <|assistant|> A"}, text_feature="body") == ("Q <|assistant|>", "A")
    assert split_example({"body": "Q <|assistant|> A"}) is None  # the run's text key, not another


def test_the_seed_shaped_answers_are_scored_field_by_field() -> None:
    from worker.seed_shaped import ASSISTANT_TAG, FIELDS, answer_text

    assert ASSISTANT_TAG == ASSISTANT_MARKER  # the generator writes the marker the split looks for
    analyses = [{"Issue": issue, "CSAT": csat, "Churn risk": risk, "Journey": "first contact",
                 "Coaching": "Strong call: keep confirming the next steps with the customer."}
                for issue, csat, risk in (("plan upgrade", "4/5", "low"), ("billing", "2/5", "high"),
                                          ("outage", "3/5", "low"), ("billing", "4/5", "high"))]
    references = [split_example({"text": f"<|user|>\nAnalyze.\n<|assistant|>\n{answer_text(a)}"}) or ("", "")
                  for a in analyses]
    answers = [reference for _prompt, reference in references]
    assert answer_format(answers) == "lines"
    kinds = field_kinds([parse_answer(answer) or {} for answer in answers])
    assert list(kinds) == list(FIELDS)
    assert kinds["Quality"] == kinds["CSAT"] == "number" and kinds["Churn risk"] == "category"
    outcome = score_example(answers[0], answers[0].replace("CSAT: 4/5", "CSAT: 2 out of 5"), kinds)
    assert outcome.fields["Quality"].score == 1 and outcome.fields["CSAT"].score == 0
    assert outcome.score == pytest.approx(5 / 6)


def test_text_examples_without_the_marker_and_chats_without_an_answer_have_no_reference() -> None:
    assert split_example({"text": "just text"}) is None
    assert split_example({"messages": [{"role": "user", "content": "Hi"}]}) is None
    assert split_example({"conversation": [{"role": "assistant", "content": "A"}]}) is None
    assert split_example({"conversation": [{"role": "assistant", "content": "A"}]}, chat_feature="conversation") == (
        [], "A")


# --- parse_answer -----------------------------------------------------------------------------------------------

def test_lines_answer_keeps_key_spelling_and_ignores_chatter() -> None:
    text = "Sure, here is my analysis of the call.\n\n" + LINES_REF + "\nHope this helps!"
    assert parse_answer(text) == {"Issue": "plan upgrade", "CSAT": "3/5", "Churn risk": "low",
                                  "Journey": "first contact",
                                  "Coaching": "Recap the resolution and next steps before ending the call."}


def test_repeated_key_keeps_the_first_value_and_value_may_hold_colons() -> None:
    assert parse_answer("Issue: billing\nIssue: shipping\nTime: 10:30") == {"Issue": "billing", "Time": "10:30"}


def test_a_key_is_one_to_four_words() -> None:
    assert parse_answer("one two three four: yes\none two three four five: no") == {"one two three four": "yes"}
    assert parse_answer("- Churn risk: high") == {"Churn risk": "high"}


def test_json_answer_values_as_text() -> None:
    text = '{"issue": "billing", "csat": 4, "score": 4.50, "vip": true, "note": null, "tags": [1, "a b"]}'
    assert parse_answer(text) == {"issue": "billing", "csat": "4", "score": "4.50", "vip": "true", "note": "null",
                                  "tags": '[1,"a b"]'}


def test_json_inside_fences_or_after_a_sentence() -> None:
    fenced = 'Here is the result:\n```json\n{"issue": "billing", "csat": 4}\n```\nAnything else?'
    assert parse_answer(fenced) == {"issue": "billing", "csat": "4"}
    assert parse_answer('I use {braces} loosely. {"a": {"b": 1}}') == {"a": '{"b":1}'}


def test_no_fields_is_none() -> None:
    assert parse_answer("") is None
    assert parse_answer("The customer wants a refund") is None
    assert parse_answer("{}") is None


# --- answer_format ----------------------------------------------------------------------------------------------

def test_answer_format_needs_ninety_percent() -> None:
    json_ref, lines_ref = '{"a": 1}', "A: 1\nB: 2"
    assert answer_format([json_ref] * 9 + ["free text"]) == "json"
    assert answer_format([json_ref] * 8 + ["free text"] * 2) == "plain"
    assert answer_format([lines_ref] * 9 + ["Only: one"]) == "lines"
    assert answer_format([lines_ref] * 8 + ["Only: one"] * 2) == "plain"
    assert answer_format([]) == "plain"


# --- read_number, normalize, token_f1 ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "number"), [
    ("3", 3.0), ("-2.5", -2.5), ("1,200", 1200.0), ("3/5", 3.0), ("4 out of 5", 4.0), ("80%", 80.0),
    (" 7 ", 7.0), ("3/x", 3.0), (".5", 0.5), ("3.", 3.0),
    ("three", None), ("", None), ("high", None), ("n/a", None), ("2024-01-05", None), ("10:30", None),
    ("1.2.3", None), ("v2", None),
])
def test_read_number(text: str, number: float | None) -> None:
    assert read_number(text) == number


def test_normalize() -> None:
    assert normalize("  First   Contact. ") == "first contact"
    assert normalize("LOW\n") == "low"


def test_token_f1_by_hand() -> None:
    reference = "Recap the resolution and next steps before ending the call."
    # 4 predicted words, all in the 10 reference words: P = 1, R = 0.4, F1 = 0.8 / 1.4
    assert token_f1("recap THE next steps", reference) == pytest.approx(4 / 7)
    # 'the' twice in the reference, once predicted: common = the, login, page = 3; P = 3/4, R = 3/7
    assert token_f1("Use the login page", "Reset the password from the login page") == pytest.approx(6 / 11)
    assert token_f1("Recap, the resolution!", "recap the resolution") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0
    assert token_f1("nothing shared", "other words") == 0.0


# --- field_kinds ------------------------------------------------------------------------------------------------

def sample_references() -> list[str]:
    references = []
    for line in SAMPLE_TEST.read_text().splitlines():
        split = split_example(json.loads(line))
        assert split is not None
        references.append(split[1])
    return references


def test_field_kinds_of_the_sample_dataset() -> None:
    references = sample_references()
    assert answer_format(references) == "lines"
    parsed = [parse_answer(r) or {} for r in references]
    assert field_kinds(parsed) == KINDS
    # Coaching tips repeat (few distinct values): only their length keeps them text rather than category.
    coaching = [p["Coaching"] for p in parsed]
    assert len(set(coaching)) <= len(coaching) // 2


def test_field_kinds_rules() -> None:
    refs = [{"tier": "gold", "name": "Ann Lee", "age": "31", "note": "x"},
            {"tier": "silver", "name": "Bo Chan", "age": "1,200"},
            {"tier": "Gold.", "name": "Cy Diaz", "age": "n/a"},
            {"tier": "gold", "name": "Di Ek", "age": "4"}]
    assert field_kinds(refs) == {"tier": "category", "name": "text", "age": "text", "note": "category"}
    assert field_kinds([{"a": "3/5"}, {"a": "4 out of 5"}]) == {"a": "number"}
    long_repeated = [{"tip": "say the next steps before you end the call"}] * 6
    assert field_kinds(long_repeated) == {"tip": "text"}
    # keys match as score_example matches them; the first spelling is kept
    assert field_kinds([{"Churn risk": "low"}, {"churn_risk": "high"}]) == {"Churn risk": "category"}


# --- score_example ----------------------------------------------------------------------------------------------

def test_lines_answer_with_case_and_whitespace_differences_is_exact() -> None:
    output = "issue:  Plan Upgrade\nCSAT: 3\nCHURN RISK: Low.\njourney: first  contact\n" \
             "coaching: Recap the resolution and next steps before ending the call"
    outcome = score_example(LINES_REF, output, KINDS)
    assert outcome.parsed and outcome.complete and outcome.exact
    assert outcome.score == 1.0
    assert outcome.fields["CSAT"].error == 0.0


def test_json_answer_keys_match_ignoring_case_and_underscores() -> None:
    reference = '{"issue": "billing", "csat": 4, "churn_risk": "low"}'
    output = 'Here is the analysis:\n```json\n{"Issue": " BILLING ", "CSAT": "4", "churn risk": "Low.", "x": 1}\n```'
    kinds: dict[str, FieldKind] = {"issue": "category", "csat": "number", "churn_risk": "category"}
    outcome = score_example(reference, output, kinds)
    assert outcome.exact and outcome.complete
    assert list(outcome.fields) == ["issue", "csat", "churn_risk"]


def test_missing_fields_and_malformed_numbers() -> None:
    output = "Issue: billing\nCSAT: three\nChurn risk: low"
    outcome = score_example(LINES_REF, output, KINDS)
    assert outcome.parsed and not outcome.complete and not outcome.exact
    assert outcome.fields["Issue"].score == 0.0
    assert outcome.fields["CSAT"].as_json() == {"kind": "number", "expected": "3/5", "got": "three", "score": 0.0,
                                                "correct": False, "error": None}
    assert outcome.fields["Journey"].got is None
    assert outcome.fields["Coaching"].as_json() == {"kind": "text", "expected": outcome.fields["Coaching"].expected,
                                                    "got": None, "score": 0.0, "f1": 0.0}
    assert outcome.score == pytest.approx(1 / 5)  # only Churn risk right


def test_number_error_and_unreadable_forms() -> None:
    assert score_example(LINES_REF, "CSAT: 5 out of 5", KINDS).fields["CSAT"].error == 2.0
    assert score_example(LINES_REF, "CSAT: 3/x", KINDS).fields["CSAT"].score == 1.0
    empty = score_example(LINES_REF, "CSAT:", KINDS).fields["CSAT"]
    assert (empty.got, empty.score, empty.error) == ("", 0.0, None)


def test_field_missing_from_kinds_is_text() -> None:
    outcome = score_example("Issue: billing\nSummary: asked for a refund", "Summary: a refund", {"Issue": "category"})
    assert outcome.fields["Summary"].kind == "text"
    assert outcome.fields["Summary"].score == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_unparsed_output_and_example_as_json() -> None:
    outcome = score_example(LINES_REF, "I cannot tell from this call", KINDS)
    assert not outcome.parsed and not outcome.complete and outcome.score == 0.0
    data = outcome.as_json()
    assert set(data) == {"parsed", "complete", "score", "exact", "fields"}
    assert data["fields"]["Issue"] == {"kind": "category", "expected": "plan upgrade", "got": None, "score": 0.0,
                                       "correct": False}


def test_plain_answers() -> None:
    exact = score_example("The order ships Monday.", "the order  ships monday", None)
    assert exact.parsed and exact.complete and exact.exact and exact.score == 1.0
    assert list(exact.fields) == ["answer"]
    partial = score_example("Reset the password from the login page", "Use the login page", None)
    assert not partial.exact and partial.score == pytest.approx(6 / 11)
    blank = score_example("Yes", "  ", None)
    assert not blank.parsed and not blank.complete and blank.fields["answer"].got is None and blank.score == 0.0


# --- task_result ------------------------------------------------------------------------------------------------

def test_task_result_structured_by_hand() -> None:
    kinds: dict[str, FieldKind] = {"Issue": "category", "CSAT": "number", "Coaching": "text"}
    r1 = "Issue: billing\nCSAT: 4/5\nCoaching: Recap the next steps."
    r2 = "Issue: shipping delay\nCSAT: 2/5\nCoaching: Apologize once and give a date."
    r3 = "Issue: billing\nCSAT: 5/5\nCoaching: Keep it up."
    outcomes = [
        score_example(r1, "Issue: Billing\nCSAT: 4/5\nCoaching: recap the next steps", kinds),  # all right
        score_example(r2, "Issue: billing\nCSAT: 3\nCoaching: give a date", kinds),  # 0, 0 (error 1), F1 2/3
        score_example(r3, "I think the issue is billing.\nCSAT: five", kinds),  # parsed, incomplete, all 0
        score_example(r1, "", kinds),  # nothing
    ]
    result = task_result(outcomes, kinds, "lines")
    assert result["format"] == "lines" and result["examples"] == 4
    assert (result["parsed"], result["complete"], result["exact"]) == (0.75, 0.5, 0.25)
    assert result["fields"] == {
        "Issue": {"kind": "category", "accuracy": 0.25},
        "CSAT": {"kind": "number", "mae": 0.5, "accuracy": 0.25, "answered": 2},
        "Coaching": {"kind": "text", "f1": pytest.approx(5 / 12)},
    }
    assert result["score"] == pytest.approx((0.25 + 0.25 + 5 / 12) / 3)


def test_task_result_plain_by_hand() -> None:
    pairs = [("The order ships Monday.", "the order ships monday"),
             ("Reset the password from the login page", "Use the login page"), ("Yes", "")]
    result = task_result([score_example(r, o, None) for r, o in pairs], None, "plain")
    assert result["examples"] == 3
    assert result["parsed"] == pytest.approx(2 / 3) and result["complete"] == pytest.approx(2 / 3)
    assert result["exact"] == pytest.approx(1 / 3)
    assert result["fields"] == {"answer": {"kind": "text", "f1": pytest.approx(17 / 33), "exact": pytest.approx(1 / 3)}}
    assert result["score"] == pytest.approx(17 / 33)


def test_task_result_no_outcomes_and_no_readable_number() -> None:
    assert task_result([], KINDS, "lines") == {"format": "lines", "examples": 0, "parsed": 0.0, "complete": 0.0,
                                               "fields": {}, "exact": 0.0, "score": 0.0}
    result = task_result([score_example("CSAT: 4", "CSAT: four", {"CSAT": "number"})], {"CSAT": "number"}, "lines")
    assert result["fields"]["CSAT"] == {"kind": "number", "mae": None, "accuracy": 0.0, "answered": 0}


# --- rank_examples ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    line: int
    score: float


def test_rank_examples_worst_and_best_ties_by_line() -> None:
    rows = [Row(5, 0.5), Row(1, 1.0), Row(3, 0.0), Row(2, 0.5), Row(4, 1.0)]
    worst = rank_examples(rows, lambda r: r.score, lambda r: r.line, "worst", 3)
    best = rank_examples(rows, lambda r: r.score, lambda r: r.line, "best", 3)
    assert [r.line for r in worst] == [3, 2, 5]
    assert [r.line for r in best] == [1, 4, 2]
    assert rank_examples(rows, lambda r: r.score, lambda r: r.line, "best", 0) == []
