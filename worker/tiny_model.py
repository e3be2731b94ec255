"""Build the embedded default model: a tiny Mistral-architecture model.

A byte-level BPE tokenizer is trained on the sample dataset and a generic
contact-center corpus, then a ~1.1M-parameter Mistral model (mlx-lm's llama
implementation) is briefly pre-trained on generic text and short support
chats. The base model writes plausible contact-center text but has never seen
the analysis task, so a LoRA fine-tune on the sample dataset shows a real
learning curve.

Imports mlx: only import this module in a worker process, after
`worker.blas.route_blas` has run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from worker.sample_data import generic_chats, generic_corpus

Progress = Callable[[str], None]

VOCAB_SIZE = 1536
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
UNK, BOS, EOS, PAD = SPECIAL_TOKENS[:4]
# Each turn is '<|role|>\n' + content; an assistant turn ends with </s>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 352,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Pretraining:
    """Pre-training settings: about 50 s on one CPU core with OpenBLAS (~6.5k tokens/s)."""

    steps: int = 160
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 20
    docs: int = 4000  # generic_corpus documents
    chats: int = 8000  # generic_chats conversations


PRETRAIN = Pretraining()


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template in Python (kept identical to CHAT_TEMPLATE; tested)."""
    parts = [BOS]
    for message in messages:
        parts.append(f"<|{message['role']}|>\n{message['content']}")
        parts.append(EOS if message["role"] == "assistant" else "\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def _dataset_texts(dataset_dir: Path) -> list[str]:
    texts: list[str] = []
    path = dataset_dir / "train.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE tokenizer that adds <s> in front of encoded text."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        "additional_special_tokens": SPECIAL_TOKENS[4:],
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ARCHITECTURE["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
                   "additional_special_tokens": SPECIAL_TOKENS[4:]}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n",
                                                     encoding="utf-8")


def model_config(vocab_size: int, tokenizer: Tokenizer) -> dict[str, Any]:
    """config.json for a Mistral model of ARCHITECTURE's size."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        **ARCHITECTURE,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "sliding_window": None,
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": tokenizer.token_to_id(EOS),
        "pad_token_id": tokenizer.token_to_id(PAD),
        "torch_dtype": "float32",
    }


def _token_stream(tokenizer: Tokenizer, seed: int) -> list[int]:
    """Pre-training text: generic documents and rendered support chats, shuffled and packed."""
    docs = [f"{BOS}{text}{EOS}" for text in generic_corpus(seed, PRETRAIN.docs)]
    docs += [render_chat(chat) for chat in generic_chats(seed, PRETRAIN.chats)]
    random.Random(seed).shuffle(docs)
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(docs, add_special_tokens=False):
        stream.extend(encoding.ids)
    return stream


def _schedule() -> Callable[[mx.array], mx.array]:
    peak, warmup, total = PRETRAIN.lr, PRETRAIN.warmup, PRETRAIN.steps
    return optim.join_schedules(
        [optim.linear_schedule(peak / warmup, peak, warmup),
         optim.cosine_decay(peak, total - warmup, end=peak / 10)],
        [warmup],
    )


def pretrain(model: Model, stream: list[int], seed: int, progress: Progress) -> float:
    """Full-parameter next-token training on the packed stream; returns the last loss."""
    steps, batch, seq = PRETRAIN.steps, PRETRAIN.batch_size, PRETRAIN.seq_len
    data = mx.array(stream, dtype=mx.int32)
    rng = random.Random(seed)
    optimizer = optim.AdamW(learning_rate=_schedule(), weight_decay=0.01)

    def loss_fn(m: Model, inputs: mx.array, targets: mx.array) -> mx.array:
        return nn.losses.cross_entropy(m(inputs), targets, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    def step_fn(inputs: mx.array, targets: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, inputs, targets)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    report_every = max(1, steps // 20)
    started = time.perf_counter()
    smoothed = float("nan")
    for step in range(steps):
        starts = mx.array([rng.randrange(len(stream) - seq - 1) for _ in range(batch)])
        window = starts[:, None] + mx.arange(seq + 1)[None, :]
        tokens = data[window]
        loss = step_fn(tokens[:, :-1], tokens[:, 1:])
        mx.eval(state, loss)
        value = loss.item()
        smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
        if (step + 1) % report_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            progress(f"pre-training the default model: step {step + 1}/{steps}, "
                     f"loss {smoothed:.2f} ({elapsed:.0f}s)")
    return smoothed


def _clean_stale_builds(parent: Path, name: str) -> None:
    """Remove temp build folders left by crashed builders (their pid is gone)."""
    for path in parent.glob(f".{name}.building-*"):
        pid_text = path.name.rsplit("-", 2)[-2] if path.name.count("-") >= 2 else ""
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def _sync_folder(folder: Path) -> None:
    """Flush every file of folder to disk and make it readable, before it is renamed into place."""
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    os.chmod(folder, 0o755)


def build_tiny_model(out_dir: Path, dataset_dir: Path, progress: Progress, seed: int = 0) -> Path:
    """Train the tokenizer, pre-train the model and move the finished folder to out_dir atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_builds(out_dir.parent, out_dir.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-{os.getpid()}-", dir=out_dir.parent))
    started = time.perf_counter()
    try:
        progress("building the default model: training the tokenizer")
        tokenizer = train_tokenizer(_dataset_texts(Path(dataset_dir)) + generic_corpus(seed + 1, 3000)
                                    + [render_chat(c) for c in generic_chats(seed + 1, 1000)])
        write_tokenizer(tokenizer, tmp)
        config = model_config(tokenizer.get_vocab_size(), tokenizer)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

        mx.random.seed(seed)
        model = Model(ModelArgs.from_dict(config))
        mx.eval(model.parameters())
        n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
        stream = _token_stream(tokenizer, seed)
        progress(f"pre-training the default model: {n_params / 1e6:.2f}M parameters, "
                 f"{len(stream)} tokens of generic text")
        pretrain(model, stream, seed, progress)

        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        _sync_folder(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "model.safetensors").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another builder finished first
        progress(f"built the default model in {time.perf_counter() - started:.0f}s: {out_dir}")
        return out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
