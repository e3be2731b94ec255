"""Reading mlx_lm lora logs and adapter folders (pure functions, hand-written inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.contract.run_config import RunConfig
from app.imports.adapter_folder import ImportProblem, cli_cwd, final_iteration, read_folder, resolve_relative
from app.imports.log_parse import fill_rates, parse_log, strip_ansi
from app.imports.service import config_from_adapter, learning_rate_at

CLASSIC = """Loading pretrained model
Loading datasets
Training
Trainable parameters: 0.071% (5.243M/7241.732M)
Starting training..., iters: 30
Iter 1: Val loss 2.874, Val took 12.345s
Iter 10: Train loss 2.512, Learning Rate 1.000e-05, It/sec 0.532, Tokens/sec 612.104, Trained Tokens 11520, Peak mem 15.730 GB
Iter 20: Train loss 1.987, Learning Rate 1.000e-05, It/sec 0.541, Tokens/sec 620.000, Trained Tokens 23040, Peak mem 15.731 GB
Iter 20: Val loss 1.801, Val took 11.002s
Iter 20: Saved adapter weights to adapters/adapters.safetensors and adapters/0000020_adapters.safetensors.
Saved final weights to adapters/adapters.safetensors.
Test loss 1.750, Test ppl 5.755.
"""  # noqa: E501

# What mlx_lm/cli_ui.py's TrainUI prints to a file: Rich's colour codes included.
TABLE = (
    "\x1b[1m  iter   train_loss     tok/s     tokens\x1b[0m\n"
    "  \x1b[38;5;244m   1\x1b[0m    \x1b[1;35mval\x1b[0m \x1b[1m4.588\x1b[0m    \x1b[38;5;244m2.39s\x1b[0m\n"
    "  \x1b[38;5;244m   5\x1b[0m    \x1b[1;32m4.683 ▼\x1b[0m    \x1b[1m  569\x1b[0m    \x1b[38;5;244m  4.3k\x1b[0m\n"
    "  \x1b[38;5;244m  10\x1b[0m    \x1b[1;33m4.731 ▲\x1b[0m    \x1b[1m3,460\x1b[0m    \x1b[38;5;244m  8.6k\x1b[0m\n"
    "  \x1b[38;5;244m  10\x1b[0m    \x1b[1;35mval\x1b[0m \x1b[1m4.553\x1b[0m    \x1b[38;5;244m2.11s\x1b[0m\n"
    "  \x1b[1;32msave\x1b[0m  \x1b[38;5;244m0000010_adapters.safetensors\x1b[0m\n"
    "\x1b[1;34mtrain\x1b[0m \x1b[34m██████████\x1b[0m \x1b[1;34m100%\x1b[0m \x1b[38;5;244m·\x1b[0m "
    "\x1b[1;34m   10\x1b[0m\x1b[38;5;244m/10\x1b[0m\n"
)


def test_classic_lines_give_every_number() -> None:
    log = parse_log(CLASSIC)
    assert log.style == "classic"
    assert [(p.iteration, p.train_loss, p.learning_rate, p.iterations_per_second, p.tokens_per_second,
             p.trained_tokens, p.peak_memory) for p in log.train] == [
        (10, 2.512, 1e-5, 0.532, 612.104, 11520, 15.730), (20, 1.987, 1e-5, 0.541, 620.0, 23040, 15.731)]
    assert [(v.iteration, v.val_loss, v.val_time) for v in log.val] == [(1, 2.874, 12.345), (20, 1.801, 11.002)]
    assert log.saved == [20]
    assert log.test_loss == 1.750
    assert (log.trainable_params, log.total_params) == (5_243_000, 7_241_732_000)
    assert (log.unrecognised, log.ignored) == (0, 5)


def test_table_lines_with_colour_codes() -> None:
    log = parse_log(TABLE)
    assert log.style == "table"
    assert [(p.iteration, p.train_loss, p.tokens_per_second, p.trained_tokens) for p in log.train] == [
        (5, 4.683, 569.0, 4300), (10, 4.731, 3460.0, 8600)]
    assert all(p.learning_rate is None and p.peak_memory is None for p in log.train)
    assert [(v.iteration, v.val_loss, v.val_time) for v in log.val] == [(1, 4.588, 2.39), (10, 4.553, 2.11)]
    assert log.saved == [10]
    assert (log.unrecognised, log.ignored) == (0, 2)  # the header and the progress bar
    fill_rates(log.train)  # it/sec = tok/s * iterations / tokens of the interval
    assert log.train[0].iterations_per_second == pytest.approx(569 * 5 / 4300)
    assert log.train[1].iterations_per_second == pytest.approx(3460 * 5 / 4300)


def test_junk_is_counted_never_fatal() -> None:
    junk = "hello\n\x00\x01 binary?\nIter x: Train loss nope\nIter 5: Something else 3\n" + "é" * 50 + "\n"
    log = parse_log(junk + CLASSIC + "Iter 30: Train loss nan, It/sec 1.0\n")
    assert log.unrecognised == 5 and log.first_unrecognised == 1
    assert [p.iteration for p in log.train] == [10, 20]  # the nan loss is left out
    empty = parse_log("nothing\nat all\n")
    assert not empty.usable and empty.unrecognised == 2 and empty.style is None
    assert strip_ansi("\x1b[1;35mval\x1b[0m\x1b]8;;x\x07") == "val"


def test_a_terminal_capture_with_carriage_returns_reads_each_part() -> None:
    log = parse_log("train ░░░░ 0% · 0/10\rIter 5: Train loss 2.0, It/sec 1.0\r\n")
    assert [p.iteration for p in log.train] == [5] and log.unrecognised == 0


def test_config_from_adapter_maps_keys_and_drops_what_it_cannot_hold(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "models" / "m").mkdir(parents=True)
    folder = project / "out" / "adapters"
    folder.mkdir(parents=True)
    data = {"model": "models/m", "data": "data", "adapter_path": "out/adapters", "train": True, "iters": 30,
            "num_layers": 2, "lora_parameters": {"rank": 4, "alpha": 16, "scale": 10.0, "dropout": 0.0},
            "optimizer_config": {"adam": {}, "sgd": {}}, "wandb": "proj", "config": None}
    config, dropped = config_from_adapter(data, folder, "mine")
    assert config.model == str(project / "models" / "m")  # relative to where mlx_lm ran: out/adapters's parent
    assert config.data == "data"  # nothing there: kept as written
    assert (config.iters, config.num_layers, config.lora_parameters.rank, config.name) == (30, 2, 4, "mine")
    assert set(dropped) == {"wandb", "lora_parameters.alpha"}
    with pytest.raises(ImportProblem, match=r"adapter_config\.json: val_batches must be -1 \(all\) or at least 1 "
                       r"\(got 0\)"):  # a value of a key loraboard uses is refused, not dropped
        config_from_adapter({**data, "val_batches": 0}, folder, "mine")
    assert cli_cwd(folder, "out/adapters") == project
    assert cli_cwd(folder, "/abs/adapters") is None
    assert resolve_relative("some/hub-id", folder, None) == "some/hub-id"


def test_learning_rate_of_a_schedule() -> None:
    constant = RunConfig(learning_rate=2e-5)
    assert learning_rate_at(constant, 10) == 2e-5
    warm = RunConfig(lr_schedule={"name": "cosine_decay", "arguments": [1e-4, 100], "warmup": 10})
    assert learning_rate_at(warm, 1) == 0.0
    assert learning_rate_at(warm, 11) == pytest.approx(1e-4)  # warm-up done, the schedule starts
    assert learning_rate_at(warm, 10_000) == pytest.approx(0.0)


def test_adapter_folder_needs_its_config_and_places_the_final_adapter(tmp_path: Path) -> None:
    with pytest.raises(ImportProblem, match=r"adapter_config\.json does not exist"):
        read_folder(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"iters": 30}))
    with pytest.raises(ImportProblem, match="no adapter weights"):
        read_folder(tmp_path)
    (tmp_path / "0000010_adapters.safetensors").write_bytes(b"ten")
    (tmp_path / "adapters.safetensors").write_bytes(b"ten")
    assert final_iteration(read_folder(tmp_path), 30) is None  # the same weights as the latest checkpoint
    (tmp_path / "adapters.safetensors").write_bytes(b"thirty")
    assert final_iteration(read_folder(tmp_path), None) == 30  # the config's iters without a log
    assert final_iteration(read_folder(tmp_path), 25) == 25  # the log's last iteration
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(ImportProblem, match="holds a list"):
        read_folder(tmp_path)
