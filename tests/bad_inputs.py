"""A corpus of malformed datasets, JSON run configs and YAML configs, each with what its error must name.

Every dataset is a folder of split files (text or raw bytes); `names` lists the strings the error must
contain: the file, the line and the field. Configs name the key path (`loc`) the 422 must point at and a
word of the message; YAML configs also the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


def line(obj: Any) -> str:
    return json.dumps(obj) + "\n"


def chat(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD = line(chat(("user", "My card was charged twice."), ("assistant", "Issue: billing")))


@dataclass(frozen=True)
class BadDataset:
    name: str
    files: dict[str, str | bytes]
    names: tuple[str, ...]  # what the error must name: file, line, field


DATASETS: list[BadDataset] = [
    BadDataset("not-json", {"train.jsonl": GOOD + "{not json\n", "valid.jsonl": GOOD},
               ("train.jsonl line 2", "not valid JSON")),
    BadDataset("trailing-garbage", {"train.jsonl": GOOD.rstrip("\n") + " xyz\n", "valid.jsonl": GOOD},
               ("train.jsonl line 1", "Extra data")),
    BadDataset("blank-line", {"train.jsonl": GOOD + "\n" + GOOD, "valid.jsonl": GOOD},
               ("train.jsonl line 2", "blank")),
    BadDataset("array-line", {"train.jsonl": GOOD + "[1, 2]\n", "valid.jsonl": GOOD},
               ("train.jsonl line 2", "JSON object", "array")),
    BadDataset("string-line", {"train.jsonl": GOOD + '"hello"\n', "valid.jsonl": GOOD},
               ("train.jsonl line 2", "JSON object", "string")),
    BadDataset("no-train", {"valid.jsonl": GOOD}, ("train.jsonl", "missing")),
    BadDataset("no-valid", {"train.jsonl": GOOD}, ("valid.jsonl", "missing")),
    BadDataset("empty-train", {"train.jsonl": "", "valid.jsonl": GOOD}, ("train.jsonl", "empty")),
    BadDataset("utf16", {"train.jsonl": GOOD.encode("utf-16"), "valid.jsonl": GOOD}, ("train.jsonl", "UTF-16")),
    BadDataset("bad-utf8", {"train.jsonl": GOOD.encode() + b'{"text": "\xff\xfe"}\n', "valid.jsonl": GOOD},
               ("train.jsonl line 2", "UTF-8", "column 11")),
    BadDataset("agent-role", {"train.jsonl": GOOD, "valid.jsonl": GOOD + line(chat(("user", "a"), ("agent", "b")))},
               ("valid.jsonl line 2", "'messages'[1].role", "'agent'")),
    BadDataset("role-missing", {"train.jsonl": line({"messages": [{"content": "hi"}]}), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'[0].role", "missing")),
    BadDataset("content-empty", {"train.jsonl": line(chat(("user", ""), ("assistant", "x"))), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'[0].content", "empty")),
    BadDataset("content-number", {"train.jsonl": line(chat(("user", 5), ("assistant", "x"))), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'[0].content", "string", "number")),
    BadDataset("messages-string", {"train.jsonl": line({"messages": "hi"}), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'", "array")),
    BadDataset("messages-empty", {"train.jsonl": line({"messages": []}), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'", "empty")),
    BadDataset("message-not-object", {"train.jsonl": line({"messages": ["hi"]}), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'messages'[0]", "object")),
    BadDataset("no-assistant", {"train.jsonl": GOOD + line(chat(("user", "hello"))), "valid.jsonl": GOOD},
               ("train.jsonl line 2", "no assistant message")),
    BadDataset("unknown-keys", {"train.jsonl": line({"input": "a", "output": "b"}), "valid.jsonl": GOOD},
               ("train.jsonl line 1", "'input'", "'output'", "known format")),
    BadDataset("mixed-formats", {"train.jsonl": GOOD + line({"text": "x"}), "valid.jsonl": GOOD},
               ("train.jsonl line 2", "text format", "chat format")),
    BadDataset("splits-differ", {"train.jsonl": GOOD, "valid.jsonl": line({"text": "x"})},
               ("valid.jsonl", "text format", "train.jsonl is chat")),
    BadDataset("text-null", {"train.jsonl": line({"text": None}), "valid.jsonl": line({"text": "ok"})},
               ("train.jsonl line 1", "'text'", "string", "null")),
    BadDataset("text-nan", {"train.jsonl": '{"text": NaN}\n', "valid.jsonl": line({"text": "ok"})},
               ("train.jsonl line 1", "'text'", "number")),
    BadDataset("prompt-only", {"train.jsonl": line({"prompt": "a"}),
                               "valid.jsonl": line({"prompt": "a", "completion": "b"})},
               ("train.jsonl line 1", "'completion'", "missing")),
    BadDataset("completion-number", {"train.jsonl": line({"prompt": "a", "completion": 3}),
                                     "valid.jsonl": line({"prompt": "a", "completion": "b"})},
               ("train.jsonl line 1", "'completion'", "string", "number")),
    BadDataset("tools-string", {"train.jsonl": line({**chat(("user", "a"), ("assistant", "b")), "tools": "x"}),
                                "valid.jsonl": line({**chat(("user", "a"), ("assistant", "b")), "tools": []})},
               ("train.jsonl line 1", "'tools'", "array")),
    BadDataset("bad-test-split", {"train.jsonl": GOOD, "valid.jsonl": GOOD, "test.jsonl": "oops\n"},
               ("test.jsonl line 1", "not valid JSON")),
    BadDataset("error-deep-in-file", {"train.jsonl": GOOD * 499 + "{\n" + GOOD, "valid.jsonl": GOOD},
               ("train.jsonl line 500", "not valid JSON")),
]


@dataclass(frozen=True)
class BadConfig:
    name: str
    config: dict[str, Any]
    loc: tuple[str, ...]  # where the 422 points (after "body")
    says: str  # a word of the message


CONFIGS: list[BadConfig] = [
    BadConfig("iters-zero", {"iters": 0}, ("iters",), "greater than or equal to 1"),
    BadConfig("iters-text", {"iters": "many"}, ("iters",), "integer"),
    BadConfig("batch-negative", {"batch_size": -4}, ("batch_size",), "greater than or equal to 1"),
    BadConfig("learning-rate-zero", {"learning_rate": 0}, ("learning_rate",), "greater than 0"),
    BadConfig("fine-tune-type", {"fine_tune_type": "qlora"}, ("fine_tune_type",), "'lora', 'dora' or 'full'"),
    BadConfig("optimizer", {"optimizer": "lion"}, ("optimizer",), "adam"),
    BadConfig("rank-zero", {"lora_parameters": {"rank": 0}}, ("lora_parameters", "rank"), "greater than or equal"),
    BadConfig("dropout-one", {"lora_parameters": {"dropout": 1.0}}, ("lora_parameters", "dropout"), "less than 1"),
    BadConfig("lora-key-bad", {"lora_parameters": {"keys": ["self_attn/q_proj"]}}, ("lora_parameters", "keys", "0"),
              "pattern"),
    BadConfig("max-seq-tiny", {"max_seq_length": 2}, ("max_seq_length",), "greater than or equal to 8"),
    BadConfig("patience-zero", {"early_stopping": {"patience": 0}}, ("early_stopping", "patience"), "greater"),
    BadConfig("unknown-key", {"itres": 100}, ("itres",), "xtra"),
    BadConfig("resume-missing-run", {"iters": 200, "resume_from": {"run_id": 987654, "iteration": 100}},
              ("resume_from",), "987654"),
    BadConfig("data-missing", {"data": "/nonexistent/loraboard-data"}, ("data",), "does not exist"),
]


@dataclass(frozen=True)
class BadYaml:
    name: str
    text: str
    key: str  # the key path named ("" for the whole file)
    line: int | None
    says: str


YAMLS: list[BadYaml] = [
    BadYaml("not-yaml", "iters: 100\nbatch_size: [4\n", "", 3, "YAML"),
    BadYaml("not-a-mapping", "- iters\n- 100\n", "", 1, "mapping"),
    BadYaml("iters-text", "iters: 100\nbatch_size: four\n", "batch_size", 2, "integer"),
    BadYaml("lr-negative", "learning_rate: -1e-5\n", "learning_rate", 1, "greater than 0"),
    BadYaml("rank-text", "lora_parameters:\n  rank: eight\n", "lora_parameters.rank", 2, "integer"),
    BadYaml("python-object", "iters: !!python/object/apply:os.system ['true']\n", "", 1,
            "could not determine a constructor"),
]
