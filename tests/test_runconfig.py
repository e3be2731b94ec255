"""RunConfig, the new-run form's parsing and the config warnings (pure; a few tmp files for data folders)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.contract.run_config import (
    OPTIMIZER_ARGS,
    RunConfig,
    count_examples,
    iters_for_epochs,
    looks_like_path,
    resolve_model,
)
from app.contract.settings import Settings
from app.runs.configs.warnings import ConfigFacts, DataFacts, ModelFacts, config_warnings, read_model_facts
from app.runs.form.fields import (
    FORM_FIELDS,
    FormProblem,
    changed_advanced,
    error_key,
    field_specs,
    form_errors,
    form_to_payload,
    form_values,
    iterations_note,
    parse_options,
)


def test_defaults_follow_mlx_lm_lora() -> None:
    config = RunConfig()
    assert (config.iters, config.batch_size, config.learning_rate) == (1000, 4, 1e-5)
    assert (config.steps_per_report, config.steps_per_eval, config.save_every, config.val_batches) == (10, 200, 100, 25)
    assert (config.test, config.test_batches, config.grad_accumulation_steps, config.clear_cache_threshold) == (
        False, 500, 1, 0)
    assert config.lora_parameters.model_dump(exclude_none=True) == {"rank": 8, "scale": 20.0, "dropout": 0.0}
    assert config.early_stopping is None and config.epochs is None and config.lr_schedule is None
    assert config.model_dump()["optimizer_config"] == {}


@pytest.mark.real  # imports mlx_lm
def test_every_mlx_lm_lora_option_is_a_field() -> None:
    from mlx_lm.lora import CONFIG_DEFAULTS

    managed = {"train", "adapter_path", "resume_adapter_file", "report_to", "project_name", "config"}
    assert set(CONFIG_DEFAULTS) - managed <= set(RunConfig.model_fields)
    for key in ("iters", "batch_size", "learning_rate", "num_layers", "steps_per_eval", "save_every", "val_batches",
                "test_batches", "max_seq_length", "grad_accumulation_steps", "seed", "fine_tune_type", "optimizer"):
        assert RunConfig.model_fields[key].default == CONFIG_DEFAULTS[key], key


def test_optimizer_arguments_match_mlx_optimizers() -> None:
    import mlx.optimizers as optim

    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor,
               "muon": optim.Muon}
    for name, model in OPTIMIZER_ARGS.items():
        params = inspect.signature(classes[name].__init__).parameters
        assert set(model.model_fields) == set(params) - {"self", "learning_rate"}, name


def test_resolved_fills_the_embedded_default_as_absolute_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    config = RunConfig().resolved(settings)
    assert config.model == str(tmp_path / "models" / "tiny-mistral")
    assert config.data == str(tmp_path / "contact-center")


def test_hub_ids_are_kept_and_paths_made_absolute(tmp_path: Path) -> None:
    assert resolve_model("mlx-community/Mistral-7B-Instruct-v0.3") == "mlx-community/Mistral-7B-Instruct-v0.3"
    assert not looks_like_path("mlx-community/Mistral-7B-Instruct-v0.3")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert Path(resolve_model("./models/x")).is_absolute()


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"iters": 0}, ("iters",)),
        ({"iters": 10_000_001}, ("iters",)),
        ({"batch_size": "four"}, ("batch_size",)),
        ({"batch_size": 0}, ("batch_size",)),
        ({"learning_rate": -1}, ("learning_rate",)),
        ({"fine_tune_type": "qlora"}, ("fine_tune_type",)),
        ({"optimizer": "rmsprop"}, ("optimizer",)),
        ({"num_layers": -2}, ("num_layers",)),
        ({"val_batches": 0}, ("val_batches",)),
        ({"test_batches": 0}, ("test_batches",)),
        ({"epochs": 0}, ("epochs",)),
        ({"grad_accumulation_steps": 0}, ("grad_accumulation_steps",)),
        ({"clear_cache_threshold": -1}, ("clear_cache_threshold",)),
        ({"lora_parameters": {"rank": 0}}, ("lora_parameters", "rank")),
        ({"lora_parameters": {"dropout": 1.0}}, ("lora_parameters", "dropout")),
        ({"lora_parameters": {"keys": ["self_attn q"]}}, ("lora_parameters", "keys", 0)),
        ({"lora_parameters": {"keys": []}}, ("lora_parameters", "keys")),
        ({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-5]}}, ("lr_schedule", "arguments")),
        ({"lr_schedule": {"name": "linear_schedule", "arguments": [1e-5, 0]}}, ("lr_schedule", "arguments")),
        ({"lr_schedule": {"name": "step_decay", "arguments": [1e-5, 0.5, 0]}}, ("lr_schedule", "arguments")),
        ({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-5, 100], "warmup": -1}},
         ("lr_schedule", "warmup")),
        ({"optimizer_config": {"adamw": {"weight_decay": -0.1}}}, ("optimizer_config", "adamw", "weight_decay")),
        ({"optimizer_config": {"adam": {"weight_decay": 0.1}}}, ("optimizer_config", "adam")),
        ({"optimizer_config": {"adamw": {"betas": [0.9]}}}, ("optimizer_config", "adamw", "betas")),
        ({"optimizer_config": {"rmsprop": {"alpha": 0.9}}}, ("optimizer_config", "rmsprop")),
        ({"early_stopping": {"patience": 0}}, ("early_stopping", "patience")),
        ({"resume_from": {"run_id": 1, "iteration": 2000}}, ("iters",)),
        ({"unknown": 1}, ("unknown",)),
    ],
)
def test_bad_values_name_their_field(payload: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(payload)
    assert tuple(info.value.errors()[0]["loc"])[: len(loc)] == loc


def test_schedule_and_optimizer_messages_say_what_is_expected() -> None:
    with pytest.raises(ValidationError, match=r"cosine_decay takes 2 or 3 arguments \(init, decay_steps, end\), got 1"):
        RunConfig.model_validate({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-5]}})
    with pytest.raises(ValidationError, match="adam has no option weight_decay; it takes betas, eps, bias_correction"):
        RunConfig.model_validate({"optimizer_config": {"adam": {"weight_decay": 0.1}}})


def test_optimizer_config_keeps_only_what_was_given() -> None:
    config = RunConfig.model_validate({"optimizer": "adamw", "optimizer_config": {
        "adam": {}, "adamw": {"weight_decay": 0.05, "betas": [0.9, 0.98]}, "sgd": {}}})
    assert config.model_dump(mode="json")["optimizer_config"] == {"adamw": {"weight_decay": 0.05, "betas": [0.9, 0.98]}}
    assert config.optimizer_config.arguments_for("adamw") == {"weight_decay": 0.05, "betas": (0.9, 0.98)}
    assert config.optimizer_config.arguments_for("sgd") == {}
    again = RunConfig.model_validate_json(config.model_dump_json())
    assert again == config


def _data(tmp_path: Path, train: int, valid: int = 5, test: int | None = None) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    line = json.dumps({"text": "hello"})
    (folder / "train.jsonl").write_text("\n".join([line] * train))  # no final newline: still counted
    (folder / "valid.jsonl").write_text("".join(f"{line}\n" for _ in range(valid)))
    if test is not None:
        (folder / "test.jsonl").write_text("".join(f"{line}\n" for _ in range(test)))
    return folder


def test_epochs_become_iters_from_the_training_set(tmp_path: Path) -> None:
    data = _data(tmp_path, train=1200)
    assert count_examples(data / "train.jsonl") == 1200
    assert count_examples(data / "missing.jsonl") is None
    assert iters_for_epochs(2, 1200, 4) == 600
    assert iters_for_epochs(1, 10, 4) == 2  # mlx-lm drops the last, partial batch
    assert iters_for_epochs(0.5, 10, 4) == 1
    assert iters_for_epochs(1 / 3, 900, 1) == 300  # no float noise rounds 300.0000001 up
    config = RunConfig(data=str(data), epochs=2, batch_size=4).resolved(Settings(data_dir=tmp_path))
    assert (config.epochs, config.iters) == (2, 600)  # the stored config has both
    assert iterations_note(config, 1200) == ("2 epochs = 600 iterations (1,200 examples ÷ batch_size 4 = 300 "
                                             "iterations per epoch)")
    plain = RunConfig(data=str(data), iters=150).resolved(Settings(data_dir=tmp_path))
    assert plain.iters == 150 and plain.epochs is None
    assert iterations_note(plain, 1200).startswith("150 iterations = 0.50 epochs")


def test_resolved_refuses_what_the_data_cannot_do(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    data = _data(tmp_path, train=3, test=None)
    with pytest.raises(ValidationError) as info:
        RunConfig(data=str(data), batch_size=4).resolved(settings)
    assert info.value.errors()[0]["loc"] == ("batch_size",)
    assert "more than the 3 examples" in info.value.errors()[0]["msg"]
    data = _data(tmp_path, train=8)
    with pytest.raises(ValidationError, match=r"has no test\.jsonl") as info:
        RunConfig(data=str(data), test=True).resolved(settings)
    assert info.value.errors()[0]["loc"] == ("test",)
    data = _data(tmp_path, train=8, test=2)
    with pytest.raises(ValidationError, match=r"test\.jsonl has 2 examples, fewer than one batch"):
        RunConfig(data=str(data), test=True, batch_size=4).resolved(settings)
    assert RunConfig(data=str(data), test=True, batch_size=2).resolved(settings).test


def test_form_round_trip() -> None:
    form = {"iters": "50", "lora_parameters.rank": "4", "grad_checkpoint": "on", "name": "  "}
    payload = form_to_payload(form)
    assert payload == {"iters": "50", "lora_parameters": {"rank": "4"}, "grad_checkpoint": True,
                       "mask_prompt": False, "full_val_at_checkpoints": False, "test": False,
                       "trust_remote_code": False}
    config = RunConfig.model_validate(payload)
    assert config.iters == 50 and config.lora_parameters.rank == 4 and config.grad_checkpoint


def test_every_option_survives_config_to_form_to_config() -> None:
    config = RunConfig.model_validate({
        "name": "all options", "model": "/m", "data": "/d", "fine_tune_type": "dora", "optimizer": "adamw",
        "optimizer_config": {"adamw": {"weight_decay": 0.02, "betas": [0.9, 0.95], "bias_correction": True}},
        "num_layers": 8, "batch_size": 2, "iters": 120, "epochs": 1.5, "learning_rate": 2e-4,
        "lr_schedule": {"name": "cosine_decay", "arguments": [2e-4, 100, 1e-6], "warmup": 10, "warmup_init": 1e-7},
        "lora_parameters": {"rank": 16, "scale": 10.0, "dropout": 0.05, "keys": ["self_attn.q_proj", "mlp.up_proj"]},
        "max_seq_length": 1024, "grad_checkpoint": True, "grad_accumulation_steps": 2,
        "clear_cache_threshold": 1000000, "mask_prompt": True, "steps_per_report": 5, "steps_per_eval": 20,
        "save_every": 20, "val_batches": -1, "full_val_at_checkpoints": True, "test": True, "test_batches": 7,
        "seed": 42, "chat_feature": "conversation", "early_stopping": {"patience": 4, "min_delta": 0.01},
        "resume_from": {"run_id": 3, "iteration": 60},
    })
    values = form_values(config)
    assert values["lora_parameters.keys"] == "self_attn.q_proj, mlp.up_proj"
    assert values["lr_schedule.arguments"] == "0.0002, 100, 1e-06"
    assert values["optimizer_config"] == "betas=[0.9, 0.95], bias_correction=true, weight_decay=0.02"
    form = {k: ("on" if v is True else str(v)) for k, v in values.items() if v is not False}
    assert RunConfig.model_validate(form_to_payload(form)) == config


def test_form_blank_fields_and_switches() -> None:
    payload = form_to_payload({"lr_schedule.name": "", "lr_schedule.arguments": "1e-5, 100",
                               "lr_schedule.warmup": "5", "epochs": " ", "optimizer_config": ""})
    assert "lr_schedule" not in payload and "epochs" not in payload and "optimizer_config" not in payload
    form = {"early_stopping.patience": "4", "early_stopping.min_delta": "0.01"}
    assert "early_stopping" not in form_to_payload(form)
    config = RunConfig.model_validate(form_to_payload({**form, "early_stopping.enabled": "on"}))
    assert config.early_stopping is not None
    assert (config.early_stopping.patience, config.early_stopping.min_delta) == (4, 0.01)
    specs = {s["key"]: s for s in field_specs({"early_stopping.patience": 4})}
    assert specs["early_stopping.enabled"]["value"] is False  # unchecked stays unchecked


def test_form_fields_carry_help_defaults_and_choices() -> None:
    specs = {s["key"]: s for s in field_specs({"iters": 7})}
    assert set(specs) == {f.key for f in FORM_FIELDS}
    assert specs["iters"]["value"] == 7
    assert specs["iters"]["help"] == RunConfig.model_fields["iters"].description
    assert specs["iters"]["default"] == "1000"
    assert specs["learning_rate"]["default"] == "1e-05"
    assert specs["grad_checkpoint"]["default"] == "off"
    assert specs["lora_parameters.rank"]["dom_id"] == "lora_parameters-rank"
    assert [v for v, _ in specs["fine_tune_type"]["choices"]] == ["lora", "dora", "full"]
    assert [v for v, _ in specs["lr_schedule.name"]["choices"]][:2] == ["", "cosine_decay"]
    assert dict(specs["optimizer_config"]["options"])["adamw"].startswith("betas=[0.9, 0.999]")


def test_optimizer_options_as_pairs_or_json() -> None:
    assert parse_options("weight_decay=0.01, betas=[0.9, 0.98], bias_correction=true") == {
        "weight_decay": 0.01, "betas": [0.9, 0.98], "bias_correction": True}
    assert parse_options('{"momentum": 0.9}') == {"momentum": 0.9}
    assert parse_options("eps=abc") == {"eps": "abc"}  # left to validation, which names the type expected
    for text, message in (("weight_decay", "cannot read 'weight_decay'"), ("a=1, a=2", "a is given twice"),
                          ("momentum=", "momentum has no value"), ("{nope", "not a valid JSON object")):
        with pytest.raises(FormProblem, match=message):
            parse_options(text)
    payload = form_to_payload({"optimizer": "sgd", "optimizer_config": "momentum=0.9, nesterov=true"})
    assert payload["optimizer_config"] == {"sgd": {"momentum": 0.9, "nesterov": True}}


def test_form_errors_name_the_form_field() -> None:
    assert error_key(("lora_parameters", "rank")) == ("lora_parameters.rank", "")
    assert error_key(("lr_schedule", "arguments", 1)) == ("lr_schedule.arguments", "1")
    assert error_key(("optimizer_config", "adamw", "weight_decay")) == ("optimizer_config", "adamw.weight_decay")
    assert error_key(()) == ("form", "")
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(form_to_payload({
            "iters": "0", "optimizer": "adamw", "optimizer_config": "weight_decay=-1",
            "lr_schedule.name": "cosine_decay", "lr_schedule.arguments": "1e-5, x"}))
    errors = form_errors(info.value)
    assert errors["iters"] == "iters must be at least 1"
    assert errors["optimizer_config"] == "weight_decay must be at least 0"
    assert errors["lr_schedule.arguments"] == ("lr_schedule.arguments item 2 takes a number, such as 0.0001 or 1e-4; "
                                               "“x” is not one")


def test_form_errors_are_sentences_naming_the_field_and_what_it_takes() -> None:
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(form_to_payload({
            "iters": "abc", "batch_size": "0", "learning_rate": "fast", "fine_tune_type": "qlora",
            "lora_parameters.dropout": "1.5", "name": "x" * 300}))
    errors = form_errors(info.value)
    assert errors["iters"] == "iters takes a whole number, such as 200; “abc” is not one"
    assert errors["learning_rate"] == "learning_rate takes a number, such as 0.0001 or 1e-4; “fast” is not one"
    assert errors["batch_size"] == "batch_size must be at least 1"
    assert errors["fine_tune_type"] == "fine_tune_type takes one of 'lora', 'dora' or 'full'"
    assert errors["lora_parameters.dropout"] == "lora_parameters.dropout must be less than 1"
    assert not any("Input should" in message for message in errors.values()), errors


# Warnings ---------------------------------------------------------------------------

FACTS = ConfigFacts(ModelFacts(layers=32, dtype="float32", max_positions=4096),
                    DataFacts(train=1200, valid=150, test=150, train_format="chat"), cpu_only=True)
CLEAN: dict[str, Any] = {"iters": 600, "num_layers": 16, "steps_per_eval": 100, "save_every": 100, "val_batches": 10,
                         "max_seq_length": 2048}


def _fields(payload: dict[str, Any], facts: ConfigFacts = FACTS) -> list[str]:
    return [w.field for w in config_warnings(RunConfig.model_validate({**CLEAN, **payload}), facts)]


def test_a_sensible_config_has_no_warnings() -> None:
    assert _fields({}) == []
    assert _fields({"save_every": 200}) == []  # every checkpoint still has a validation loss


def test_checkpoints_without_validation_loss_warn() -> None:
    assert _fields({"steps_per_eval": 200, "save_every": 100}) == ["save_every"]
    assert _fields({"steps_per_eval": 200, "save_every": 100, "full_val_at_checkpoints": True}) == []
    message = config_warnings(RunConfig.model_validate({**CLEAN, "steps_per_eval": 50, "save_every": 30}), FACTS)[0]
    assert "save_every (30) is not a multiple of steps_per_eval (50)" in message.message


def test_model_warnings_layers_dtype_positions() -> None:
    small = ConfigFacts(ModelFacts(layers=4, dtype="bfloat16", max_positions=1024), FACTS.data, cpu_only=True)
    assert _fields({}, small) == ["num_layers", "model", "max_seq_length"]
    assert "the model's 4 layers" in config_warnings(RunConfig.model_validate(CLEAN), small)[0].message
    assert "float32" in config_warnings(RunConfig.model_validate(CLEAN), small)[1].message
    on_gpu = ConfigFacts(ModelFacts(layers=4, dtype="bfloat16"), FACTS.data, cpu_only=False)
    assert _fields({"num_layers": -1}, on_gpu) == []


def test_evaluation_and_schedule_warnings() -> None:
    assert _fields({"save_every": 1000, "steps_per_eval": 1000}) == ["save_every", "steps_per_eval"]
    assert _fields({"val_batches": 100}) == ["val_batches"]  # 400 examples wanted, 150 there
    few = ConfigFacts(FACTS.model, DataFacts(train=1200, valid=9, test=5, train_format="chat"), cpu_only=True)
    config = RunConfig.model_validate({**CLEAN, "val_batches": 3, "test": True, "test_batches": 3})
    said = {w.field: w.message for w in config_warnings(config, few)}
    assert "each evaluation uses 2 full batches " in said["val_batches"]
    assert "each evaluation uses 1 full batch " in said["test_batches"]
    assert _fields({"test": True, "test_batches": 100}) == ["test_batches"]
    assert _fields({"early_stopping": {"patience": 6}}) == ["early_stopping.patience"]  # 6 evaluations only
    assert _fields({"early_stopping": {"patience": 5}}) == []
    schedule = {"name": "cosine_decay", "arguments": [1e-5, 600]}
    assert _fields({"lr_schedule": schedule}) == []
    assert _fields({"lr_schedule": {**schedule, "arguments": [1e-4, 600]}}) == ["learning_rate"]
    assert _fields({"lr_schedule": {**schedule, "arguments": [1e-5, 100]}}) == ["lr_schedule.arguments"]
    assert _fields({"lr_schedule": {**schedule, "warmup": 600}}) == ["lr_schedule.warmup"]
    # the schedule counts optimizer updates: 600 iterations with accumulation 2 are 300 updates
    assert _fields({"grad_accumulation_steps": 2, "lr_schedule": {**schedule, "arguments": [1e-5, 300]}}) == []


def test_data_and_training_warnings() -> None:
    no_valid = ConfigFacts(FACTS.model, DataFacts(train=1200, valid=None), cpu_only=True)
    assert _fields({"early_stopping": {"patience": 2}}, no_valid) == ["data"]
    text = ConfigFacts(FACTS.model, DataFacts(train=1200, valid=150, train_format="text"), cpu_only=True)
    assert _fields({"mask_prompt": True}, text) == ["mask_prompt"]
    assert _fields({"fine_tune_type": "full", "lora_parameters": {"rank": 16}}) == ["lora_parameters.rank"]
    assert _fields({"grad_accumulation_steps": 3}) == ["grad_accumulation_steps"]


def test_model_facts_from_a_model_folder(tmp_path: Path, default_model: Path) -> None:
    settings = Settings(data_dir=tmp_path, hf_offline=True)
    facts = read_model_facts(str(default_model), settings)
    assert (facts.layers, facts.dtype, facts.max_positions) == (4, "float32", 1024)
    assert read_model_facts(str(tmp_path / "missing"), settings) == ModelFacts()
    assert read_model_facts("some-org/not-in-the-cache", settings) == ModelFacts()


def test_changed_advanced_fields_are_counted() -> None:
    assert changed_advanced(form_values(RunConfig())) == []
    values = form_values(RunConfig(steps_per_eval=50, test=True, optimizer="adamw"))
    assert changed_advanced(values) == ["steps_per_eval", "test", "optimizer"]
    assert changed_advanced({**form_values(RunConfig()), "grad_checkpoint": "on", "seed": " 0 "}) == ["grad_checkpoint"]
