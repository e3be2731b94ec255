"""RunConfig: defaults, resolution, form parsing (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.runconfig import RunConfig, form_field_specs, form_to_payload, looks_like_path, resolve_model
from app.settings import Settings


def test_defaults_follow_mlx_lm_lora() -> None:
    config = RunConfig()
    assert (config.iters, config.batch_size, config.learning_rate) == (1000, 4, 1e-5)
    assert (config.steps_per_report, config.steps_per_eval, config.save_every, config.val_batches) == (10, 200, 100, 25)
    assert config.lora_parameters.model_dump(exclude_none=True) == {"rank": 8, "scale": 20.0, "dropout": 0.0}
    assert config.early_stopping is None


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
    ("payload", "field"),
    [
        ({"iters": 0}, "iters"),
        ({"batch_size": "four"}, "batch_size"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"fine_tune_type": "qlora"}, "fine_tune_type"),
        ({"lora_parameters": {"rank": 0}}, "lora_parameters"),
        ({"early_stopping": {"patience": 0}}, "early_stopping"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_values_name_their_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(payload)
    assert info.value.errors()[0]["loc"][0] == field


def test_form_round_trip() -> None:
    form = {"iters": "50", "lora_parameters.rank": "4", "grad_checkpoint": "on", "name": "  "}
    payload = form_to_payload(form)
    assert payload == {"iters": "50", "lora_parameters": {"rank": "4"}, "grad_checkpoint": True,
                       "mask_prompt": False, "full_val_at_checkpoints": False}
    config = RunConfig.model_validate(payload)
    assert config.iters == 50 and config.lora_parameters.rank == 4 and config.grad_checkpoint


def test_form_fields_carry_help_and_choices() -> None:
    specs = {s["key"]: s for s in form_field_specs({"iters": 7})}
    assert specs["iters"]["value"] == 7
    assert specs["iters"]["help"] == RunConfig.model_fields["iters"].description
    assert specs["fine_tune_type"]["choices"] == ["lora", "dora", "full"]


def test_form_early_stopping_switch_decides() -> None:
    form = {"early_stopping.patience": "4", "early_stopping.min_delta": "0.01"}
    assert "early_stopping" not in form_to_payload(form)
    config = RunConfig.model_validate(form_to_payload({**form, "early_stopping.enabled": "on"}))
    assert config.early_stopping is not None
    assert (config.early_stopping.patience, config.early_stopping.min_delta) == (4, 0.01)
    specs = {s["key"]: s for s in form_field_specs({"early_stopping.patience": 4})}
    assert specs["early_stopping.enabled"]["value"] is False  # unchecked stays unchecked
