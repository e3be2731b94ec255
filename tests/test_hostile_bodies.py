"""Hostile request bodies: a YAML alias bomb, bodies too large, JSON nested too deeply, names with control or
text-direction characters. Each is refused at once, with a sentence that says what is wrong and where."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcess
from sqlmodel import Session

from app import json_text
from app.body_limit import MAX_BODY_BYTES, MAX_JSON_DEPTH, is_json, json_depth
from app.catalog.info import HUB_ID
from app.contract.safe_text import text_problem
from app.datasets.validation import validate_dataset
from app.imports.adapter_folder import NUMBERED
from app.models.registry import NAME
from app.runs.cluster.checks import _HOST
from app.runs.configs.yaml_config import (
    MAX_PROBLEMS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    YamlConfigError,
    parse_yaml_config,
)
from app.runs.store.listing import RunListError, clean_name, clean_notes
from app.tables import Run

# 271 bytes that stand for 9 * 9^7 (about 43 million) values once every alias is expanded.
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
YAML = {"Content-Type": "application/yaml"}
JSON = {"Content-Type": "application/json"}


def answered_within(seconds: float, call: Any) -> Any:
    """call() in a thread: its answer, or a failure (not a hung test) if it takes longer than `seconds`."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"no answer within {seconds} s"
    return result[0]


def problem_of(text: str) -> str:
    with pytest.raises(YamlConfigError) as caught:
        parse_yaml_config(text)
    return str(caught.value)


# YAML -------------------------------------------------------------------------------------------------------


def test_yaml_aliases_are_refused_where_they_are_before_anything_expands() -> None:
    assert len(BOMB) == 271
    assert problem_of(BOMB).startswith("line 2, column 8: YAML aliases (*a) are not accepted in a run config")
    assert problem_of("iters: &n 10\nsteps_per_eval: *n\n").startswith("line 2, column 17: YAML aliases (*n)")
    assert problem_of("base: &b {rank: 8}\nlora_parameters:\n  <<: *b\n").startswith("line 3, column 7: YAML aliases")


def test_yaml_nesting_and_size_are_bounded_with_the_line_named() -> None:
    deep = problem_of("a:\n" + "".join("  " * n + f"k{n}:\n" for n in range(1, 60)))
    assert f"nested too deeply (more than {MAX_YAML_DEPTH} levels)" in deep and deep.startswith("line 2")
    assert "nested too deeply" in problem_of("[" * 100_000)  # not a RecursionError (a 500) as before
    wide = problem_of("lora_parameters:\n  keys: [" + ",".join(["q"] * (MAX_YAML_NODES + 10)) + "]\n")
    assert wide.startswith("line 2") and f"more than {MAX_YAML_NODES:,} keys, values and list items" in wide


def test_a_long_list_of_problems_is_cut_with_a_count() -> None:
    with pytest.raises(YamlConfigError) as caught:
        parse_yaml_config("".join(f"unknown_{n}: 1\n" for n in range(MAX_PROBLEMS + 30)))
    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS + 1 and problems[-1].message.startswith("and 30 more problems")


def test_the_yaml_bomb_is_answered_at_once_by_every_yaml_entry_point(shared_app_client: InProcess) -> None:
    client = shared_app_client.client
    answer = answered_within(20, lambda: client.post("/api/configs/parse", content=BOMB, headers=YAML))
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["line"] == 2 and problem["msg"].startswith("YAML aliases (*a) are not accepted")
    form = answered_within(20, lambda: client.post("/runs/new/yaml", files={"yaml_file": ("bomb.yaml", BOMB)}))
    assert form.status_code == 200 and "line 2, column 8: YAML aliases (*a)" in form.text and "bomb.yaml" in form.text
    pasted = answered_within(20, lambda: client.post("/runs/new/yaml", data={"yaml_text": BOMB}))
    assert "YAML aliases (*a) are not accepted" in pasted.text


# Body size and JSON depth -----------------------------------------------------------------------------------


def test_json_depth_and_content_types() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[{{"}], "c": "\\"[["}') == 3
    assert json_depth(b"[" * 1000) == 1000 and json_depth(b"") == 0 and json_depth(b'"[[["') == 0
    assert is_json("application/json; charset=utf-8") and is_json("application/merge-patch+json")
    assert not is_json("application/yaml") and not is_json("multipart/form-data; boundary=x")


def test_bodies_over_the_limit_are_refused_with_a_sentence(shared_app_client: InProcess) -> None:
    client = shared_app_client.client
    big = b"#" * (MAX_BODY_BYTES + 1)
    chunks = (b"#" * 65536 for _ in range(MAX_BODY_BYTES // 65536 + 1))  # no Content-Length: counted as it comes
    for path, content, headers in (("/api/configs/parse", big, YAML), ("/api/runs", big, JSON),
                                   ("/api/configs/parse", chunks, YAML), ("/runs/new/check", big, {})):
        answer = client.post(path, content=content, headers=headers)
        assert answer.status_code == 413, (path, answer.text[:200])
        assert answer.json()["detail"].startswith(f"the request body is larger than {MAX_BODY_BYTES:,} bytes (1 MiB)")
    assert client.post("/api/configs/parse", content=b"iters: 12\n" + b"#" * 1000, headers=YAML).status_code == 200


def test_json_nested_too_deeply_is_refused_with_a_sentence(shared_app_client: InProcess) -> None:
    client = shared_app_client.client
    for path in ("/api/runs", "/api/prompt-sets", "/api/generate", "/api/imports"):
        answer = client.post(path, content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
        assert answer.status_code == 422, (path, answer.text[:200])
        assert answer.json()["detail"] == (f"the request body is nested too deeply (more than {MAX_JSON_DEPTH} "
                                           "levels of arrays and objects); nothing was changed.")
    shallow = client.post("/api/runs", content=b"[" * 10 + b"]" * 10, headers=JSON)
    assert shallow.status_code == 422 and shallow.json()["detail"][0]["loc"] == ["body"]  # validation as before


# Names and notes ------------------------------------------------------------------------------------------


def test_text_rule_names_the_field_the_character_and_where() -> None:
    assert text_problem("good name — ünïcode ✓", "name") is None
    assert text_problem("evil\u202egpj.yaml", "name") == (
        "name contains a right-to-left override character (U+202E) at character 5; control and text-direction "
        "characters are not allowed")
    assert "a null character (U+0000)" in (text_problem("a\x00b", "name") or "")
    assert "a control character (U+001B)" in (text_problem("\x1b[31mred", "name") or "")
    assert "left-to-right isolate" in (text_problem("x\u2066", "name") or "")
    assert "an arabic letter mark" in (text_problem("\u061c", "name") or "")
    assert text_problem("line one\nline two\ttabbed", "notes", multiline=True) is None
    assert "(U+000A)" in (text_problem("two\nlines", "name") or "")


def test_rename_and_notes_refuse_hidden_characters() -> None:
    with pytest.raises(RunListError, match="name contains a right-to-left override character"):
        clean_name("run \u202e1")
    with pytest.raises(RunListError, match=r"notes contains a control character \(U\+0007\)"):
        clean_notes("ring\x07")
    assert clean_notes("first\n\tsecond") == "first\n\tsecond"


def test_model_host_names_refuse_a_final_newline() -> None:
    assert NAME.match("fused-1") and not NAME.match("fused-1\n")
    assert _HOST.match("user@mac1.local") and not _HOST.match("mac1.local\n")
    assert HUB_ID.match("org/model") and not HUB_ID.match("org/model\n")
    assert NUMBERED.match("0000040_adapters.safetensors") and not NUMBERED.match("0000040_adapters.safetensors\n")


@pytest.fixture
def run_id(shared_app_client: InProcess) -> int:
    with Session(shared_app_client.engine) as session:
        run = Run(name="plain", status="completed", config_json="{}", total_iters=10)
        session.add(run)
        session.commit()
        session.refresh(run)
        assert run.id is not None
        return run.id


def test_names_with_hidden_characters_are_refused_everywhere(shared_app_client: InProcess, run_id: int) -> None:
    client = shared_app_client.client
    created = client.post("/api/runs", json={"iters": 10, "name": "invoice\u202efdp.exe"})
    assert created.status_code == 422
    [problem] = [p for p in created.json()["detail"] if p["loc"] == ["body", "name"]]
    assert problem["msg"].startswith("name contains a right-to-left override character (U+202E) at character 8")
    parsed = client.post("/api/configs/parse", content="loraboard:\n  name: \"a\\0b\"\n", headers=YAML)
    assert parsed.status_code == 422 and parsed.json()["detail"][0]["line"] == 2
    assert "a null character (U+0000)" in parsed.json()["detail"][0]["msg"]
    for patch, says in (({"name": "x\x00"}, "name contains a null character"),
                        ({"notes": "see\u2067this"}, "notes contains a right-to-left isolate character")):
        answer = client.patch(f"/api/runs/{run_id}", json=patch)
        assert answer.status_code == 422 and says in str(answer.json()["detail"]), answer.text
    assert client.patch(f"/api/runs/{run_id}", json={"notes": "two\nlines"}).status_code == 200
    prompt_set = client.post("/api/prompt-sets", json={"run_id": run_id, "name": "set\u202a",
                                                       "prompts": [{"prompt": "hello"}]})
    assert prompt_set.status_code == 422 and "name contains a left-to-right embedding character" in prompt_set.text
    assert shared_app_client.get(f"/api/runs/{run_id}")["name"] == "plain"


# JSON inside fields and files ---------------------------------------------------------------------------------


def test_json_too_deep_in_a_field_or_a_dataset_line_is_an_error_naming_it(
    shared_app_client: InProcess, tmp_path: Path,
) -> None:
    deep = '{"a":' * 5000 + "1" + "}" * 5000  # under 1 MiB, past what Python's JSON reader recurses through
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        json_text.loads(deep)
    checked = shared_app_client.client.post("/runs/new/check", data={"iters": "10", "optimizer": "adamw",
                                                                     "optimizer_config": deep})
    assert checked.status_code == 200 and "not a valid JSON object: nested too deeply" in checked.text  # was a 500
    (tmp_path / "train.jsonl").write_text(deep + "\n" + '{"text": "hi"}\n')
    (tmp_path / "valid.jsonl").write_text('{"text": "hi"}\n')
    report = validate_dataset(tmp_path)
    assert report.summary().startswith("train.jsonl line 1: is not valid JSON: nested too deeply")


def test_json_too_deep_in_a_model_or_adapter_folder_is_an_error_naming_the_file(
    shared_app_client: InProcess, tmp_path: Path,
) -> None:
    """config.json of a model folder, adapter_config.json and a safetensors header nested past what Python's JSON
    reader recurses through: each answer names the file as unreadable JSON (before, a RecursionError: a 500)."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(deep)
    info = shared_app_client.client.get("/api/models/info", params={"model": str(model)})
    assert info.status_code == 422 and "config.json is not valid JSON: nested too deeply" in info.text, info.text
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(deep)
    (adapters / "adapters.safetensors").write_bytes(len(deep).to_bytes(8, "little") + deep.encode())
    imported = shared_app_client.client.post("/api/imports", json={"adapter_dir": str(adapters)})
    assert imported.status_code == 422 and "adapter_config.json" in imported.text, imported.text
    assert "nested too deeply" in imported.text, imported.text
    (adapters / "adapter_config.json").write_text('{"fine_tune_type": "lora", "num_layers": 2, '
                                                  '"lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}}')
    imported = shared_app_client.client.post("/api/imports", json={"adapter_dir": str(adapters)})
    assert imported.status_code == 422 and "adapters.safetensors" in imported.text, imported.text
    assert "nested too deeply" in imported.text, imported.text
