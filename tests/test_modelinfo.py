"""Model information from real files, and the trainable count against mlx-lm and the worker's own figures."""

from __future__ import annotations

import json
import shutil
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import QUICK_RUN, Server

from app.catalog.files import read_safetensors_header
from app.catalog.info import ModelInfoError, model_choices, model_info, trainable_params
from app.contract.paths import hf_hub_cache_dir
from app.contract.settings import Settings

BYTES = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16"}


# ---------- model folders made by hand or by mlx-lm ----------

def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file in the format's own layout (length, JSON header, data), data left sparse (zeros)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in sorted(tensors.items()):
        size = BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)


def mistral_7b_tensors(bits: int | None = None, group_size: int = 64) -> dict[str, tuple[str, list[int]]]:
    """Mistral-7B's tensors (bf16, or quantized as mlx stores them: packed uint32 weight, scales, biases)."""
    linear = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096), "self_attn.v_proj": (1024, 4096),
              "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096),
              "mlp.down_proj": (4096, 14336)}
    tensors: dict[str, tuple[str, list[int]]] = {"model.norm.weight": ("BF16", [4096])}

    def add(name: str, out_dims: int, in_dims: int) -> None:
        if bits is None:
            tensors[f"{name}.weight"] = ("BF16", [out_dims, in_dims])
            return
        tensors[f"{name}.weight"] = ("U32", [out_dims, in_dims * bits // 32])
        tensors[f"{name}.scales"] = ("BF16", [out_dims, in_dims // group_size])
        tensors[f"{name}.biases"] = ("BF16", [out_dims, in_dims // group_size])

    add("model.embed_tokens", 32000, 4096)
    add("lm_head", 32000, 4096)
    for i in range(32):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = ("BF16", [4096])
        for name, (out_dims, in_dims) in linear.items():
            add(f"model.layers.{i}.{name}", out_dims, in_dims)
    return tensors


def write_model(folder: Path, config: dict[str, Any], tensors: dict[str, tuple[str, list[int]]],
                shards: int = 2) -> Path:
    """config.json plus sharded model-0000k-of-0000n.safetensors and model.safetensors.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / file, {n: tensors[n] for n in part})
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def hub_snapshot(hf_home: Path, repo_id: str, revision: str = "0123456789abcdef") -> Path:
    """The folder huggingface_hub would hold a cached repo's files in (refs/main naming it)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def quantize(source: Path, target: Path, **kwargs: Any) -> Path:
    from mlx_lm.convert import convert

    convert(str(source), str(target), quantize=True, q_group_size=32, **kwargs)
    return target


@pytest.fixture(scope="module")
def quantized_models(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model quantized by mlx-lm: 4-bit, and mixed 3/6-bit (per-layer entries in config.json)."""
    root = tmp_path_factory.mktemp("quantized")
    return {"q4": quantize(default_model, root / "q4", q_bits=4),
            "mixed": quantize(default_model, root / "mixed", quant_predicate="mixed_3_6")}


def settings_for(tmp_path: Path, **kwargs: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", hf_offline=True, **kwargs)


# ---------- what a model is ----------

def test_tiny_model_info_read_from_headers(default_model: Path) -> None:
    from mlx_lm.utils import get_total_parameters, load

    info = model_info(str(default_model), Settings()).to_json()
    assert (info["model_type"], info["architectures"]) == ("mistral", ["MistralForCausalLM"])
    assert (info["num_layers"], info["hidden_size"], info["num_attention_heads"], info["num_key_value_heads"],
            info["vocab_size"], info["intermediate_size"]) == (4, 128, 4, 2, 1536, 352)
    assert info["dtype"] == "float32" and info["quantization"] is None and info["weight_files"] == 1
    assert info["size_bytes"] == sum(p.stat().st_size for p in default_model.iterdir())
    assert info["default_lora_keys"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                         "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    model, _ = load(str(default_model))
    assert info["total_params"] == get_total_parameters(model)
    assert model_info("", Settings()).path == Settings().default_model_dir  # empty: the embedded default


def test_mistral_7b_gives_the_figure_mlx_lm_prints(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "mistral-7b", MISTRAL_7B, mistral_7b_tensors())
    info = model_info(str(folder), settings_for(tmp_path))
    assert info.total_params == 7_241_732_096 and info.dtype == "bfloat16" and info.weight_files == 2
    trainable = trainable_params(info, "lora", 16, 8)
    assert trainable.trainable == 10_485_760
    assert trainable.text == "0.145% (10.486M / 7,241.732M)"
    assert trainable_params(info, "lora", 16, 8, ["self_attn.q_proj", "self_attn.v_proj"]).trainable == 16 * (
        8 * (4096 + 4096) + 8 * (4096 + 1024))
    full = trainable_params(info, "full", 2, 8)
    assert full.trainable == 2 * 218_112_000 and full.total_with_adapters == info.total_params


def test_quantized_weights_count_unpacked(tmp_path: Path) -> None:
    config = {**MISTRAL_7B, "quantization": {"group_size": 64, "bits": 4}}
    info = model_info(str(write_model(tmp_path / "q4", config, mistral_7b_tensors(bits=4))), settings_for(tmp_path))
    assert info.total_params == 7_241_732_096  # packed uint32 columns count 8 parameters each at 4 bits
    assert info.quantization == {"method": "affine", "bits": 4, "group_size": 64, "mixed": False,
                                 "quantized_params": 7_241_732_096 - 65 * 4096}
    assert trainable_params(info, "lora", 16, 8).text == "0.145% (10.486M / 7,241.732M)"
    # no config entry for the layers' own bits: the shapes decide (8-bit, group 32)
    eight = {**MISTRAL_7B, "quantization": {"group_size": 64, "bits": 4}}
    info = model_info(str(write_model(tmp_path / "q8", eight, mistral_7b_tensors(bits=8, group_size=32))),
                      settings_for(tmp_path))
    assert info.total_params == 7_241_732_096 and info.quantization is not None
    assert (info.quantization["bits"], info.quantization["group_size"]) == (8, 32)


SETTINGS_TO_CHECK = [("lora", 4, None), ("lora", 2, ["self_attn.q_proj", "self_attn.v_proj"]), ("dora", 3, None),
                     ("full", 2, None), ("lora", -1, None), ("lora", 1, ["lm_head", "mlp.down_proj"]),
                     ("dora", -1, None)]


@pytest.mark.real  # mlx_lm loads the model
@pytest.mark.parametrize("which", ["float32", "q4", "mixed"])
def test_trainable_equals_mlx_lm_on_the_loaded_model(which: str, default_model: Path,
                                                     quantized_models: dict[str, Path]) -> None:
    """The count from headers equals what the worker's own attach_adapters leaves trainable, with mlx-lm's total."""
    from mlx_lm.utils import get_total_parameters, load

    from app.contract.run_config import LoraParameters, RunConfig
    from worker.loading import attach_adapters, count_parameters

    folder = default_model if which == "float32" else quantized_models[which]
    info = model_info(str(folder), Settings())
    assert (info.quantization is None) == (which == "float32")
    for fine_tune_type, num_layers, keys in SETTINGS_TO_CHECK:
        model, _ = load(str(folder))
        attach_adapters(model, RunConfig(fine_tune_type=fine_tune_type, num_layers=num_layers,
                                         lora_parameters=LoraParameters(rank=6, keys=keys)))
        trainable, total = count_parameters(model)
        counted = trainable_params(info, fine_tune_type, num_layers, 6, keys)
        assert (counted.trainable, counted.total) == (trainable, total), (which, fine_tune_type, num_layers, keys)
        assert total == get_total_parameters(model)  # the worker reports mlx-lm's own total
    if which == "mixed":
        assert info.quantization is not None and info.quantization["bits"] == [3, 6]


# ---------- clear errors ----------

def test_clear_errors_for_what_cannot_be_read(tmp_path: Path, default_model: Path) -> None:
    settings = settings_for(tmp_path)

    def error(model: str) -> str:
        with pytest.raises(ModelInfoError) as caught:
            model_info(model, settings, environ={"HF_HOME": str(tmp_path / "hf")})
        return str(caught.value)

    assert "does not exist" in error(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in error(str(tmp_path / "empty"))
    message = error("acme/not-cached")
    assert "not in the local Hugging Face cache" in message and str(tmp_path / "hf" / "hub") in message
    assert "offline" in message
    assert "neither an existing folder nor a Hugging Face model id" in error("not a model id!")

    broken = tmp_path / "broken"
    shutil.copytree(default_model, broken)
    (broken / "config.json").write_text("{\"model_type\": ")
    assert "config.json is not valid JSON" in error(str(broken))
    (broken / "config.json").write_text("{}")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    assert "truncated" in error(str(broken)) and "model.safetensors" in error(str(broken))
    weights.unlink()
    assert "no model*.safetensors" in error(str(broken))
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    assert "lists model-00002.safetensors, which is missing" in error(str(broken))
    weights.write_bytes(b"\x05")
    with pytest.raises(ModelInfoError, match="shorter than the 8-byte header length"):
        read_safetensors_header(weights)


def test_lora_keys_are_checked_as_mlx_lm_would_apply_them(default_model: Path) -> None:
    info = model_info(str(default_model), Settings())
    with pytest.raises(ModelInfoError, match=r"input_layernorm .*linear and embedding layers only") as caught:
        trainable_params(info, "lora", 4, 8, ["input_layernorm"])
    assert caught.value.field == "keys"
    with pytest.raises(ModelInfoError, match=r"names a block, not a linear layer; .*self_attn\.k_proj"):
        trainable_params(info, "lora", 4, 8, ["self_attn"])
    unknown = trainable_params(info, "lora", 4, 8, ["attn.c_attn"])
    assert unknown.trainable == 0 and any("matches no layer" in w for w in unknown.warnings)
    assert any("has 4 layers" in w for w in trainable_params(info, "lora", 40, 8).warnings)
    with pytest.raises(ModelInfoError, match="fine_tune_type must be one of lora, dora, full"):
        trainable_params(info, "qlora", 4, 8)


# ---------- what the picker lists ----------

def test_choices_list_local_folders_and_the_hub_cache(tmp_path: Path, default_model: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(default_model, models / "tiny")
    shutil.copytree(default_model, models / "acme" / "tiny-nested")
    (models / "notes").mkdir()  # no config.json anywhere: not a model
    (models / ".hidden").mkdir()
    shutil.copytree(default_model, hub_snapshot(tmp_path / "hf", "acme/tiny"))
    (tmp_path / "hf" / "hub" / "datasets--acme--data").mkdir()
    choices = model_choices(settings_for(tmp_path, models_dir=models), environ={"HF_HOME": str(tmp_path / "hf")})
    assert [(c["name"], c["source"], c["model"]) for c in choices] == [
        ("acme/tiny-nested", "local", str(models / "acme" / "tiny-nested")),
        ("tiny", "local", str(models / "tiny")),
        ("acme/tiny", "hf-cache", "acme/tiny"),
    ]
    assert all(c["size_bytes"] > 4_000_000 and c["model_type"] == "mistral" for c in choices)
    assert choices[2]["revision"] == "0123456789abcdef"


def test_hub_cache_found_as_huggingface_hub_finds_it(tmp_path: Path) -> None:
    assert hf_hub_cache_dir({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert hf_hub_cache_dir({"HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}) == Path("/b/hub")
    assert hf_hub_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/huggingface/hub")
    assert hf_hub_cache_dir({}) == Path.home() / ".cache" / "huggingface" / "hub"


# ---------- the API, and what the worker reports ----------

@pytest.fixture(scope="module")
def cache_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    """A server whose Hugging Face cache holds the tiny model as acme/tiny."""
    root = tmp_path_factory.mktemp("cache-srv")
    shutil.copytree(default_model, hub_snapshot(root / "hf", "acme/tiny"))
    server = Server(root, extra_env={"HF_HOME": str(root / "hf")}).start()
    yield server
    server.stop()


def test_api_lists_models_and_describes_them(cache_server: Server, default_model: Path) -> None:
    choices = {c["name"]: c for c in cache_server.get("/api/models")}
    assert choices["tiny-mistral"]["source"] == "local" and choices["tiny-mistral"]["model"] == str(default_model)
    assert choices["acme/tiny"]["source"] == "hf-cache"
    info = cache_server.get("/api/models/info?model=acme/tiny&num_layers=2&rank=4")
    assert info["source"] == "hf-cache" and info["revision"] == "0123456789abcdef" and info["num_layers"] == 4
    per_layer = 2 * (128 + 128) + 2 * (128 + 64) + 3 * (128 + 352)  # q, o; k, v; gate, up, down
    assert info["trainable"]["trainable_params"] == 2 * 4 * per_layer
    status, body, _ = cache_server.request("GET", "/api/models/info?model=acme/elsewhere")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "model"]
    assert "not in the local Hugging Face cache" in body["detail"][0]["msg"]
    status, body, _ = cache_server.request("GET", "/api/models/info?keys=input_layernorm")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "keys"]
    status, body, _ = cache_server.request("GET", "/api/models/info?rank=0")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "rank"]


RUNS_TO_CHECK: list[dict[str, Any]] = [
    {"fine_tune_type": "lora", "num_layers": 4, "lora_parameters": {"rank": 8}},
    {"fine_tune_type": "lora", "num_layers": 3, "lora_parameters": {"rank": 4, "keys": ["self_attn.q_proj",
                                                                                         "mlp.down_proj"]}},
    {"fine_tune_type": "dora", "num_layers": 2, "lora_parameters": {"rank": 16}},
    {"fine_tune_type": "lora", "num_layers": -1, "lora_parameters": {"rank": 8}, "model": "acme/tiny"},
    {"fine_tune_type": "full", "num_layers": 1},
]


def test_the_count_before_start_is_what_the_run_reports(cache_server: Server, short_data: Path) -> None:
    """Real runs (one step each, on short examples): /api/models/info before Start equals the trainable/total the
    worker writes when it starts."""
    expected, run_ids = [], []
    for settings in RUNS_TO_CHECK:
        lora = settings.get("lora_parameters", {})
        query = urllib.parse.urlencode({
            "model": settings.get("model", ""), "fine_tune_type": settings["fine_tune_type"],
            "num_layers": settings["num_layers"], "rank": lora.get("rank", 8), "keys": ",".join(lora.get("keys", [])),
        })
        expected.append(cache_server.get(f"/api/models/info?{query}")["trainable"])
        status, run = cache_server.post("/api/runs", {**QUICK_RUN, "data": str(short_data), "iters": 1,
                                                      "steps_per_eval": 100, "save_every": 100, "val_batches": 1,
                                                      **settings})
        assert status == 201, run
        run_ids.append(run["id"])
    for run_id, info, settings in zip(run_ids, expected, RUNS_TO_CHECK, strict=True):
        run = cache_server.wait_terminal(run_id, timeout=180)
        assert run["status"] == "completed", run
        assert (run["trainable_params"], run["total_params"]) == (
            info["trainable_params"], info["total_params"]), settings
    assert expected[0]["text"] == "6.606% (0.075M / 1.132M)"
