"""YAML import/export of run configs: parsing with line numbers, export (the API in-process), and mlx-lm's own CLI
training from a file a real server's run exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_DIR, QUICK_RUN, InProcess, Server, base_env

from app.contract.run_config import RunConfig
from app.runs.configs.yaml_config import YamlConfigError, export_data, export_yaml, parse_yaml_config

# An mlx_lm lora -c file as people write them (cf. mlx-lm's examples/lora_config.yaml).
MLX_EXAMPLE = """\
model: "mlx-community/Mistral-7B-Instruct-v0.3"
train: true
fine_tune_type: lora
optimizer: adamw
optimizer_config:
  adam: {}
  adamw:
    weight_decay: 0.05
    betas: [0.9, 0.98]
data: "/data/contact-center"
seed: 7
num_layers: 8
batch_size: 2
iters: 1500
val_batches: 25
learning_rate: 1e-5
steps_per_report: 10
steps_per_eval: 100
resume_adapter_file:
adapter_path: "adapters"
save_every: 100
test: true
test_batches: 100
max_seq_length: 2048
grad_checkpoint: true
grad_accumulation_steps: 4
report_to: wandb
project_name: contact-center
lora_parameters:
  keys: ["self_attn.q_proj", "self_attn.v_proj"]
  rank: 8
  scale: 20.0
  dropout: 0.0
lr_schedule:
  name: cosine_decay
  warmup: 100
  warmup_init: 1e-7
  arguments: [1e-5, 1000, 1e-7]
"""


def test_an_mlx_lm_config_file_is_read_as_mlx_lm_reads_it() -> None:
    parsed = parse_yaml_config(MLX_EXAMPLE)
    config = parsed.config
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)  # 1e-5 without a dot
    assert config.lr_schedule is not None and config.lr_schedule.warmup_init == 1e-7
    assert config.optimizer_config.arguments_for("adamw") == {"weight_decay": 0.05, "betas": (0.9, 0.98)}
    assert config.lora_parameters.keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert (config.iters, config.batch_size, config.grad_accumulation_steps, config.test) == (1500, 2, 4, True)
    assert config.model == "mlx-community/Mistral-7B-Instruct-v0.3" and config.data == "/data/contact-center"
    # train: true and adapter_path: adapters are what an exported file carries, and mlx_lm's defaults: ignored quietly
    assert [i.key for i in parsed.ignored] == ["resume_adapter_file", "report_to", "project_name"]
    assert all(i.reason.startswith("loraboard sets this") for i in parsed.ignored)
    other = parse_yaml_config(MLX_EXAMPLE.replace("train: true", "train: false").replace('"adapters"', '"mine"'))
    assert [i.key for i in other.ignored] == ["train", "resume_adapter_file", "adapter_path", "report_to",
                                              "project_name"]  # values loraboard does not follow are said


def test_loraboard_keys_round_trip_through_export() -> None:
    config = RunConfig.model_validate({**parse_yaml_config(MLX_EXAMPLE).config.model_dump(),
        "name": "contact center v2", "epochs": 2.0, "full_val_at_checkpoints": True,
        "early_stopping": {"patience": 3, "min_delta": 0.001}, "chat_feature": "conversation"})
    text = export_yaml(config, run_id=12, run_name="contact center v2")
    assert text.startswith("# loraboard run 12: contact center v2\n")
    again = parse_yaml_config(text)
    assert again.config == config
    assert again.ignored == []  # re-importing an exported file says nothing about the keys it carries for mlx_lm
    document = yaml.safe_load(text)
    assert document["loraboard"]["early_stopping"] == {"patience": 3, "min_delta": 0.001}
    assert document["train"] is True and document["adapter_path"] == "adapters"


def test_export_is_what_mlx_lm_expects() -> None:
    from mlx_lm.lora import CONFIG_DEFAULTS, build_parser

    document = export_data(RunConfig(model="/m", data="/d", num_layers=16), model_layers=4)
    assert document["num_layers"] == 4  # mlx_lm refuses more layers than the model has
    assert document["optimizer_config"] == {"adam": {}}
    assert document["lora_parameters"] == {"rank": 8, "scale": 20.0, "dropout": 0.0}  # no keys: mlx-lm's choice
    not_written = {"resume_adapter_file", "config", "lr_schedule", "report_to", "project_name"}
    assert set(CONFIG_DEFAULTS) - not_written <= set(document)
    cli_keys = {action.dest for action in build_parser()._actions}
    unknown_to_mlx = set(document) - set(CONFIG_DEFAULTS) - cli_keys
    assert unknown_to_mlx == {"loraboard"}  # everything else is an mlx_lm key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: x\niters: [1\n", "line 3, column 1: not valid YAML"),
        ("iters: 5\nbatch_size: 2\niters: 6\n", "line 3, column 1: not valid YAML: while reading a mapping found the "
                                                 "key 'iters' twice"),
        ("iters: 5\nlearning_rte: 1e-5\n", "line 2, column 1: learning_rte: unknown key: not an option of mlx_lm "
                                            "lora (did you mean learning_rate?)"),
        ("iters: 0\n", "line 1, column 1: iters: Input should be greater than or equal to 1"),
        ("lora_parameters:\n  rank: 8\n  alpha: 16\n", "line 3, column 3: lora_parameters.alpha: unknown key: "
                                                       "mlx-lm's LoRA takes scale"),
        ("optimizer: adam\noptimizer_config:\n  adam:\n    weight_decay: 0.1\n",
         "line 3, column 3: optimizer_config.adam: adam has no option weight_decay"),
        ("lr_schedule:\n  name: cosine_decay\n  arguments: [1e-5]\n",
         "line 3, column 3: lr_schedule.arguments: cosine_decay takes 2 or 3 arguments"),
        ("loraboard:\n  early_stopping: {patience: 0}\n", "line 2, column 20: loraboard.early_stopping.patience: "
                                                          "Input should be greater than or equal to 1"),
        ("loraboard:\n  patience: 3\n", "line 2, column 3: loraboard.patience: unknown key: not one of loraboard's "
                                        "keys"),
        ("hf_dataset:\n  path: x\n", "line 1, column 1: hf_dataset: hf_dataset is not supported"),
        ("- iters: 5\n", "line 1, column 1: expected a mapping of mlx_lm lora options, found a list"),
        ("# nothing\n", "the file is empty"),
    ],
)
def test_problems_name_line_column_and_key(text: str, expected: str) -> None:
    with pytest.raises(YamlConfigError) as info:
        parse_yaml_config(text)
    assert any(str(p).startswith(expected) for p in info.value.problems), [str(p) for p in info.value.problems]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(YamlConfigError) as info:
        parse_yaml_config("iters: 0\nbatch_size: four\nfoo: 1\n")
    assert [p.key for p in info.value.problems] == ["iters", "batch_size", "foo"]
    assert [p.line for p in info.value.problems] == [1, 2, 3]


def _post_text(server: InProcess, path: str, text: str) -> tuple[int, Any]:
    response = server.client.post(path, content=text.encode(), headers={"Content-Type": "application/yaml"})
    return response.status_code, response.json()


def test_parse_api_and_export_api(shared_app_client: InProcess) -> None:
    status, body = _post_text(shared_app_client, "/api/configs/parse", MLX_EXAMPLE)
    assert status == 200 and body["config"]["optimizer_config"] == {"adamw": {"weight_decay": 0.05,
                                                                              "betas": [0.9, 0.98]}}
    assert {"key": "report_to", "reason": "loraboard sets this (runs report to this dashboard)"} in body["ignored"]
    status, body = _post_text(shared_app_client, "/api/configs/parse", "iters: 0\nfoo: 1\n")
    assert status == 422
    assert body["detail"] == [
        {"loc": ["iters"], "line": 1, "column": 1, "msg": "Input should be greater than or equal to 1"},
        {"loc": ["foo"], "line": 2, "column": 1, "msg": "unknown key: not an option of mlx_lm lora"}]
    status, _, _ = shared_app_client.request("GET", "/api/runs/9999/config.yaml")
    assert status == 404


def test_mlx_lm_cli_trains_from_an_exported_run(shared_server: Server, tmp_path: Path, short_data: Path) -> None:
    """A real run's exported YAML, with the length cut to 3 iterations, trains with `python -m mlx_lm lora -c`."""
    config = {**QUICK_RUN, "data": str(short_data), "iters": 10, "steps_per_eval": 5, "save_every": 5,
              "optimizer": "adamw",
              "optimizer_config": {"adamw": {"weight_decay": 0.02}},
              "lr_schedule": {"name": "cosine_decay", "arguments": [1e-3, 10], "warmup": 2},
              "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.q_proj",
                                                                                    "self_attn.v_proj"]},
              "early_stopping": {"patience": 5, "min_delta": 0.0}}
    status, run = shared_server.post("/api/runs", config)
    assert status == 201, run
    assert shared_server.wait_terminal(run["id"])["status"] == "completed"
    status, _, raw = shared_server.request("GET", f"/api/runs/{run['id']}/config.yaml")
    assert status == 200
    exported = raw.decode()
    document = yaml.safe_load(exported)
    assert document["loraboard"]["early_stopping"] == {"patience": 5, "min_delta": 0.0}
    assert parse_yaml_config(exported).config == RunConfig.model_validate(run["config"])  # nothing lost

    document.update({"iters": 3, "steps_per_eval": 2, "save_every": 2, "val_batches": 1, "steps_per_report": 1})
    (tmp_path / "exported.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = base_env()
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-m", "mlx_lm", "lora", "-c", "exported.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    adapters = tmp_path / "adapters"
    assert (adapters / "adapters.safetensors").stat().st_size > 0
    assert (adapters / "0000002_adapters.safetensors").exists()
    written = json.loads((adapters / "adapter_config.json").read_text())
    assert written["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert written["optimizer_config"] == {"adamw": {"weight_decay": 0.02}} and written["iters"] == 3
    assert os.path.realpath(written["model"]) == os.path.realpath(PROJECT_DIR / "data" / "models" / "tiny-mistral")
