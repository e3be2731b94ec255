"""The embedded tiny Mistral model: built once into data/models/tiny-mistral, loads with mlx-lm, generates.

Everything that touches mlx runs in a subprocess that routes BLAS first, since this
pytest process may already have imported mlx.core from another test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.real  # MLX and mlx_lm in other processes
PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_DIR / "data"
PRELUDE = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(PROJECT_DIR)!r})
from worker.blas import route_blas
route_blas(Path({str(DATA_DIR / ".cache")!r}))
"""


def run_python(code: str, timeout: float = 600) -> list[str]:
    """Run code after the BLAS prelude in a fresh interpreter; its stdout lines."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout.splitlines()


def run_json(code: str, timeout: float = 600) -> Any:
    return json.loads(run_python(code, timeout)[-1])


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """One interpreter for what the tests read: ensure_defaults builds the model on first use (about a minute, then
    it is cached on disk), mlx-lm loads it and generates, and its tokenizer renders the chat template."""
    facts = run_json(f"""
from worker.defaults import ensure_defaults
model_dir, dataset_dir = ensure_defaults(Path({str(DATA_DIR)!r}), lambda line: print(line, flush=True))
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load, stream_generate
from worker.tiny_model import render_chat
model, tokenizer = load(str(model_dir))
params = tree_flatten(model.parameters())
prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "Hello"}}], add_generation_prompt=True)
pieces = list(stream_generate(model, tokenizer, prompt, max_tokens=24))
loaded = {{
    "type": type(model).__module__,
    "params": sum(v.size for _, v in params),
    "dtypes": sorted({{str(v.dtype) for _, v in params}}),
    "tokens": pieces[-1].generation_tokens,
    "text": "".join(p.text for p in pieces),
}}
msgs = [{{"role": "system", "content": "S"}}, {{"role": "user", "content": "U"}},
        {{"role": "assistant", "content": "A"}}]
rows = [json.loads(line) for line in
        Path({str(DATA_DIR / "contact-center" / "valid.jsonl")!r}).read_text().splitlines()[:5]]
prefix_ok, ends_eos, lengths = [], [], []
for row in rows:
    m = row["messages"]
    full = tokenizer.apply_chat_template(m, return_dict=False)
    prompt = tokenizer.apply_chat_template(m[:-1], add_generation_prompt=True, return_dict=False)
    prefix_ok.append(full[:len(prompt)] == prompt)
    ends_eos.append(full[-1] == tokenizer.eos_token_id and full.count(tokenizer.bos_token_id) == 1)
    lengths.append(len(full))
chat = {{
    "has": tokenizer.has_chat_template,
    "full": tokenizer.apply_chat_template(msgs, tokenize=False),
    "prompt": tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True),
    "python": [render_chat(msgs), render_chat(msgs[:2], add_generation_prompt=True)],
    "markers": [tokenizer.encode(t, add_special_tokens=False) for t in ("<|user|>", "<|assistant|>")],
    "prefix_ok": prefix_ok, "ends_eos": ends_eos, "lengths": lengths,
}}
print(json.dumps({{"folders": [str(model_dir), str(dataset_dir)], "loaded": loaded, "chat": chat}}))
""", timeout=900)
    model, dataset = (Path(p) for p in facts["folders"])
    assert model == DATA_DIR / "models" / "tiny-mistral"
    assert dataset == DATA_DIR / "contact-center"
    return dict(facts)


@pytest.fixture(scope="module")
def model_dir(built: dict[str, Any]) -> Path:
    return Path(built["folders"][0])


def test_model_folder_is_complete(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "mistral"
    assert config["torch_dtype"] == "float32"
    assert config["num_hidden_layers"] >= 4
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "chat_template" in tokenizer_config
    assert not list(model_dir.parent.glob(".tiny-mistral.building-*"))


def test_loads_with_mlx_lm_and_generates(built: dict[str, Any]) -> None:
    result = built["loaded"]
    assert result["type"] == "mlx_lm.models.llama"
    assert 1_000_000 <= result["params"] <= 2_000_000
    assert result["dtypes"] == ["mlx.core.float32"]
    assert result["tokens"] > 0
    assert sum(c.isalpha() for c in result["text"]) >= 5, result["text"]


def test_chat_template_renders(built: dict[str, Any]) -> None:
    result = built["chat"]
    assert result["has"]
    assert result["full"] == "<s><|system|>\nS\n<|user|>\nU\n<|assistant|>\nA</s>"
    assert result["prompt"] == "<s><|system|>\nS\n<|user|>\nU\n<|assistant|>\n"
    assert result["python"] == [result["full"], result["prompt"]]
    assert all(len(ids) == 1 for ids in result["markers"])
    assert all(result["prefix_ok"]) and all(result["ends_eos"])
    assert all(100 <= n <= 300 for n in result["lengths"]), result["lengths"]


def test_mlx_lm_generate_cli(model_dir: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(model_dir), "--prompt", "Hello",
         "--max-tokens", "20"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout.split("==========")[1].strip()
    assert sum(c.isalpha() for c in text) >= 5, result.stdout


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny-mistral"
    lines = run_python(f"""
from worker.tiny_model import build_tiny_model
def progress(line):
    print(line, flush=True)
    if "parameters" in line:  # the tokenizer and config are written: interrupted mid-build
        raise KeyboardInterrupt("stop")
try:
    build_tiny_model(Path({str(out)!r}), Path({str(DATA_DIR / "contact-center")!r}), progress)
except KeyboardInterrupt:
    print("interrupted")
""")
    assert lines[-1] == "interrupted"
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
