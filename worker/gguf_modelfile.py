"""The Ollama Modelfile written beside a GGUF file: FROM, the chat template as a Go TEMPLATE, and PARAMETERs.

The model's chat template (Jinja, from tokenizer_config.json or chat_template.jinja) is rendered on probe
conversations. When every message renders as <role prefix> content <role suffix> (and the generation prompt is a
fixed text), the template is written as the same texts in Ollama's Go template syntax; anything else (conditions
on the position of a message, templates that refuse a role, ...) gets a generic TEMPLATE and a comment saying so.
Pure text work: no model, no MLX.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
PROBE = "\x00CONTENT\x00"
GENERIC_TEMPLATE = "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"


@dataclass(frozen=True)
class ChatShape:
    """A chat template that is, per message, prefix + content + suffix, then a generation prompt."""

    preamble: str  # text before the first message, the BOS token left out (llama.cpp adds it)
    parts: dict[str, tuple[str, str]]  # role -> (prefix, suffix)
    generation: str  # the assistant turn's opening (add_generation_prompt=True)


@dataclass
class Modelfile:
    gguf_name: str
    template: str
    translated: bool
    stops: list[str] = field(default_factory=list)
    num_ctx: int | None = None
    system: str | None = None

    def text(self) -> str:
        lines = [f"FROM ./{self.gguf_name}", ""]
        if self.translated:
            lines.append("# The model's chat template, written in Ollama's template syntax.")
        else:
            lines.append("# The model's chat template could not be written in Ollama's template syntax (it is")
            lines.append("# not one prefix and suffix per role); this generic TEMPLATE passes the prompt as it is:")
            lines.append("# check it against the model's chat template before use.")
        lines.append(f'TEMPLATE """{self.template}"""')
        lines.append("")
        lines.append("# Greedy decoding, as the dashboard's playground defaults to.")
        lines.append("PARAMETER temperature 0")
        if self.num_ctx:
            lines.append(f"PARAMETER num_ctx {self.num_ctx}")
        lines.extend(f"PARAMETER stop {json.dumps(stop)}" for stop in self.stops)
        return "\n".join(lines) + "\n"


def render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool, special: dict[str, str]) -> str:
    """The template rendered by transformers' own chat-template renderer (sandboxed, as the tokenizer renders it)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _indices = render_jinja_template(conversations=[messages], chat_template=template,
                                               add_generation_prompt=add_generation_prompt, **special)
    return str(rendered[0])


def chat_shape(template: str, special: dict[str, str]) -> ChatShape | None:
    """The template's per-role prefix/suffix shape, or None when it does not have one (checked on a conversation
    of every role against the real rendering)."""
    try:
        empty = render(template, [], False, special)
        parts: dict[str, tuple[str, str]] = {}
        for role in ROLES:
            text = render(template, [{"role": role, "content": PROBE}], False, special)
            if not text.startswith(empty) or text.count(PROBE) != 1:
                return None
            prefix, suffix = text[len(empty):].split(PROBE)
            parts[role] = (prefix, suffix)
        user = [{"role": "user", "content": PROBE}]
        without = render(template, user, False, special)
        with_prompt = render(template, user, True, special)
        if not with_prompt.startswith(without):
            return None
        generation = with_prompt[len(without):]
        conversation = [{"role": role, "content": f"{PROBE}{i}"} for i, role in
                        enumerate(("system", "user", "assistant", "user"))]
        expected = empty + "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in conversation)
        if render(template, conversation, True, special) != expected + generation:
            return None
    except Exception:  # a template that does not render here (its own errors, a missing variable) has no shape
        return None
    bos = special.get("bos_token") or ""
    preamble = empty[len(bos):] if bos and empty.startswith(bos) else empty
    return ChatShape(preamble=preamble, parts=parts, generation=generation)


def go_literal(text: str) -> str | None:
    """Text as literal Go template text (None when it holds template delimiters or the Modelfile's quotes)."""
    if "{{" in text or "}}" in text or '"""' in text:
        return None
    return text


def go_template(shape: ChatShape) -> str | None:
    """The shape in Ollama's Go template syntax: one branch per role over .Messages, then the generation prompt."""
    texts = [shape.preamble, shape.generation, *(t for pair in shape.parts.values() for t in pair)]
    if any(go_literal(t) is None for t in texts):
        return None
    branches = []
    for i, role in enumerate(ROLES):
        prefix, suffix = shape.parts[role]
        keyword = "if" if i == 0 else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}')
    return f"{shape.preamble}{{{{ range .Messages }}}}{''.join(branches)}{{{{ end }}}}{{{{ end }}}}{shape.generation}"


def stop_words(shape: ChatShape | None, special: dict[str, str]) -> list[str]:
    """EOS and the role markers (each role's prefix without surrounding blank space), in a stable order."""
    stops: list[str] = []
    eos = special.get("eos_token")
    if eos:
        stops.append(eos)
    if shape is not None:
        for role in ROLES:
            marker = shape.parts[role][0].strip()
            if marker and marker not in stops:
                stops.append(marker)
    return stops


def read_chat_template(folder: Path) -> tuple[str | None, dict[str, str]]:
    """(chat template, special token texts) from a model folder's tokenizer files."""
    config: dict[str, Any] = {}
    path = folder / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
    template = config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    special: dict[str, str] = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            special[key] = value
    return (template if isinstance(template, str) else None), special


def build_modelfile(folder: Path, gguf_name: str, context_length: int | None) -> Modelfile:
    """The Modelfile for a model folder's GGUF export."""
    template, special = read_chat_template(folder)
    shape = chat_shape(template, special) if template else None
    go = go_template(shape) if shape is not None else None
    num_ctx = min(context_length, 8192) if context_length else None
    if go is None:
        return Modelfile(gguf_name, GENERIC_TEMPLATE, False, stop_words(None, special), num_ctx)
    return Modelfile(gguf_name, go, True, stop_words(shape, special), num_ctx)
