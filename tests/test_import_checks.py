"""An import checks its adapter files and config before anything is written: malformed safetensors headers,
tensors that do not fit the config (rank, layers, DoRA's m, full weights) and config values of the wrong type
or range are a 422 naming the file and what is wrong, with no run row and no folder left behind.

The good adapters are written by mlx-lm itself (its LoRA/DoRA conversion of the embedded tiny model, saved as its
trainer saves them); the malformed ones are those files broken one way each.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcess
from sqlmodel import Session, func, select

from app.contract.run_config import RunConfig
from app.imports.checks import tensor_problem
from app.imports.safetensors_header import read_header
from app.tables import Checkpoint, Run

RANK, LAYERS = 4, 2  # of the good adapters; the tiny model has 4 layers


@pytest.fixture(scope="module")
def mlx_adapters(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> dict[str, Path]:
    """adapters.safetensors of each fine_tune_type, as mlx-lm's trainer saves them (its trainable parameters)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    out = tmp_path_factory.mktemp("mlx-adapters")
    files = {}
    for kind in ("lora", "dora", "full"):
        model, _ = load_model(default_model)
        model.freeze()
        if kind == "full":
            for layer in model.layers[-LAYERS:]:
                layer.unfreeze()
        else:
            linear_to_lora_layers(model, LAYERS, {"rank": RANK, "scale": 10.0, "dropout": 0.0},
                                  use_dora=kind == "dora")
        files[kind] = out / f"{kind}.safetensors"
        mx.save_safetensors(str(files[kind]), dict(tree_flatten(model.trainable_parameters())))
    return files


def adapter_config(model: Path, **changes: Any) -> dict[str, Any]:
    """adapter_config.json as mlx_lm lora writes it (the keys loraboard reads, and some it does not)."""
    config = {"model": str(model), "train": True, "fine_tune_type": "lora", "optimizer": "adam",
              "optimizer_config": {"adam": {}, "sgd": {}}, "data": "data", "seed": 0, "num_layers": LAYERS,
              "batch_size": 4, "iters": 20, "val_batches": 2, "learning_rate": 1e-05, "steps_per_report": 5,
              "steps_per_eval": 10, "adapter_path": "adapters", "save_every": 10, "max_seq_length": 256,
              "lora_parameters": {"rank": RANK, "dropout": 0.0, "scale": 10.0}, "report_to": None, "wandb": None}
    config.update(changes)
    return config


def good_folder(where: Path, weights: Path, model: Path, **changes: Any) -> Path:
    where.mkdir(parents=True)
    (where / "adapter_config.json").write_text(json.dumps(adapter_config(model, **changes)))
    shutil.copy(weights, where / "0000010_adapters.safetensors")
    shutil.copy(weights, where / "adapters.safetensors")
    return where


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def join(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def rebuild(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A well-formed safetensors file of these tensors (zeros), packed one after another."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = 4 * (shape[0] if len(shape) == 1 else shape[0] * shape[1])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    join(path, header, bytes(offset))


def reshape(path: Path, change: Callable[[dict[str, tuple[str, list[int]]]], None]) -> None:
    header, _ = split(path)
    header.pop("__metadata__", None)
    tensors = {name: (entry["dtype"], entry["shape"]) for name, entry in header.items()}
    change(tensors)
    rebuild(path, tensors)


def edit_header(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    header, data = split(path)
    change(header)
    join(path, header, data)


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def first(header: dict[str, Any], suffix: str) -> dict[str, Any]:
    return next(entry for name, entry in sorted(header.items()) if name.endswith(suffix))


def shift(entry: dict[str, Any], start: int, end: int) -> None:
    entry["data_offsets"] = [entry["data_offsets"][0] + start, entry["data_offsets"][1] + end]


Q = "model.layers.3.self_attn.q_proj"
FINAL, TEN = "adapters.safetensors", "0000010_adapters.safetensors"

# (what is malformed, how, [the file it names, the field it names])
CASES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("empty file", lambda f: (f / FINAL).write_bytes(b""), [f"/{FINAL}: not a safetensors file", "8-byte header"]),
    ("truncated header", lambda f: (f / FINAL).write_bytes((f / FINAL).read_bytes()[:100]),
     [f"/{FINAL}: not a safetensors file", "header length", "exceeds the file's 100 bytes"]),
    ("bad JSON header", lambda f: (f / FINAL).write_bytes(struct.pack("<Q", 9) + b"{not json"),
     [f"/{FINAL}: not a safetensors file", "header is not valid JSON"]),
    ("header a JSON list", lambda f: join(f / FINAL, [], b""),  # type: ignore[arg-type]
     [f"/{FINAL}: not a safetensors file", "JSON list"]),
    ("offsets past the end", lambda f: (f / FINAL).write_bytes((f / FINAL).read_bytes()[:-1000]),
     [f"/{FINAL}: ", "tensors end at byte", "(truncated?)"]),
    ("offsets not the shape's size", lambda f: edit_header(f / FINAL, lambda h: shift(first(h, "lora_b"), 0, -4)),
     [f"/{FINAL}: tensor model.layers.2.mlp.down_proj.lora_b: its data_offsets", "needs 2,048"]),
    ("overlapping offsets", lambda f: edit_header(f / FINAL, lambda h: shift(first(h, "lora_b"), 4, 4)),
     [f"/{FINAL}: tensor ", "(tensors overlap or leave a gap)"]),
    ("unknown dtype", lambda f: edit_header(f / FINAL, lambda h: first(h, "lora_a").update(dtype="Q4")),
     [f"/{FINAL}: ", "unknown dtype \"Q4\""]),
    ("non-numeric shape", lambda f: edit_header(f / FINAL, lambda h: first(h, "lora_a").update(shape=["4", 8])),
     [f"/{FINAL}: ", "has the shape [\"4\", 8]"]),
    ("integer adapter weights", lambda f: edit_header(f / FINAL, lambda h: first(h, "lora_a").update(dtype="I32")),
     [f"/{FINAL}: ", "is I32"]),
    ("wrong rank shapes", lambda f: reshape(f / FINAL, lambda t: t.update({
        f"{Q}.lora_a": ("F32", [128, 8]), f"{Q}.lora_b": ("F32", [8, 128])})),
     [f"/{FINAL}: {Q}: lora_a [128, 8] and lora_b [8, 128]", f"lora_parameters.rank {RANK}"]),
    ("lora_a and lora_b swapped", lambda f: reshape(f / FINAL, lambda t: t.update({
        f"{Q}.lora_a": ("F32", [RANK, 128]), f"{Q}.lora_b": ("F32", [128, RANK])})),
     [f"/{FINAL}: {Q}: ", "lora_a [in, 4], lora_b [4, out]"]),
    ("missing lora_b", lambda f: reshape(f / FINAL, lambda t: t.pop(f"{Q}.lora_b")),
     [f"/{FINAL}: {Q} has lora_a but no lora_b"]),
    ("a layer outside num_layers", lambda f: reshape(f / FINAL, lambda t: t.update({
        "model.layers.0.self_attn.q_proj.lora_a": ("F32", [128, RANK]),
        "model.layers.0.self_attn.q_proj.lora_b": ("F32", [RANK, 128])})),
     [f"/{FINAL}: model.layers.0.self_attn.q_proj.lora_a is in layer 0", "num_layers 2"]),
    ("a base weight in a LoRA adapter", lambda f: reshape(f / FINAL, lambda t: t.update({
        f"{Q}.weight": ("F32", [128, 128])})),
     [f"/{FINAL}: {Q}.weight is not a lora tensor", "fine_tune_type lora"]),
    ("LoRA file, fine_tune_type dora", lambda f: edit_config(f, fine_tune_type="dora"),
     [f"/{TEN}: ", "has no DoRA magnitude", ".m (adapter_config.json's fine_tune_type is dora)"]),
    ("LoRA file, fine_tune_type full", lambda f: edit_config(f, fine_tune_type="full"),
     [f"/{TEN}: ", "is a LoRA tensor", "fine_tune_type is full"]),
    ("other keys than lora_parameters.keys", lambda f: edit_config(
        f, lora_parameters={"rank": RANK, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.v_proj"]}),
     [f"/{TEN}: ", "is not among adapter_config.json's lora_parameters.keys"]),
    ("num_layers above the model's", lambda f: edit_config(f, num_layers=6),
     ["/adapter_config.json: num_layers 6 is more than the 4 layers of the model"]),
    ("checkpoint malformed, adapters.safetensors fine", lambda f: (f / TEN).write_bytes(b"garbage\n"),
     [f"/{TEN}: not a safetensors file", "header length"]),
    ("non-numeric rank", lambda f: edit_config(f, lora_parameters={"rank": "eight", "scale": 10.0}),
     ["/adapter_config.json: lora_parameters.rank must be a whole number (got \"eight\")"]),
    ("rank as a string", lambda f: edit_config(f, lora_parameters={"rank": "4", "scale": 10.0}),
     ["/adapter_config.json: lora_parameters.rank must be a whole number (got \"4\")"]),
    ("negative num_layers", lambda f: edit_config(f, num_layers=-3),
     ["/adapter_config.json: num_layers must be at least -1 (got -3)"]),
    ("unknown fine_tune_type", lambda f: edit_config(f, fine_tune_type="qlora"),
     ["/adapter_config.json: fine_tune_type must be one of lora, dora, full (got \"qlora\")"]),
    ("a boolean for iters", lambda f: edit_config(f, iters=True),
     ["/adapter_config.json: iters must be a whole number (got true)"]),
    ("lora_parameters not an object", lambda f: edit_config(f, lora_parameters=[4]),
     ["/adapter_config.json: lora_parameters must be an object of options (got [4])"]),
    ("a schedule with too few arguments", lambda f: edit_config(
        f, lr_schedule={"name": "cosine_decay", "arguments": [1e-5]}),
     ["/adapter_config.json: lr_schedule.arguments: cosine_decay takes 2 or 3 arguments (init, decay_steps, end), "
      "got 1"]),
]


def counts(client: InProcess) -> tuple[int, int, list[str]]:
    """Run rows, checkpoint rows and what the adapters folder holds."""
    with Session(client.engine) as session:
        runs = session.exec(select(func.count()).select_from(Run)).one()
        checkpoints = session.exec(select(func.count()).select_from(Checkpoint)).one()
    adapters = client.root / "adapters"
    return runs, checkpoints, sorted(p.name for p in adapters.iterdir()) if adapters.is_dir() else []


def test_the_probe_folder_is_refused_naming_each_file(shared_app_client: InProcess, tmp_path: Path) -> None:
    before = counts(shared_app_client)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"fine_tune_type":5}\n')
    (folder / "adapters.safetensors").write_text("garbage\n")
    status, answer = shared_app_client.post("/api/imports", {"adapter_dir": str(folder)})
    assert status == 422, answer
    assert answer["detail"] == (f"{folder / 'adapter_config.json'}: fine_tune_type must be one of lora, dora, full "
                                "(got 5)")
    (folder / "adapter_config.json").write_text('{"fine_tune_type":"lora","num_layers":-1}\n')
    status, answer = shared_app_client.post("/api/imports", {"adapter_dir": str(folder)})
    assert status == 422, answer
    length = int.from_bytes(b"garbage\n", "little")  # what the 8 bytes read as a header length
    assert answer["detail"] == (f"{folder / 'adapters.safetensors'}: not a safetensors file (its header length "
                                f"{length:,} exceeds the file's 8 bytes)")
    assert counts(shared_app_client) == before


@pytest.mark.parametrize(("case", "breaks", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_malformed_folder_is_422_naming_the_file_and_leaves_nothing(
    shared_app_client: InProcess, mlx_adapters: dict[str, Path], default_model: Path, tmp_path: Path,
    case: str, breaks: Callable[[Path], None], expected: list[str],
) -> None:
    folder = good_folder(tmp_path / "run", mlx_adapters["lora"], default_model)
    breaks(folder)
    before = counts(shared_app_client)
    status, answer = shared_app_client.post("/api/imports", {"adapter_dir": str(folder)})
    assert status == 422, (case, answer)
    for fragment in expected:
        assert fragment in answer["detail"], (case, fragment, answer["detail"])
    assert str(folder) in answer["detail"]
    assert counts(shared_app_client) == before


@pytest.mark.real  # mlx_lm builds the adapters
def test_mlx_lm_adapters_of_each_kind_import_and_a_mismatch_is_refused(
    shared_app_client: InProcess, mlx_adapters: dict[str, Path], default_model: Path, tmp_path: Path,
) -> None:
    for kind, weights in mlx_adapters.items():
        tensors = read_header(weights)
        fits = RunConfig(fine_tune_type=kind, num_layers=LAYERS, lora_parameters={"rank": RANK})
        assert tensor_problem(tensors, fits, model_layers=4) is None, kind
        others = [k for k in mlx_adapters if k != kind]
        for other in others:  # each file is refused under another fine_tune_type
            assert tensor_problem(tensors, fits.model_copy(update={"fine_tune_type": other}), 4) is not None
        assert tensor_problem(tensors, fits.model_copy(update={"num_layers": 1}), 4) is not None

        before = counts(shared_app_client)
        folder = good_folder(tmp_path / kind, weights, default_model, fine_tune_type=kind,
                             lora_parameters=None if kind == "full" else {"rank": RANK, "scale": 10.0,
                                                                            "dropout": 0.0})
        status, answer = shared_app_client.post("/api/imports", {"adapter_dir": str(folder), "name": kind})
        assert status == 201, answer
        assert answer["config"]["fine_tune_type"] == kind
        assert answer["import"]["dropped_config_keys"] == []
        after = counts(shared_app_client)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # adapters.safetensors is checkpoint 10


def test_unused_options_are_still_dropped_and_listed(
    shared_app_client: InProcess, mlx_adapters: dict[str, Path], default_model: Path, tmp_path: Path,
) -> None:
    folder = good_folder(tmp_path / "extra", mlx_adapters["lora"], default_model, use_dora=False,
                         lora_parameters={"rank": RANK, "scale": 10.0, "dropout": 0.0, "alpha": 16},
                         optimizer="adamw", optimizer_config={"adamw": {"weight_decay": 0.1, "foo": 1}})
    status, answer = shared_app_client.post("/api/imports", {"adapter_dir": str(folder)})
    assert status == 201, answer
    assert answer["import"]["dropped_config_keys"] == ["lora_parameters.alpha", "optimizer_config.adamw.foo",
                                                        "use_dora"]
    assert answer["config"]["optimizer_config"] == {"adamw": {"weight_decay": 0.1}}
    assert answer["config"]["lora_parameters"]["rank"] == RANK
