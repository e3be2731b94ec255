"""Model cards: the README.md in the Hugging Face model-card format that travels with what a run produces (the
adapter zip, a fused model folder, a GGUF export). YAML front matter (base_model, library_name, tags, ...), then
the report's own sections that say how it was made (summary, dataset, hyperparameters, evaluation) and the commands
that use this artefact. Pure: built from the report's facts (app/reports/facts.gather).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.contract.run_config import looks_like_path
from app.reports.blocks import Command, FactList, Mono, Report, Section, text
from app.reports.document import dataset_section, hyperparameters_section, summary_section
from app.reports.facts import RunFacts
from app.reports.markdown import render_markdown
from app.reports.results import evaluation_section, loss_text
from app.tables import Checkpoint

FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
PROMPT = "Summarize this conversation in the trained format."  # the usage commands' prompt
WHAT = {"adapter": "LoRA adapter", "fused": "fused model"}
RELATION = {"adapter": "adapter", "fused": "finetune"}


@dataclass(frozen=True)
class Artefact:
    """What a card describes: an adapter (the zip) or a fused model folder, of one checkpoint."""

    kind: str  # "adapter" or "fused"
    checkpoint: Checkpoint


def base_model_id(model: str) -> str:
    """The base model as the card names it: a hub id as it is, a local folder by its name."""
    return Path(model).name if looks_like_path(model) else model


def front_matter(facts: RunFacts, artefact: Artefact) -> dict[str, Any]:
    method = str(facts.config.get("fine_tune_type", "lora"))
    matter: dict[str, Any] = {
        "base_model": base_model_id(str(facts.config.get("model", ""))),
        "base_model_relation": RELATION[artefact.kind],
        "library_name": "mlx",
        "pipeline_tag": "text-generation",
        "tags": ["mlx", method, "loraboard"],
    }
    if facts.dataset.name:
        matter["datasets"] = [facts.dataset.name]
    return matter


def usage(facts: RunFacts, artefact: Artefact) -> list[Command]:
    """The commands that use this artefact, run from its own folder."""
    model = shlex.quote(str(facts.config.get("model", "")))
    prompt = shlex.quote(PROMPT)
    if artefact.kind == "adapter":
        return [Command("Generate with the adapter (in the unzipped folder)",
                        f"python -m mlx_lm generate --model {model} --adapter-path . --prompt {prompt}"),
                Command("Fuse it into the base model",
                        f"python -m mlx_lm fuse --model {model} --adapter-path . --save-path fused")]
    return [Command("Generate (in this folder)", f"python -m mlx_lm generate --model . --prompt {prompt}"),
            Command("Serve it (OpenAI-compatible API)", "python -m mlx_lm server --model . --port 8080")]


def artefact_section(facts: RunFacts, artefact: Artefact) -> Section:
    ckpt = artefact.checkpoint
    is_best = facts.best is not None and facts.best.id == ckpt.id
    made = {"adapter": "the adapter (adapters.safetensors and adapter_config.json)",
            "fused": "the adapter fused into the base model's weights"}[artefact.kind]
    items = [("Checkpoint", text(f"iteration {ckpt.iteration:,} of run #{facts.run.id} ({facts.run.name})"
                                 + (", the lowest validation loss" if is_best else "")
                                 + (", the deployment checkpoint" if ckpt.is_deployment else ""))),
             ("Validation loss", text(loss_text(ckpt.val_loss))),
             ("What this is", text(made))]
    return Section("use", "Use it", [FactList(items), *usage(facts, artefact)])


def model_card(facts: RunFacts, artefact: Artefact) -> str:
    """The README.md text of one artefact."""
    report = Report(
        f"{facts.run.name}: {WHAT[artefact.kind]}",
        [("Base model", text(Mono(str(facts.config.get("model", ""))))),
         ("Trained with", text("loraboard (mlx-lm LoRA)"))],
        [artefact_section(facts, artefact), summary_section(facts), dataset_section(facts),
         hyperparameters_section(facts), evaluation_section(facts)],
        text(f"Written by loraboard on {facts.generated_at:%Y-%m-%d %H:%M} UTC from run #{facts.run.id}."),
    )
    matter = yaml.safe_dump(front_matter(facts, artefact), sort_keys=False, allow_unicode=True)
    body = render_markdown(report, svg="")
    return f"---\n{matter}---\n\n{body}"


def card_front_matter(card: str) -> dict[str, Any]:
    """The front matter of a card (empty when it has none)."""
    match = FRONT_MATTER.match(card)
    loaded = yaml.safe_load(match.group(1)) if match else None
    return loaded if isinstance(loaded, dict) else {}


def gguf_card(source_card: str | None, source: str, file: str, gguf_type: str) -> str:
    """The README.md of a GGUF export of the model folder `source`: its own front matter and commands, then the
    card of the folder it was made from (a fused model's says how it was trained), when that folder has one."""
    matter = card_front_matter(source_card or "")
    own = {"base_model": matter.get("base_model", Path(source).name), "base_model_relation": "quantized",
           "library_name": "gguf", "pipeline_tag": "text-generation",
           "tags": [*[t for t in matter.get("tags", []) if t != "gguf"], "gguf", gguf_type]}
    if matter.get("datasets"):
        own["datasets"] = matter["datasets"]
    prompt = shlex.quote(PROMPT)
    gguf = shlex.quote(file)
    report = Report(f"{Path(source).name}: GGUF ({gguf_type})", [("Made from", text(Mono(source)))], [
        Section("use", "Use it", [
            FactList([("File", text(Mono(file))), ("Type", text(gguf_type))]),
            Command("Generate with llama.cpp (in this folder)", f"llama-cli -m {gguf} -p {prompt} -n 128"),
            Command("Serve it with llama.cpp", f"llama-server -m {gguf} --port 8080"),
            Command("Or with Ollama (the Modelfile beside it)", f"ollama create {shlex.quote(Path(file).stem)} "
                                                                "-f Modelfile")]),
    ])
    body = render_markdown(report, svg="")
    if source_card:
        earlier = FRONT_MATTER.sub("", source_card, count=1).strip()
        body += f"\n---\n\n## The model it was made from\n\n{_demoted(earlier)}\n"
    head = yaml.safe_dump(own, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n{body}"


def _demoted(markdown: str) -> str:
    """Headings one level down (the source card goes under a heading of its own)."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", markdown, flags=re.MULTILINE)
