"""lora_precision: the option's round trips (config, form, YAML, adapter_config.json) and the mixed layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.contract.run_config import RunConfig
from app.runs.configs.yaml_config import YamlConfigError, export_yaml, parse_yaml_config
from app.runs.form.fields import field_specs, form_to_payload, form_values


def test_option_defaults_to_mixed_and_round_trips_through_the_config() -> None:
    assert RunConfig().lora_precision == "mixed"
    config = RunConfig(lora_precision="float32")
    assert RunConfig.model_validate_json(config.model_dump_json()).lora_precision == "float32"
    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate({"lora_precision": "bfloat16"})
    assert err.value.errors()[0]["loc"] == ("lora_precision",)
    assert "'mixed' or 'float32'" in err.value.errors()[0]["msg"]


def test_form_offers_both_with_help_that_says_when_it_matters() -> None:
    spec = {s["key"]: s for s in field_specs({})}["lora_precision"]
    assert [value for value, _ in spec["choices"]] == ["mixed", "float32"]
    assert spec["default"] == "mixed" and form_values(RunConfig())["lora_precision"] == "mixed"
    assert "bfloat16/float16" in spec["help"] and "float32" in spec["help"]
    payload = form_to_payload({"lora_precision": "float32"})
    assert RunConfig.model_validate(payload).lora_precision == "float32"


@pytest.mark.parametrize("precision", ["mixed", "float32"])
def test_yaml_export_and_import_keep_it_under_loraboard(precision: str) -> None:
    text = export_yaml(RunConfig(model="/m", data="/d", lora_precision=precision))
    assert f"\n  lora_precision: {precision}\n" in text  # loraboard's own key: mlx_lm ignores it
    assert "\nlora_precision:" not in text
    assert parse_yaml_config(text).config.lora_precision == precision


def test_yaml_refuses_an_unknown_precision_with_its_line() -> None:
    text = export_yaml(RunConfig(model="/m", data="/d")).replace("lora_precision: mixed", "lora_precision: fp8")
    with pytest.raises(YamlConfigError) as err:
        parse_yaml_config(text)
    problem = err.value.problems[0]
    assert problem.key == "loraboard.lora_precision" and problem.line is not None


# Worker side: imports mlx (CPU).

def _tiny_model() -> Any:
    import mlx.core as mx
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(0)
    return Model(ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=128,
                           tie_word_embeddings=False))


def test_adapter_config_carries_it_and_mlx_lm_loads_the_adapters_unchanged(tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.tuner.utils import load_adapters

    from worker.loading import attach_adapters
    from worker.mixed_lora import MixedLoRALinear, use_mixed_lora
    from worker.train import save_adapter, write_adapter_config

    config = RunConfig(num_layers=2, lora_precision="mixed")
    model = _tiny_model()
    attach_adapters(model, config)
    before = dict(tree_flatten(model.trainable_parameters()))
    assert use_mixed_lora(model) == 2 * 7  # seven linears a block
    assert isinstance(model.layers[0].self_attn.q_proj, MixedLoRALinear)
    saved = dict(tree_flatten(model.trainable_parameters()))
    assert saved.keys() == before.keys() and {str(v.dtype) for v in saved.values()} == {"mlx.core.float32"}
    for key in saved:  # lora_b starts at zero: give the file something to prove
        saved[key] = saved[key] + 0.01 if key.endswith("lora_b") else saved[key]
    model.update(tree_unflatten(list(saved.items())))
    write_adapter_config(tmp_path, config, 2)
    save_adapter(model, tmp_path / "adapters.safetensors", "the adapter")
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["lora_precision"] == "mixed" and written["num_layers"] == 2
    assert "name" not in written  # the other loraboard keys stay out, as before

    fresh = load_adapters(_tiny_model(), str(tmp_path))  # what mlx_lm generate/fuse/server do
    assert type(fresh.layers[0].self_attn.q_proj) is LoRALinear
    loaded = dict(tree_flatten(fresh.parameters()))
    for key, value in saved.items():
        assert loaded[key].dtype == mx.float32 and mx.array_equal(loaded[key], value).item(), key


def _layers(dora: bool) -> tuple[Any, Any]:
    """mlx-lm's layer and its mixed twin with the same weights (lora_b non-zero)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    from worker.mixed_lora import MixedDoRALinear, MixedLoRALinear

    mx.random.seed(1)
    base, mixed_cls = (DoRALinear, MixedDoRALinear) if dora else (LoRALinear, MixedLoRALinear)
    stock = base.from_base(nn.Linear(96, 48), r=8, scale=20.0)
    stock.lora_b = mx.random.normal(stock.lora_b.shape) * 0.05
    mixed = base.from_base(stock.linear, r=8, scale=20.0)
    mixed.update(stock.parameters())
    mixed.__class__ = mixed_cls
    return stock, mixed


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_mixed_layer_is_bit_identical_on_float32_input(dora: bool) -> None:
    import mlx.core as mx

    stock, mixed = _layers(dora)
    x = mx.random.normal((3, 7, 96))
    out = mixed(x)
    assert out.dtype == mx.float32 and mx.array_equal(out, stock(x)).item()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_mixed_layer_on_bf16_input_matches_float32_within_bf16_and_trains_float32_weights(dora: bool) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    stock, mixed = _layers(dora)
    mixed.linear.set_dtype(mx.bfloat16)  # the base in bf16 (as on a GPU); the adapter weights stay float32
    x = mx.random.normal((3, 7, 96))
    reference = stock(x)  # everything float32
    out = mixed(x.astype(mx.bfloat16))
    assert out.dtype == mx.bfloat16 and mixed.lora_a.dtype == mx.float32
    error = mx.abs(out.astype(mx.float32) - reference).max().item()
    assert error <= 0.02 * mx.abs(reference).max().item()  # bf16 keeps 8 bits of mantissa
    assert error > 0  # it did compute in bf16

    mixed.freeze()
    mixed.unfreeze(keys=["lora_a", "lora_b"], recurse=False)

    def loss(module: nn.Module, inputs: mx.array) -> mx.array:
        return module(inputs).astype(mx.float32).square().mean()

    _, grads = nn.value_and_grad(mixed, loss)(mixed, x.astype(mx.bfloat16))
    assert grads["lora_a"].dtype == mx.float32 and grads["lora_b"].dtype == mx.float32
    assert mx.abs(grads["lora_a"]).max().item() > 0 and mx.abs(grads["lora_b"]).max().item() > 0


def test_precision_label_says_when_mixed_applied() -> None:
    from worker.mixed_lora import mixed_applies, precision_label

    assert mixed_applies("mixed", "lora", "bfloat16") and mixed_applies("mixed", "dora", "float16")
    assert not mixed_applies("float32", "lora", "bfloat16")
    assert not mixed_applies("mixed", "full", "bfloat16")
    assert not mixed_applies("mixed", "lora", "float32 (weights stored as bfloat16)")  # CPU
    assert precision_label("mixed", "lora", "bfloat16").startswith("bfloat16, mixed-precision LoRA")
    assert precision_label("float32", "lora", "bfloat16") == "bfloat16, float32 LoRA"
    cpu = "float32 (weights stored as bfloat16)"  # the option changes nothing on a float32 model: said as before
    assert precision_label("mixed", "lora", cpu) == precision_label("float32", "lora", cpu) == cpu
    assert precision_label("mixed", "full", "bfloat16") == "bfloat16"


@pytest.mark.browser
def test_form_shows_the_option_in_the_lora_group(shared_server: Any, page: Any) -> None:
    from conftest import shot
    from playwright.sync_api import expect

    page.goto(shared_server.url + "/runs/new")
    page.click("#advanced summary")
    field = page.locator("#field-lora_precision")
    expect(field).to_be_visible()
    expect(page.locator("#f-lora_precision")).to_have_value("mixed")
    expect(field.locator(".help")).to_contain_text("bfloat16/float16")
    assert page.locator("#f-lora_precision option").all_inner_texts() == ["mixed", "float32"]
    legend = field.locator("xpath=ancestor::fieldset[1]/legend")
    expect(legend).to_have_text("LoRA")
    field.scroll_into_view_if_needed()
    shot(page, "lora-precision-form")
