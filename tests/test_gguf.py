"""GGUF export: real `gguf` jobs on a copy of the embedded model, the files read back with the gguf library.

One f16 and one q8_0 export are shared by the module; the bad inputs are cheap HTTP calls answered before any job
exists; the Modelfile's template translation and the disk-space rule are unit tests. Loading the files in
llama.cpp (llama-cpp-python, a heavy build) is bench/bench_gguf.py's work.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PROJECT_DIR, Server, shot
from gguf import GGUFReader
from gguf.quants import dequantize
from huggingface_hub import ModelCard
from playwright.sync_api import Page, expect
from sqlmodel import Session

from app.contract.kinds import GgufParams
from app.contract.settings import Settings
from app.contract.status import TERMINAL
from app.db import make_engine
from app.models.gguf import GgufRefused, GgufRequest, prepare
from app.reports.model_card import gguf_card
from worker.gguf_modelfile import build_modelfile, chat_shape, go_template

pytestmark = pytest.mark.xdist_group("checkpoint_use")

TINY = PROJECT_DIR / "data" / "models" / "tiny-mistral"
SUFFIX = uuid.uuid4().hex[:8]
NAME = f"gguf-fused-{SUFFIX}"  # the shared run's final checkpoint, fused
GPT2 = f"gguf-gpt2-{SUFFIX}"
QUANTIZED = f"gguf-quantized-{SUFFIX}"


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for q/k (convert_hf_to_gguf.py)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def expected_tensors(config: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """GGUF name -> (safetensors name, heads to permute for) for every weight of a Llama-style model."""
    names: dict[str, tuple[str, int | None]] = {
        "token_embd.weight": ("model.embed_tokens.weight", None), "output_norm.weight": ("model.norm.weight", None),
        "output.weight": ("lm_head.weight", None)}
    parts = {"attn_q": ("self_attn.q_proj", config["num_attention_heads"]),
             "attn_k": ("self_attn.k_proj", config["num_key_value_heads"]), "attn_v": ("self_attn.v_proj", None),
             "attn_output": ("self_attn.o_proj", None), "ffn_gate": ("mlp.gate_proj", None),
             "ffn_up": ("mlp.up_proj", None), "ffn_down": ("mlp.down_proj", None),
             "attn_norm": ("input_layernorm", None), "ffn_norm": ("post_attention_layernorm", None)}
    for layer in range(config["num_hidden_layers"]):
        for short, (long, heads) in parts.items():
            names[f"blk.{layer}.{short}.weight"] = (f"model.layers.{layer}.{long}.weight", heads)
    return names


def wait_job(srv: Server, job_id: int, timeout: float = 600) -> dict[str, Any]:
    return srv.poll(f"/api/jobs/{job_id}", lambda j: j["status"] in TERMINAL, timeout, "ended", every_s=0.3)


def field(reader: GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def exports(lora_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The shared run's final checkpoint fused into a model folder (and two bad copies of the embedded model: a
    gpt2 config, a quantized config), exported once as f16 and q8_0."""
    checkpoint_server: Server = lora_run["server"]
    models = checkpoint_server.models_dir
    status, fuse = checkpoint_server.post(f"/api/runs/{lora_run['run_id']}/checkpoints/{lora_run['iterations'][-1]}"
                                          "/fuse", {"name": NAME})
    assert status == 201, fuse
    assert wait_job(checkpoint_server, fuse["job_id"])["status"] == "completed"
    for bad, change in ((GPT2, {"model_type": "gpt2"}), (QUANTIZED, {"quantization": {"bits": 4, "group_size": 64}})):
        shutil.copytree(TINY, models / bad)
        config = json.loads((TINY / "config.json").read_text())
        (models / bad / "config.json").write_text(json.dumps({**config, **change}))
    made = [models / NAME, models / GPT2, models / QUANTIZED]
    try:
        jobs = {}
        for kind in ("f16", "q8_0"):
            status, answer = checkpoint_server.post(f"/api/models/{NAME}/gguf", {"type": kind})
            assert status == 201, answer
            jobs[kind] = answer["job_id"]
            made.append(checkpoint_server.exports_dir / answer["export"])
        ended = {kind: wait_job(checkpoint_server, job_id) for kind, job_id in jobs.items()}
        for job in ended.values():
            assert job["status"] == "completed", job
        yield {"server": checkpoint_server, "jobs": ended, "fused": models / NAME,
               "folders": {kind: checkpoint_server.exports_dir / f"{NAME}-{kind}" for kind in jobs}}
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


def test_files_hold_every_weight_of_the_model(exports: dict[str, Any]) -> None:
    import mlx.core as mx

    fused = exports["fused"]
    config = json.loads((fused / "config.json").read_text())
    source = {k: np.array(v.astype(mx.float32)) for shard in sorted(fused.glob("model*.safetensors"))
              for k, v in mx.load(str(shard)).items()}
    base = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(TINY / "model.safetensors")).items()}
    assert any(not np.array_equal(source[k], base[k]) for k in source)  # the fused weights, not the base model's
    names = expected_tensors(config)
    assert len(names) == len(source) == 3 + 9 * config["num_hidden_layers"]
    for kind, tolerance in (("f16", 1e-3), ("q8_0", 2e-2)):
        path = exports["folders"][kind] / f"{NAME}-{kind}.gguf"
        assert path.read_bytes()[:4] == b"GGUF"
        reader = GGUFReader(path)
        tensors = {t.name: t for t in reader.tensors}
        assert set(tensors) == set(names), kind
        for name, (key, heads) in names.items():
            tensor = tensors[name]
            want = permute(source[key], heads) if heads else source[key]
            got = dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32).reshape(want.shape)
            assert np.any(got != 0), (kind, name)
            if want.ndim == 1:
                assert tensor.tensor_type.name == "F32" and np.array_equal(got, want), (kind, name)
                continue
            assert tensor.tensor_type.name == kind.upper(), (kind, name)
            error = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert error < tolerance, (kind, name, error)
        if kind == "q8_0":  # the q/k permutation is not a no-op: unpermuted rows would be far off
            raw = dequantize(np.asarray(tensors["blk.0.attn_q.weight"].data), tensors["blk.0.attn_q.weight"]
                             .tensor_type).reshape(source["model.layers.0.self_attn.q_proj.weight"].shape)
            assert np.linalg.norm(raw - source["model.layers.0.self_attn.q_proj.weight"]) > 0.5 * np.linalg.norm(raw)
    assert exports["jobs"]["q8_0"]["result"]["gguf_bytes"] < 0.6 * exports["jobs"]["f16"]["result"]["gguf_bytes"]


def test_metadata_and_tokenizer_fit_the_model(exports: dict[str, Any]) -> None:
    config = json.loads((TINY / "config.json").read_text())
    tokenizer = json.loads((TINY / "tokenizer.json").read_text())
    reader = GGUFReader(exports["folders"]["f16"] / f"{NAME}-f16.gguf")
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.context_length") == config["max_position_embeddings"]
    assert field(reader, "llama.attention.head_count") == config["num_attention_heads"]
    assert field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert field(reader, "llama.embedding_length") == config["hidden_size"]
    # byte-level BPE: llama.cpp's "gpt2" tokenizer with the GPT-2 pre-tokenizer and the same merges, token for token
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    vocab = tokenizer["model"]["vocab"]
    assert all(tokens[i] == text for text, i in vocab.items())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges
    types = field(reader, "tokenizer.ggml.token_type")
    assert [types[i] for i in range(7)] == [3] * 7 and types[100] == 1  # specials are control tokens
    assert field(reader, "tokenizer.ggml.bos_token_id") == config["bos_token_id"]
    assert field(reader, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert field(reader, "tokenizer.ggml.add_bos_token") is True


def test_modelfile_and_downloads(exports: dict[str, Any]) -> None:
    srv = exports["server"]
    folder = exports["folders"]["q8_0"]
    text = (folder / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{NAME}-q8_0.gguf\n")
    assert ('TEMPLATE """{{ range .Messages }}{{ if eq .Role "system" }}<|system|>\n{{ .Content }}\n'
            in text) and text.rstrip().endswith('PARAMETER stop "<|assistant|>"')
    assert 'PARAMETER stop "</s>"' in text and "PARAMETER temperature 0" in text
    status, _, body = srv.request("GET", f"/api/exports/{NAME}-q8_0/gguf")
    assert status == 200 and body == (folder / f"{NAME}-q8_0.gguf").read_bytes()
    status, _, body = srv.request("GET", f"/api/exports/{NAME}-q8_0/Modelfile")
    assert status == 200 and body.decode() == text
    assert srv.request("GET", f"/api/exports/{NAME}-q4_k_m/gguf")[0] == 404
    listed = srv.get(f"/api/models/{NAME}/gguf")
    assert sorted(e["type"] for e in listed) == ["f16", "q8_0"]
    assert listed[0]["commands"]["ollama"].startswith(f"ollama create {NAME.lower()}-")


def test_each_export_carries_a_model_card_with_the_fused_models_below(exports: dict[str, Any]) -> None:
    srv = exports["server"]
    for kind, folder in exports["folders"].items():
        job = srv.poll(f"/api/jobs/{exports['jobs'][kind]['id']}", lambda j: "model_card" in j["result"], 30, "card")
        assert job["result"]["model_card"] == str(folder.resolve() / "README.md")
        card = ModelCard.load(folder / "README.md")
        assert (card.data.library_name, card.data.base_model_relation) == ("gguf", "quantized")
        assert {"gguf", kind, "lora", "mlx"} <= set(card.data.tags)
        assert card.data.base_model == ModelCard.load(exports["fused"] / "README.md").data.base_model
        assert f"llama-cli -m {NAME}-{kind}.gguf" in card.text
        assert "## The model it was made from" in card.text and "### Hyperparameters" in card.text


def test_bad_inputs_are_refused_before_any_job(exports: dict[str, Any]) -> None:
    srv = exports["server"]
    before = {job["id"] for job in srv.get("/api/jobs?kind=gguf")}
    exported = sorted(p.name for p in srv.exports_dir.iterdir())
    status, answer = srv.post(f"/api/models/{GPT2}/gguf", {"type": "f16"})
    assert status == 422 and answer["detail"][0]["msg"] == ("model_type 'gpt2' cannot be exported to GGUF; "
                                                            "supported: llama, mistral, mixtral"), answer
    status, answer = srv.post(f"/api/models/{QUANTIZED}/gguf", {"type": "q8_0"})
    assert status == 422 and "quantized (4-bit)" in answer["detail"][0]["msg"]
    assert "dequantize" in answer["detail"][0]["msg"]
    status, answer = srv.post(f"/api/models/{NAME}/gguf", {"type": "f16"})
    assert status == 409 and f"{NAME}-f16 already exists" in answer["detail"], answer
    status, answer = srv.post(f"/api/models/{NAME}/gguf", {"type": "q5_k"})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "type"], answer
    status, answer = srv.post(f"/api/models/{NAME}/gguf", {"type": "f16", "name": "../escape"})
    assert status == 422 and "is not valid" in answer["detail"][0]["msg"], answer
    status, answer = srv.post(f"/api/models/no-such-model-{SUFFIX}/gguf", {"type": "f16"})
    assert status == 404 and "no model folder" in answer["detail"], answer
    assert {job["id"] for job in srv.get("/api/jobs?kind=gguf")} == before
    assert sorted(p.name for p in srv.exports_dir.iterdir()) == exported


def test_disk_space_and_quantizer_library_checks(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(TINY, models / "tiny")
    settings = Settings(models_dir=models, exports_dir=tmp_path / "exports", db_path=tmp_path / "db.sqlite")
    with Session(make_engine(settings.database_path)) as session:
        params = prepare(session, settings, "tiny", GgufRequest(type="q8_0"), free=lambda _p: 10**12)
        assert params.tokenizer_model == "gpt2" and params.dest == str(tmp_path / "exports" / "tiny-q8_0")
        short = re.escape("not enough disk space for tiny-f16: about 0.01 GB")
        with pytest.raises(GgufRefused, match=short) as refused:
            prepare(session, settings, "tiny", GgufRequest(type="f16"), free=lambda _p: 1000)
        assert refused.value.status == 422
        with pytest.raises(GgufRefused, match="install llama-cpp-python") as refused:
            prepare(session, settings, "tiny", GgufRequest(type="q4_k_m"), quant_library=lambda: False)
        assert refused.value.loc == ("body", "type")
    assert not (tmp_path / "exports").exists()


def test_a_card_for_a_model_folder_without_one() -> None:
    card = ModelCard(gguf_card(None, "/models/plain-model", "plain-model-f16.gguf", "f16"))
    assert (card.data.base_model, card.data.library_name, card.data.tags) == ("plain-model", "gguf", ["gguf", "f16"])
    assert "The model it was made from" not in card.text and "llama-server -m plain-model-f16.gguf" in card.text


def test_chat_template_translation() -> None:
    text = build_modelfile(TINY, "x.gguf", 1024).text()
    assert text.splitlines()[0] == "FROM ./x.gguf" and "PARAMETER num_ctx 1024" in text
    # a template that depends on a message's position has no per-role shape: generic TEMPLATE, said in a comment
    positional = ("{% for m in messages %}{% if loop.first %}[FIRST]{% endif %}<{{ m['role'] }}>{{ m['content'] }}"
                  "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_shape(positional, {}) is None
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    shape = chat_shape(chatml, {})
    assert shape is not None and go_template(shape) == (
        '{{ range .Messages }}{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
        '<|im_start|>assistant\n')


def test_mixtral_experts_are_stacked_and_unknown_weights_refused() -> None:
    from worker.gguf_export import plan_tensors
    from worker.job import JobInputError

    config = {"num_attention_heads": 4, "num_key_value_heads": 2}
    experts = {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": (8, 32) for e in (1, 0) for w in ("w1", "w3")}
    shapes = {**experts, "model.layers.0.block_sparse_moe.gate.weight": (2, 32), "model.embed_tokens.weight": (10, 32),
              "model.layers.0.self_attn.k_proj.weight": (8, 32)}
    plan = {entry.name: entry for entry in plan_tensors(shapes, config, "q8_0")}
    gate = plan["blk.0.ffn_gate_exps.weight"]
    assert gate.shape == (2, 8, 32) and gate.sources == [f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"
                                                         for e in (0, 1)]
    assert plan["blk.0.ffn_up_exps.weight"].qtype == "Q8_0" and plan["blk.0.ffn_gate_inp.weight"].qtype == "F32"
    assert plan["blk.0.attn_k.weight"].heads == 2 and next(iter(plan)) == "token_embd.weight"
    with pytest.raises(JobInputError, match=re.escape("weight model.layers.0.self_attn.q_proj.bias has no GGUF name")):
        plan_tensors({"model.layers.0.self_attn.q_proj.bias": (8,)}, config, "f16")


def export_context(tmp_path: Path, out_type: str) -> Any:
    from worker.job import JobContext

    dest = tmp_path / "exports" / f"tiny-{out_type}"
    params = GgufParams(model=str(TINY), name="tiny", type=out_type, export=dest.name, dest=str(dest),
                        file=f"{dest.name}.gguf", tokenizer_model="gpt2", tokenizer_pre="gpt-2")
    return JobContext(1, params, Settings(exports_dir=tmp_path / "exports"))


def test_an_empty_tensor_or_a_cancel_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back check catches a file written with empty tensors (mlx-lm's export once wrote such files);
    a cancel ends the job; either way no folder, temporary or final, is left."""
    from worker import gguf_export
    from worker.job import JobInputError, JobStopped

    real = gguf_export.encode
    monkeypatch.setattr(gguf_export, "encode", lambda data, qtype: real(np.zeros_like(data), qtype)
                        if qtype != "F32" else real(data, qtype))
    with pytest.raises(JobInputError, match=r"token_embd.weight in tiny-f16.gguf is all zeros"):
        gguf_export.run(export_context(tmp_path, "f16"))
    monkeypatch.setattr(gguf_export, "encode", real)
    ctx = export_context(tmp_path, "q8_0")
    ctx.stop.set()
    with pytest.raises(JobStopped):
        gguf_export.run(ctx)
    assert list((tmp_path / "exports").iterdir()) == []


@pytest.mark.browser
def test_export_section_on_the_models_page(exports: dict[str, Any], page: Page) -> None:
    srv = exports["server"]
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(srv.url + "/models")
    section = page.locator(f'.gguf-export[data-model-name="{NAME}"]')
    expect(section.locator(".gguf-file")).to_have_count(2, timeout=20_000)
    expect(section.locator('.gguf-file[data-type="q8_0"] a.gguf-download')).to_have_attribute(
        "href", f"/api/exports/{NAME}-q8_0/gguf")
    expect(section.locator('[data-role="gguf-command"] pre').first).to_contain_text("ollama create")
    blocked = page.locator(f'.gguf-export[data-model-name="{GPT2}"] [data-role="gguf-blocked"]')
    expect(blocked).to_contain_text("supported: llama, mistral, mixtral")
    assert errors == []  # the models table's reload trigger parses (htmx:syntax:error before)
    # every name field shows its suggested name whole (its placeholder is not cut)
    cut = page.evaluate("""() => [...document.querySelectorAll('.use-form input[placeholder]')].filter(input => {
        const probe = document.createElement('span');
        probe.style.cssText = 'position:absolute;visibility:hidden;white-space:pre;font:' +
            getComputedStyle(input).font;
        probe.textContent = input.placeholder;
        document.body.appendChild(probe);
        const wide = probe.getBoundingClientRect().width;
        probe.remove();
        const box = input.getBoundingClientRect(), style = getComputedStyle(input);
        const inner = box.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
            - parseFloat(style.borderLeftWidth) - parseFloat(style.borderRightWidth);
        return box.width > 0 && wide > inner + 1;
    }).map(input => input.name + ': ' + input.placeholder)""")
    assert cut == [], cut
    section.locator("select[name=type]").select_option("f16")
    section.locator("button[type=submit]").click()
    expect(page.locator(f'.gguf-export[data-model-name="{NAME}"] [data-role="gguf-error"]')).to_contain_text(
        "already exists")
    section = page.locator(f'.gguf-export[data-model-name="{NAME}"]')
    section.locator("details.modelfile").first.evaluate("d => d.open = true")
    section.scroll_into_view_if_needed()
    shot(page, "gguf_models_page")


def test_a_killed_export_leaves_no_temp_folder_for_the_next(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from worker.gguf_export import remove_stale_temps

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dest = tmp_path / "tiny-f16"
    dead, mine = tmp_path / f".tiny-f16.tmp{ended.stdout.strip()}", tmp_path / f".tiny-f16.tmp{os.getpid()}"
    other = tmp_path / ".other-f16.tmp1"
    for folder in (dead, mine, other):
        folder.mkdir()
    remove_stale_temps(dest)
    assert not dead.exists() and mine.exists() and other.exists()


def test_a_source_card_linking_out_of_the_model_folders_is_not_copied(tmp_path: Path) -> None:
    """The export's card copies the card of the folder it was made from, read within the model folders: a README.md
    that links elsewhere is left out (nothing of its target is written), and the export still gets its own card."""
    from sqlmodel import Session

    from app.contract.settings import Settings
    from app.db import make_engine
    from app.models.cards import write_gguf_card
    from app.tables import Job

    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the card\n")
    settings = Settings(data_dir=tmp_path / "data", db_path=tmp_path / "db.sqlite", allowed_dirs="")
    source, dest = settings.local_models_dir / "linked", settings.local_exports_dir / "linked-f16"
    source.mkdir(parents=True)
    dest.mkdir(parents=True)
    (source / "README.md").symlink_to(secret)
    engine = make_engine(settings.database_path)
    with Session(engine) as session:
        job = Job(kind="gguf", status="completed", result_json="{}", params_json=json.dumps(
            {"model": str(source), "dest": str(dest), "file": "linked-f16.gguf", "type": "f16"}))
        session.add(job)
        session.commit()
        write_gguf_card(session, settings, job)
        assert job.result == {"model_card": str(dest.resolve() / "README.md")}
    card = (dest / "README.md").read_text()
    assert "not for the card" not in card and "The model it was made from" not in card
    assert ModelCard(card).data.base_model == "linked"
    engine.dispose()
