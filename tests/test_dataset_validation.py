"""The dataset validator on hand-made bad files: every error kind names its file, line and field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from app.datasets.preview import ChatTemplate, render_example, split_at_prompt
from app.datasets.registry import dataset_problem
from app.datasets.validation import FeatureKeys, check_example, validate_dataset
from app.db import make_engine

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE = PROJECT_DIR / "data" / "contact-center"


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD_CHAT = chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"))


def lines(*examples: Any) -> str:
    return "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in examples)


def make(tmp_path: Path, train: str | bytes | None = None, valid: str | bytes | None = None,
         test: str | bytes | None = None) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    default = lines(GOOD_CHAT, GOOD_CHAT)
    for name, content in (("train", default if train is None else train),
                          ("valid", default if valid is None else valid), ("test", test)):
        if content is None:
            continue
        path = folder / f"{name}.jsonl"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def errors_of(folder: Path, mask_prompt: bool = False) -> list[str]:
    return [str(issue) for issue in validate_dataset(folder, mask_prompt=mask_prompt).errors.issues]


def test_the_sample_dataset_is_clean() -> None:
    report = validate_dataset(SAMPLE)
    assert report.ok, report.summary()
    assert report.format == "chat"
    assert report.counts == {"train": 1200, "valid": 150, "test": 150}
    assert report.warnings.count == 0
    assert dataset_problem(SAMPLE) is None


def test_a_bad_role_is_named_with_file_line_and_field(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "agent", "content": "Hello"}]}
    folder = make(tmp_path, valid=lines(*([GOOD_CHAT] * 211), bad))
    assert errors_of(folder) == [
        "valid.jsonl line 212: 'messages'[1].role must be one of system/user/assistant/tool, got 'agent'",
        "valid.jsonl line 212: 'messages' has no assistant message: there is nothing to learn",
    ]


def test_json_syntax_errors(tmp_path: Path) -> None:
    folder = make(tmp_path, train=lines(GOOD_CHAT, '{"messages": [', '[1, 2]', '"text"'))
    assert errors_of(folder) == [
        "train.jsonl line 2: is not valid JSON: Expecting value (column 15)",
        "train.jsonl line 3: must be a JSON object, got array",
        "train.jsonl line 4: must be a JSON object, got string",
    ]


def test_blank_lines_are_errors_but_a_final_newline_is_not(tmp_path: Path) -> None:
    good = json.dumps(GOOD_CHAT)
    folder = make(tmp_path, train=f"{good}\n\n{good}\n   \n{good}\n")
    assert errors_of(folder) == [
        "train.jsonl line 2: is blank: every line must hold one JSON object",
        "train.jsonl line 4: is blank: every line must hold one JSON object",
    ]
    assert validate_dataset(folder).counts["train"] == 3
    assert validate_dataset(make(tmp_path, train=f"{good}\r\n{good}")).ok  # CRLF, no final newline


def test_a_file_mixing_formats_names_the_first_line_that_differs(tmp_path: Path) -> None:
    completion = {"prompt": "p", "completion": "c"}
    folder = make(tmp_path, train=lines(GOOD_CHAT, GOOD_CHAT, completion, {"text": "t"}, completion))
    assert errors_of(folder) == [
        "train.jsonl line 3: is completions format ('prompt' and 'completion') but line 1 is chat format: "
        "a file holds one format",
    ]


def test_chat_and_tools_lines_share_a_file(tmp_path: Path) -> None:
    tool_line = {**GOOD_CHAT, "tools": [{"type": "function", "function": {"name": "lookup"}}]}
    report = validate_dataset(make(tmp_path, train=lines(GOOD_CHAT, tool_line), valid=lines(tool_line)))
    assert report.ok, report.summary()
    assert report.splits["train"].format == "tools"


def test_splits_must_share_a_format(tmp_path: Path) -> None:
    folder = make(tmp_path, valid=lines({"prompt": "p", "completion": "c"}))
    assert errors_of(folder) == ["valid.jsonl: is completions format but train.jsonl is chat: every split needs "
                                 "the same format"]


def test_required_keys_and_types(tmp_path: Path) -> None:
    folder = make(tmp_path, train=lines(
        {"prompt": "p"},
        {"completion": "c"},
        {"input": "x", "output": "y"},
        {"messages": "hi"},
        {"messages": []},
        {"messages": ["hi", {"role": "assistant", "content": "ok"}]},
        {"messages": [{"content": "hi"}, {"role": "assistant"}]},
        {"messages": [{"role": 3, "content": "hi"}, {"role": "assistant", "content": ["a"]}]},
        {"prompt": 1, "completion": "c"},
        {"text": None},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": {}},
    ))
    assert validate_dataset(folder, keep=100).errors.count == 14
    assert [str(i) for i in validate_dataset(folder, keep=100).errors.issues] == [
        "train.jsonl line 1: 'completion' is missing (a line with 'prompt' is completions format)",
        "train.jsonl line 2: 'prompt' is missing (a line with 'completion' is completions format)",
        "train.jsonl line 3: has none of the keys of a known format: 'messages' (chat), 'prompt' and 'completion' "
        "(completions) or 'text' (text); its keys: 'input', 'output'",
        "train.jsonl line 4: 'messages' must be an array of messages, got string",
        "train.jsonl line 5: 'messages' is empty",
        "train.jsonl line 6: 'messages'[0] must be an object with 'role' and 'content', got string",
        "train.jsonl line 7: 'messages'[0].role is missing",
        "train.jsonl line 7: 'messages'[1].content is missing",
        "train.jsonl line 8: 'messages'[0].role must be a string, got number",
        "train.jsonl line 8: 'messages'[1].content must be a string, got array",
        "train.jsonl line 9: 'prompt' must be a string, got number",
        "train.jsonl line 9: is completions format ('prompt' and 'completion') but line 4 is chat format: a file "
        "holds one format",
        "train.jsonl line 10: 'text' must be a string, got null",
        "train.jsonl line 11: 'tools' must be an array of tool definitions, got object",
    ]


def test_empty_content(tmp_path: Path) -> None:
    folder = make(tmp_path, train=lines(GOOD_CHAT, chat(("system", ""), ("user", "Hi"), ("assistant", "  "))))
    assert errors_of(folder) == ["train.jsonl line 2: 'messages'[0].content is empty",
                                 "train.jsonl line 2: 'messages'[2].content is empty"]
    folder = make(tmp_path, train=lines({"prompt": "p", "completion": ""}, {"prompt": " ", "completion": "c"}),
                  valid=lines({"prompt": "p", "completion": "c"}))
    assert errors_of(folder) == ["train.jsonl line 1: 'completion' is empty", "train.jsonl line 2: 'prompt' is empty"]
    folder = make(tmp_path, train=lines({"text": "\n"}), valid=lines({"text": "ok"}))
    assert errors_of(folder) == ["train.jsonl line 1: 'text' is empty"]


def test_an_assistant_calling_tools_may_have_no_content(tmp_path: Path) -> None:
    calling = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "weather"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ], "tools": [{"type": "function"}]}
    assert validate_dataset(make(tmp_path, train=lines(calling), valid=lines(calling))).ok


def test_a_chat_without_an_assistant_turn(tmp_path: Path) -> None:
    folder = make(tmp_path, train=lines(chat(("system", "s"), ("user", "u"))))
    assert errors_of(folder) == ["train.jsonl line 1: 'messages' has no assistant message: there is nothing to learn"]


def test_the_last_message_matters_with_mask_prompt(tmp_path: Path) -> None:
    ends_with_user = chat(("user", "u"), ("assistant", "a"), ("user", "thanks"))
    folder = make(tmp_path, train=lines(GOOD_CHAT, ends_with_user))
    report = validate_dataset(folder)
    assert report.ok
    assert [str(w) for w in report.warnings.issues] == [
        "train.jsonl line 2: 'messages'[2].role is 'user': the conversation does not end with the assistant "
        "(with mask_prompt this line would be an error)"]
    assert errors_of(folder, mask_prompt=True) == [
        "train.jsonl line 2: 'messages'[2].role is 'user': with mask_prompt the last message must be the "
        "assistant's (the loss falls on the last message)"]
    problem = dataset_problem(folder, mask_prompt=True)
    assert problem is not None and "train.jsonl line 2: 'messages'[2].role is 'user'" in problem


def test_text_data_cannot_be_masked(tmp_path: Path) -> None:
    folder = make(tmp_path, train=lines({"text": "a"}), valid=lines({"text": "b"}))
    assert validate_dataset(folder).ok
    assert errors_of(folder, mask_prompt=True)[0] == (
        "train.jsonl: is text format: mask_prompt needs chat or completions data (there is no prompt to mask)")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "Train.json").write_text(lines(GOOD_CHAT))
    assert errors_of(folder) == [
        "train.jsonl: is missing: a dataset needs train.jsonl to train on (found Train.json: rename it to "
        "train.jsonl)",
        "valid.jsonl: is missing: training measures validation loss on valid.jsonl (split some examples off "
        "train.jsonl)",
    ]
    (folder / "train.jsonl").write_text(lines(GOOD_CHAT))
    (folder / "valid.jsonl").write_text("")
    assert errors_of(folder) == ["valid.jsonl: is empty: it has no examples"]
    assert errors_of(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: does not exist or is not a folder"]


def test_encoding_errors(tmp_path: Path) -> None:
    good = json.dumps(GOOD_CHAT).encode()
    folder = make(tmp_path, train=b"\xef\xbb\xbf" + good + b"\n" + good + b"\n",
                  valid=good + b"\n" + b'{"text": "caf\xe9"}\n')
    assert errors_of(folder) == [
        "train.jsonl line 1: starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without BOM",
        "valid.jsonl line 2: is not valid UTF-8: byte 0xe9 at column 14 (save the file as UTF-8)",
    ]
    utf16 = make(tmp_path, train=lines(GOOD_CHAT).encode("utf-16"))
    assert errors_of(utf16) == ["train.jsonl: is UTF-16 encoded: save it as UTF-8 (one JSON object per line)"]


def test_only_the_first_20_errors_are_kept_and_all_are_counted(tmp_path: Path) -> None:
    bad = chat(("user", "u"), ("agent", "a"))
    folder = make(tmp_path, train=lines(GOOD_CHAT, *([bad] * 1627)))
    report = validate_dataset(folder)
    assert report.errors.count == 1627 * 2
    assert len(report.errors.issues) == 20
    summary = report.summary().split("\n")
    assert len(summary) == 21
    assert summary[0] == "train.jsonl line 2: 'messages'[1].role must be one of system/user/assistant/tool, got 'agent'"
    assert summary[-1] == "… and 3,234 more errors (3,254 in all)"
    problem = dataset_problem(folder)
    assert problem is not None
    assert problem.startswith(f"data folder {folder} has 3,254 problems:\ntrain.jsonl line 2: ")
    assert problem.endswith("… and 3,234 more errors (3,254 in all)")
    assert dataset_problem(tmp_path / "absent") == f"data folder {tmp_path / 'absent'} does not exist"


def test_100k_lines_are_all_read_and_counted(tmp_path: Path) -> None:
    example = json.dumps(chat(("system", "You analyse calls."), ("user", "Call transcript " * 20),
                              ("assistant", "Issue: billing")))
    folder = tmp_path / "big"
    folder.mkdir()
    with (folder / "train.jsonl").open("w") as handle:
        for _ in range(100_000):
            handle.write(example + "\n")
    (folder / "valid.jsonl").write_text(example + "\n")
    report = validate_dataset(folder)  # its speed is measured by bench/bench_datasets.py
    assert report.ok and report.counts["train"] == 100_000


def test_renamed_keys_follow_the_run_config(tmp_path: Path) -> None:
    qa = {"question": "Why?", "answer": "Because."}
    folder = make(tmp_path, train=lines(qa, {"question": "How?", "answer": ""}), valid=lines(qa))
    assert errors_of(folder)[0].startswith("train.jsonl line 1: has none of the keys of a known format")
    features = {"prompt_feature": "question", "completion_feature": "answer", "chat_feature": None}
    report = validate_dataset(folder, keys=FeatureKeys.from_config(features))
    assert report.format == "completions"
    assert [str(i) for i in report.errors.issues] == ["train.jsonl line 2: 'answer' is empty"]
    problem = dataset_problem(folder, features=features)
    assert problem is not None and problem.endswith("train.jsonl line 2: 'answer' is empty")
    conversation = {"conversation": [{"role": "user", "content": "u"}, {"role": "bot", "content": "b"}]}
    chats = make(tmp_path, train=lines(conversation), valid=lines(conversation))
    assert errors_of(chats)[0].endswith("its keys: 'conversation'")
    assert str(validate_dataset(chats, keys=FeatureKeys(chat="conversation")).errors.issues[0]) == (
        "train.jsonl line 1: 'conversation'[1].role must be one of system/user/assistant/tool, got 'bot'")


def test_check_example_reports_the_format() -> None:
    assert check_example(GOOD_CHAT).format == "chat"
    assert check_example({"prompt": "a", "completion": "b"}).format == "completions"
    assert check_example({"text": "a"}).format == "text"
    assert check_example({**GOOD_CHAT, "tools": []}).format == "tools"
    assert check_example(5).errors == [(None, "must be a JSON object, got number")]


# ---------- the chat-template preview (pure parts) ----------

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_mask_prompt_splits_at_the_rendered_prompt() -> None:
    template = ChatTemplate(model="m", source=TEMPLATE, special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    rendered = render_example(GOOD_CHAT, "chat", template, mask_prompt=True)
    assert [(s.text, s.loss) for s in rendered.segments] == [
        ("<s><|system|>Be brief.<|user|>Hi<|assistant|>", False), ("Hello!</s>", True)]
    unmasked = render_example(GOOD_CHAT, "chat", template, mask_prompt=False)
    assert [(s.text, s.loss) for s in unmasked.segments] == [("<s><|system|>Be brief.<|user|>Hi<|assistant|>Hello!</s>",
                                                              True)]
    completion = render_example({"prompt": "P", "completion": "C"}, "completions", template, mask_prompt=True)
    assert [(s.text, s.loss) for s in completion.segments] == [("<s><|user|>P<|assistant|>", False), ("C</s>", True)]
    text = render_example({"text": "plain"}, "text", template, mask_prompt=False)
    assert [(s.text, s.loss) for s in text.segments] == [("plain", True)]


def test_templates_run_sandboxed_with_raise_exception() -> None:
    refusing = ChatTemplate(model="m", source="{% if messages[0]['role'] != 'user' %}"
                                              "{{ raise_exception('Conversations must start with the user') }}"
                                              "{% endif %}ok")
    rendered = render_example(GOOD_CHAT, "chat", refusing, mask_prompt=False)
    assert rendered.error == "the chat template refused this example: Conversations must start with the user"
    escaping = ChatTemplate(model="m", source="{{ messages.__class__.__mro__ }}")
    assert render_example(GOOD_CHAT, "chat", escaping, mask_prompt=False).error is not None


@pytest.mark.parametrize(("full", "prompt", "expected"), [
    ("abcdef", "abc", [("abc", False), ("def", True)]),
    ("abcdef", "abX", [("ab", False), ("cdef", True)]),
    ("abc", "", [("abc", True)]),
])
def test_split_at_prompt(full: str, prompt: str, expected: list[tuple[str, bool]]) -> None:
    segments, note = split_at_prompt(full, prompt)
    assert [(s.text, s.loss) for s in segments] == expected
    assert (note is None) == full.startswith(prompt)


def test_the_preview_renders_exactly_as_the_tokenizer_does(default_model: Path) -> None:
    """Against transformers' own apply_chat_template (as mlx-lm calls it), on the sample data."""
    from transformers import AutoTokenizer

    from app.datasets.preview import load_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    template = load_chat_template(str(default_model))
    assert template.origin == "tokenizer_config.json" and template.special_tokens["eos_token"] == "</s>"
    with (SAMPLE / "valid.jsonl").open() as handle:
        examples = [json.loads(next(handle)) for _ in range(5)]
    for example in examples:
        messages = example["messages"]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert template.render(messages) == full
        assert template.render(messages[:-1], add_generation_prompt=True) == prompt
        segments = render_example(example, "chat", template, mask_prompt=True).segments
        assert [(s.text, s.loss) for s in segments] == [(prompt, False), (full[len(prompt):], True)]
        assert segments[1].text == messages[-1]["content"] + "</s>"


def test_the_token_counts_are_mlx_lms(default_model: Path) -> None:
    """The tokens shown as trained on are those mlx-lm's chat dataset trains on: apply_chat_template(messages)
    tokenized, less the prompt's (apply_chat_template(messages[:-1], add_generation_prompt=True)), for the embedded
    model and for SmolLM2 (another template and tokenizer) where it is there."""
    from transformers import AutoTokenizer

    from app.datasets.preview import count_tokens, load_chat_template, load_token_counter

    models = [default_model, *[m for m in [PROJECT_DIR / "data" / "models" / "smollm2-135m-instruct"] if m.is_dir()]]
    with (SAMPLE / "train.jsonl").open() as handle:
        examples = [json.loads(next(handle)) for _ in range(3)]
    for model in models:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        template, counter = load_chat_template(str(model)), load_token_counter(str(model))
        assert counter is not None
        for example in examples:
            messages = example["messages"]
            tokens = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                                   return_dict=False)
            rendered = count_tokens(render_example(example, "chat", template, mask_prompt=True), counter)
            assert (rendered.total_tokens, rendered.loss_tokens) == (len(tokens), len(tokens) - len(prompt)), model
            whole = count_tokens(render_example(example, "chat", template, mask_prompt=False), counter)
            assert whole.total_tokens == whole.loss_tokens == len(tokens)
    assert load_token_counter("/nonexistent/model") is None


def test_a_check_is_reused_until_the_files_change(tmp_path: Path) -> None:
    """With a session, the answer is kept in the database per way of reading; a changed file is checked again."""
    data = tmp_path / "data"
    data.mkdir()
    good = lines(chat(("user", "hi"), ("assistant", "hello")))
    (data / "train.jsonl").write_text(good)
    (data / "valid.jsonl").write_text(good)
    engine = make_engine(tmp_path / "checks.db")
    with Session(engine) as session:
        assert dataset_problem(data, session=session) is None
        # same size, same modification time, different content: the kept answer stands (nothing re-read)
        stat = (data / "valid.jsonl").stat()
        (data / "valid.jsonl").write_text(good.replace('"user"', '"agen"'))
        os.utime(data / "valid.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert dataset_problem(data, session=session) is None
        assert "got 'agen'" in (dataset_problem(data) or "")  # without a session: always read
        # another way of reading the same files is checked on its own
        assert "got 'agen'" in (dataset_problem(data, mask_prompt=True, session=session) or "")
        # a real change (new modification time) is checked again
        os.utime(data / "valid.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        problem = dataset_problem(data, session=session)
        assert problem is not None and "valid.jsonl line 1: 'messages'[0].role" in problem
    engine.dispose()


def test_the_token_statistics_and_the_check_name_a_broken_line_alike(tmp_path: Path) -> None:
    """One rule, one message: the worker that counts tokens reads the same files as the check and says the same."""
    from worker.token_stats import DatasetFileError, read_split

    good = lines(chat(("user", "hi"), ("assistant", "hello")))
    for broken in ('{"messages": [}\n', "\n", "[1, 2]\n"):
        folder = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "train.jsonl").write_text(good + broken)
        (folder / "valid.jsonl").write_text(good)
        checked = validate_dataset(folder)
        with pytest.raises(DatasetFileError) as raised:
            read_split(folder / "train.jsonl")
        assert str(raised.value) == str(checked.errors.issues[0]), broken
