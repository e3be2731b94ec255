"""What a training example looks like to the model: its chat template rendered in the web process.

The template comes from the model folder (chat_template.jinja, or "chat_template" in tokenizer_config.json)
and is rendered the way transformers' apply_chat_template does (sandboxed Jinja2, trim_blocks, lstrip_blocks,
loop controls, raise_exception, strftime_now, a tojson that keeps non-ASCII). No mlx, mlx_lm or transformers
here. With mask_prompt, mlx-lm puts the loss on what follows
apply_chat_template(messages[:-1], add_generation_prompt=<last is assistant>); the preview splits there.
Every file is opened once through app/contract/confinement.open_confined: the model's tokenizer files within the model
folders, the examples within the data folders; a file linking out of them is refused and nothing of it shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateError, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from app import json_text
from app.contract.confinement import PathNotAllowed, open_confined, read_confined_text
from app.datasets.validation import SPLITS, line_format

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class GenerationTag(Extension):
    """{% generation %}…{% endgeneration %} (marks assistant text for transformers' masks): rendered as is."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_template(source: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class ChatTemplate:
    """A model's chat template, ready to render (or why there is none)."""

    model: str
    source: str | None = None
    origin: str = ""  # which file it came from
    special_tokens: dict[str, str] = field(default_factory=dict)
    tool_source: str | None = None
    problem: str | None = None
    compiled: dict[str, Template] = field(default_factory=dict)

    def render(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
               add_generation_prompt: bool = False) -> str:
        """The conversation as the model sees it; TemplateError when the template refuses it."""
        source = self.tool_source if tools and self.tool_source else self.source
        if source is None:
            raise TemplateError(self.problem or "the model has no chat template")
        if source not in self.compiled:
            self.compiled[source] = compile_template(source)
        return self.compiled[source].render(messages=messages, tools=tools,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens)


def hub_snapshot(model_id: str) -> Path | None:
    """The local snapshot folder of a Hugging Face hub id in the cache, if it was downloaded."""
    if "/" not in model_id or model_id.startswith(("/", ".", "~")):
        return None
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    repo = Path(cache) / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def model_folder(model: str) -> Path | None:
    """A local model folder, or the cached snapshot of a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    return hub_snapshot(model)


def _present(path: Path) -> bool:
    """A file (or a link, judged when it is read) is there."""
    return path.is_file() or path.is_symlink()


def load_chat_template(model: str, roots: Sequence[Path] | None = None) -> ChatTemplate:
    """Read the chat template and special tokens of a model folder (or a cached hub id).

    `roots`: the folders its files may lead into, links resolved (app/contract/paths.model_roots); None: the folder
    itself.
    """
    template = ChatTemplate(model=model)
    folder = model_folder(model)
    if folder is None:
        template.problem = f"model {model} is not a local folder nor a downloaded Hugging Face model"
        return template
    allowed = [folder] if roots is None else roots
    config: dict[str, Any] = {}
    config_path = folder / "tokenizer_config.json"
    try:
        if _present(config_path):
            config = json_text.loads(read_confined_text(config_path, allowed))
        special_map_path = folder / "special_tokens_map.json"
        special_map = (json_text.loads(read_confined_text(special_map_path, allowed))
                       if _present(special_map_path) else {})
        for key in SPECIAL_TOKEN_KEYS:
            token = _token_text(config.get(key)) or _token_text(special_map.get(key))
            if token is not None:
                template.special_tokens[key] = token
        _pick_source(template, folder, config.get("chat_template"), allowed)
    except PathNotAllowed as exc:
        template.problem = str(exc)
        template.source = template.tool_source = None
    except (OSError, ValueError, AttributeError) as exc:
        template.problem = f"cannot read the tokenizer files of {folder}: {exc}"
        template.source = template.tool_source = None
    return template


def _pick_source(template: ChatTemplate, folder: Path, configured: Any, roots: Sequence[Path]) -> None:
    jinja_file = folder / "chat_template.jinja"
    json_file = folder / "chat_template.json"
    if _present(jinja_file):
        template.source, template.origin = read_confined_text(jinja_file, roots), jinja_file.name
    elif isinstance(configured, str):
        template.source, template.origin = configured, "tokenizer_config.json"
    elif isinstance(configured, list):  # named templates: "default", "tool_use", …
        named = {item.get("name"): item.get("template") for item in configured if isinstance(item, dict)}
        template.source = named.get("default") or next(iter(named.values()), None)
        template.tool_source = named.get("tool_use")
        template.origin = "tokenizer_config.json"
    elif _present(json_file):
        loaded = json_text.loads(read_confined_text(json_file, roots))
        template.source, template.origin = loaded.get("chat_template"), json_file.name
    if template.source is None:
        template.problem = (f"the tokenizer of {folder} has no chat template: only text-format data can be "
                            "trained with it")


@dataclass
class Segment:
    text: str
    loss: bool  # the model is trained to produce this text


@dataclass
class RenderedExample:
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    total_tokens: int | None = None  # under the model's tokenizer (count_tokens), when it has a tokenizer.json
    loss_tokens: int | None = None  # of which carry the loss (all but the masked prompt's)

    @property
    def loss_chars(self) -> int:
        return sum(len(s.text) for s in self.segments if s.loss)

    @property
    def total_chars(self) -> int:
        return sum(len(s.text) for s in self.segments)


def split_at_prompt(full: str, prompt: str) -> tuple[list[Segment], str | None]:
    """Prompt (no loss) and completion (loss) segments; a note when the prompt is not a prefix of the whole."""
    if full.startswith(prompt):
        return _segments(full, len(prompt)), None
    common = next((i for i, (a, b) in enumerate(zip(full, prompt, strict=False)) if a != b),
                  min(len(full), len(prompt)))
    note = ("the template renders the prompt differently from the start of the whole conversation: the boundary "
            "shown is where they first differ")
    return _segments(full, common), note


def _segments(full: str, boundary: int) -> list[Segment]:
    parts = [Segment(full[:boundary], False), Segment(full[boundary:], True)]
    return [part for part in parts if part.text]


def render_example(example: dict[str, Any], fmt: str, template: ChatTemplate, mask_prompt: bool) -> RenderedExample:
    """One example as the trainer sees it, split into the parts without and with loss."""
    if fmt == "text":
        note = "text format: the loss is on all of it (mask_prompt does not apply)" if mask_prompt else None
        return RenderedExample([Segment(str(example.get("text", "")), True)], note=note)
    if fmt == "completions":
        messages = [{"role": "user", "content": example.get("prompt")},
                    {"role": "assistant", "content": example.get("completion")}]
    else:
        messages = list(example.get("messages") or [])
    tools = example.get("tools")
    try:
        full = template.render(messages, tools=tools)
        if not mask_prompt:
            return RenderedExample([Segment(full, True)])
        ends_with_assistant = isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"
        prompt = template.render(messages[:-1], tools=tools, add_generation_prompt=ends_with_assistant)
    except TemplateError as exc:
        return RenderedExample(error=f"the chat template refused this example: {exc}")
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        return RenderedExample(error=f"the chat template cannot render this example: {exc}")
    segments, note = split_at_prompt(full, prompt)
    return RenderedExample(segments, note=note)


TokenCounter = Callable[[str], int]


def load_token_counter(model: str, roots: Sequence[Path] | None = None) -> TokenCounter | None:
    """Counts a text's tokens with the model's tokenizer.json (the `tokenizers` library, no special tokens added:
    the chat template writes its own), as the trainer's tokenizer cuts it; None without one (or a file linking out
    of `roots`)."""
    folder = model_folder(model)
    if folder is None or not _present(folder / "tokenizer.json"):
        return None
    try:
        text = read_confined_text(folder / "tokenizer.json", roots or [folder])
    except (OSError, PathNotAllowed):
        return None
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception:  # the library raises a bare Exception for a tokenizer.json it cannot read
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def count_tokens(rendered: RenderedExample, counter: TokenCounter | None) -> RenderedExample:
    """The example with its token counts: the whole, and what carries the loss (the whole less the prompt's tokens,
    as mlx-lm's mask offset counts them)."""
    if counter is None or rendered.error or not rendered.segments:
        return rendered
    total = counter("".join(seg.text for seg in rendered.segments))
    masked = counter("".join(seg.text for seg in rendered.segments if not seg.loss))
    rendered.total_tokens, rendered.loss_tokens = total, max(0, total - masked)
    return rendered


@dataclass
class PreviewExample:
    split: str
    line: int
    rendered: RenderedExample


@dataclass
class Preview:
    model: str
    format: str | None
    mask_prompt: bool
    template_origin: str = ""
    problem: str | None = None  # why nothing can be rendered with this model
    splits: dict[str, list[PreviewExample]] = field(default_factory=dict)  # split -> its first examples


def first_examples(path: Path, count: int, roots: Sequence[Path] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, example) of the first `count` lines that parse as JSON objects; PathNotAllowed when the file
    links out of `roots` (None: its own folder)."""
    found: list[tuple[int, dict[str, Any]]] = []
    try:
        handle = open_confined(path, [path.parent] if roots is None else roots)
    except OSError:  # absent, a folder, not a regular file
        return found
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                example = json_text.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(example, dict):
                found.append((number, example))
            if len(found) >= count:
                break
    return found


def build_preview(folder: Path, fmt: str | None, model: str, mask_prompt: bool, per_split: int = 3,
                  data_roots: Sequence[Path] | None = None, model_roots: Sequence[Path] | None = None,
                  splits: Sequence[str] = SPLITS) -> Preview:
    """The first examples of each split rendered with `model`'s chat template, split into loss / no loss.

    `data_roots` / `model_roots`: the folders the split files / the model's files may lead into (None: the data
    folder / the model folder itself); a file linking out is the preview's problem, and nothing of it is shown.
    """
    preview = Preview(model=model, format=fmt, mask_prompt=mask_prompt)
    template = load_chat_template(model, model_roots)
    counter = load_token_counter(model, model_roots)
    preview.template_origin = template.origin
    if fmt != "text" and template.source is None:
        preview.problem = template.problem
        return preview
    allowed = [folder] if data_roots is None else data_roots
    for split in splits:
        try:
            examples = first_examples(folder / f"{split}.jsonl", per_split, allowed)
        except PathNotAllowed as exc:
            preview.problem, preview.splits = str(exc), {}
            return preview
        if examples:
            preview.splits[split] = [
                PreviewExample(split, line, count_tokens(render_example(
                    example, line_format(example) or fmt or "text", template, mask_prompt), counter))
                for line, example in examples
            ]
    return preview


def model_options(choices: list[dict[str, Any]], default_model: str, current: str) -> list[tuple[str, str]]:
    """(value, label) of the models the preview offers: the default, the picker's choices, the current one."""
    options: list[tuple[str, str]] = [(default_model, f"{Path(default_model).name} (default)")]
    for choice in choices:
        value = str(choice.get("model") or choice.get("path") or "")
        if value and value not in {v for v, _ in options}:
            options.append((value, str(choice.get("name") or value)))
    if current and current not in {v for v, _ in options}:
        options.append((current, current))
    return options
