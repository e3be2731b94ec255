"""The new-run form, driven by RunConfig: fields and groups, values from a config, a payload from the form.

Pure functions (no request, no database): the routes in app/routes/runs/new_pages.py and the tests use them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app import json_text
from app.contract.distributed import Distributed
from app.contract.run_config import (
    OPTIMIZER_ARGS,
    EarlyStopping,
    LoraParameters,
    LrSchedule,
    ResumeFrom,
    RunConfig,
    batches_per_epoch,
)
from app.runs.form.words import sentence


@dataclass(frozen=True)
class FormField:
    key: str  # RunConfig key; nested keys use a dot
    kind: str  # text, number, select, checkbox, list (comma-separated), numbers, options (key=value pairs)
    group: str
    placeholder: str = ""

    @property
    def dom_id(self) -> str:
        return self.key.replace(".", "-")


# (group id, title): the first group is always visible, the rest sit under "Advanced".
FORM_GROUPS: list[tuple[str, str]] = [
    ("essentials", ""),
    ("schedule", "Learning-rate schedule"),
    ("lora", "LoRA"),
    ("evaluation", "Evaluation & checkpoints"),
    ("memory", "Memory"),
    ("optimizer", "Optimizer"),
    ("data", "Data format"),
    ("loading", "Model loading"),
    ("resume", "Continue an earlier run"),
    ("distributed", "Distributed (several processes or hosts)"),
]

FORM_FIELDS: list[FormField] = [
    FormField("name", "text", "essentials", "default: model and time"),
    FormField("model", "text", "essentials"),
    FormField("data", "text", "essentials"),
    FormField("fine_tune_type", "select", "essentials"),
    FormField("iters", "number", "essentials"),
    FormField("epochs", "number", "essentials", "blank: use iters"),
    FormField("batch_size", "number", "essentials"),
    FormField("learning_rate", "number", "essentials"),
    FormField("num_layers", "number", "essentials"),
    FormField("lora_parameters.rank", "number", "essentials"),
    FormField("early_stopping.enabled", "checkbox", "essentials"),
    FormField("early_stopping.patience", "number", "essentials"),
    FormField("early_stopping.min_delta", "number", "essentials"),
    FormField("lr_schedule.name", "select", "schedule"),
    FormField("lr_schedule.arguments", "numbers", "schedule", "e.g. 1e-5, 1000"),
    FormField("lr_schedule.warmup", "number", "schedule"),
    FormField("lr_schedule.warmup_init", "number", "schedule"),
    FormField("lora_parameters.scale", "number", "lora"),
    FormField("lora_parameters.dropout", "number", "lora"),
    FormField("lora_parameters.keys", "list", "lora", "e.g. self_attn.q_proj, self_attn.v_proj"),
    FormField("lora_precision", "select", "lora"),
    FormField("steps_per_eval", "number", "evaluation"),
    FormField("save_every", "number", "evaluation"),
    FormField("val_batches", "number", "evaluation"),
    FormField("steps_per_report", "number", "evaluation"),
    FormField("full_val_at_checkpoints", "checkbox", "evaluation"),
    FormField("test", "checkbox", "evaluation"),
    FormField("test_batches", "number", "evaluation"),
    FormField("max_seq_length", "number", "memory"),
    FormField("batch_padding", "select", "memory"),
    FormField("batch_grouping", "select", "memory"),
    FormField("grad_accumulation_steps", "number", "memory"),
    FormField("clear_cache_threshold", "number", "memory"),
    FormField("grad_checkpoint", "checkbox", "memory"),
    FormField("memory_limit_gb", "number", "memory", "blank: no limit"),
    FormField("memory_limit_action", "select", "memory"),
    FormField("trust_remote_code", "checkbox", "loading"),
    FormField("optimizer", "select", "optimizer"),
    FormField("optimizer_config", "options", "optimizer", "e.g. weight_decay=0.01, betas=[0.9, 0.98]"),
    FormField("seed", "number", "optimizer"),
    FormField("mask_prompt", "checkbox", "data"),
    FormField("prompt_feature", "text", "data", "prompt"),
    FormField("completion_feature", "text", "data", "completion"),
    FormField("chat_feature", "text", "data", "messages"),
    FormField("text_feature", "text", "data", "text"),
    FormField("resume_from.run_id", "number", "resume"),
    FormField("resume_from.iteration", "number", "resume"),
    FormField("distributed.enabled", "checkbox", "distributed"),
    FormField("distributed.backend", "select", "distributed"),
    FormField("distributed.hosts", "list", "distributed", "e.g. 127.0.0.1 or mac1.local, mac2.local"),
    FormField("distributed.hostfile", "text", "distributed", "e.g. /Users/me/hosts.json"),
    FormField("distributed.processes_per_host", "number", "distributed"),
    FormField("distributed.ssh_user", "text", "distributed", "default: your own user"),
    FormField("distributed.python", "text", "distributed", "default: this dashboard's python"),
]
FORM_KEYS = {f.key for f in FORM_FIELDS}
ADVANCED_KEYS = {f.key for f in FORM_FIELDS if f.group != "essentials"}

# Small, sensible settings the new-run form starts from (the embedded tiny model).
FORM_DEFAULTS: dict[str, Any] = {
    "iters": 300,
    "learning_rate": 1e-3,
    "num_layers": 4,
    "steps_per_report": 10,
    "steps_per_eval": 50,
    "save_every": 50,
    "val_batches": 10,
    "max_seq_length": 512,
    "early_stopping": {"patience": 3, "min_delta": 0.0},
}
EARLY_STOPPING_HELP = "Stop when validation loss stops improving, keeping the best checkpoint."
DISTRIBUTED_HELP = ("Train with several processes through mlx.launch (data parallel: each batch is split across "
                    "them), on this machine or on several hosts. Off: one process.")
SWITCHES = {"early_stopping.enabled": EARLY_STOPPING_HELP, "distributed.enabled": DISTRIBUTED_HELP}
_SECTIONS: dict[str, type[BaseModel]] = {
    "lora_parameters": LoraParameters, "early_stopping": EarlyStopping, "lr_schedule": LrSchedule,
    "resume_from": ResumeFrom, "distributed": Distributed,
}


def field_info(key: str) -> FieldInfo:
    head, _, tail = key.partition(".")
    if tail:
        return _SECTIONS[head].model_fields[tail]
    return RunConfig.model_fields[head]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e16 else repr(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([_text_number(v) for v in value])
    return str(value)


def _text_number(value: Any) -> Any:
    return value if not isinstance(value, float) or value != int(value) else int(value)


def default_text(key: str) -> str:
    """What applies when the field is left blank, as the help line says it."""
    if key == "optimizer_config" or key in SWITCHES:
        return ""
    info = field_info(key)
    if info.default is PydanticUndefined or info.default is None:
        return ""
    value = info.default
    return ("on" if value else "off") if isinstance(value, bool) else _text(value)


def optimizer_options() -> list[tuple[str, str]]:
    """(optimizer, its keys with mlx's defaults), read from the argument models, for the optimizer_config help."""
    return [(name, ", ".join(f"{key}={info.description}" for key, info in model.model_fields.items()))
            for name, model in OPTIMIZER_ARGS.items()]


def help_text(key: str) -> str:
    if key in SWITCHES:
        return SWITCHES[key]
    info = field_info(key)
    text = info.description or ""
    if key == "optimizer_config":
        text += " Write key=value pairs (or a JSON object); what each optimizer takes, with mlx's defaults:"
    return text


def choices(key: str) -> list[tuple[str, str]]:
    """(value, label) of a select."""
    if key == "lr_schedule.name":
        names = field_info(key).annotation.__args__  # type: ignore[union-attr]
        return [("", "constant (no schedule)")] + [(n, n) for n in names]
    annotation = field_info(key).annotation
    return [(c, c) for c in getattr(annotation, "__args__", ())]


def format_options(options: dict[str, Any]) -> str:
    """{"weight_decay": 0.01, "betas": [0.9, 0.98]} -> "weight_decay=0.01, betas=[0.9, 0.98]"."""
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, tuple, bool)) else _text(v)}"
                     for k, v in options.items())


def form_values(config: RunConfig) -> dict[str, Any]:
    """The form's value of every field for a config (what the fields show, as text or bool)."""
    dumped = config.model_dump(mode="json")
    values: dict[str, Any] = {}
    for field in FORM_FIELDS:
        head, _, tail = field.key.partition(".")
        section = dumped.get(head)
        value = section.get(tail) if tail and isinstance(section, dict) else (None if tail else section)
        if field.kind == "checkbox":
            values[field.key] = bool(value)
        elif field.kind in ("list", "numbers"):
            values[field.key] = ", ".join(_text(v) for v in value) if value else ""
        elif field.kind == "options":
            values[field.key] = format_options(config.optimizer_config.arguments_for(config.optimizer))
        else:
            values[field.key] = _text(value)
    values["early_stopping.enabled"] = config.early_stopping is not None
    values["distributed.enabled"] = config.distributed is not None
    if config.distributed is None:  # the section shows what switching it on would start from
        values["distributed.backend"] = "ring"
        values["distributed.processes_per_host"] = "1"
    rule = config.early_stopping or EarlyStopping.model_validate(FORM_DEFAULTS["early_stopping"])
    values["early_stopping.patience"] = str(rule.patience)
    values["early_stopping.min_delta"] = _text(rule.min_delta)
    if config.lr_schedule is None:
        values["lr_schedule.warmup"] = "0"
        values["lr_schedule.warmup_init"] = "0"
    return values


def starting_config(model: str, data: str) -> RunConfig:
    """The config a fresh form shows: small settings for the embedded model."""
    payload = {k: v for k, v in FORM_DEFAULTS.items() if k != "early_stopping"}
    return RunConfig.model_validate({**payload, "model": model, "data": data,
                                     "early_stopping": FORM_DEFAULTS["early_stopping"]})


class FormProblem(ValueError):
    """A form value that cannot even be read (before validation), for one field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


_OPTION_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\[[^\]]*\]|[^,\[\]]*)\s*(?:,|$)")


def parse_options(text: str) -> dict[str, Any]:
    """"weight_decay=0.01, betas=[0.9, 0.98]" or a JSON object -> a dict (values parsed as JSON when they are)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            parsed = json_text.loads(text)
        except json.JSONDecodeError as exc:
            raise FormProblem("optimizer_config", f"not a valid JSON object: {exc.msg} at column {exc.colno}") from None
        if not isinstance(parsed, dict):
            raise FormProblem("optimizer_config", "expected a JSON object such as {\"weight_decay\": 0.01}")
        return parsed
    options: dict[str, Any] = {}
    position = 0
    while position < len(text):
        match = _OPTION_PAIR.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:].strip().split(",")[0]
            raise FormProblem("optimizer_config", f"cannot read {rest!r}: write key=value pairs separated by "
                              "commas, e.g. weight_decay=0.01, betas=[0.9, 0.98]")
        key, raw = match.group(1), match.group(2).strip()
        if key in options:
            raise FormProblem("optimizer_config", f"{key} is given twice")
        if raw == "":
            raise FormProblem("optimizer_config", f"{key} has no value")
        try:
            options[key] = json_text.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw  # left to validation, which names what was expected
        position = match.end()
    return options


def _split_list(text: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", text.strip().strip("[]")) if part]


def form_to_payload(form: dict[str, str]) -> dict[str, Any]:
    """Form strings -> a nested dict for RunConfig (pydantic converts the numbers); raises FormProblem."""
    payload: dict[str, Any] = {}
    for field in FORM_FIELDS:
        raw = form.get(field.key, "")
        if field.kind == "checkbox":
            value: Any = field.key in form and raw not in ("", "off", "false")
        elif raw.strip() == "":
            continue
        elif field.kind in ("list", "numbers"):
            value = _split_list(raw)
        elif field.kind == "options":
            value = parse_options(raw)
        else:
            value = raw.strip()
        head, _, tail = field.key.partition(".")
        if tail:
            payload.setdefault(head, {})[tail] = value
        else:
            payload[head] = value
    rule = payload.pop("early_stopping", {})
    if rule.pop("enabled", False):  # the switch decides; the numbers alone do not turn it on
        payload["early_stopping"] = rule
    schedule = payload.pop("lr_schedule", {})
    if schedule.get("name"):  # no name: constant learning rate, whatever else was typed
        payload["lr_schedule"] = schedule
    spread = payload.pop("distributed", {})
    if spread.pop("enabled", False):  # the switch decides, as for early stopping
        payload["distributed"] = spread
    if "optimizer_config" in payload:
        payload["optimizer_config"] = {payload.get("optimizer", "adam"): payload["optimizer_config"]}
    return payload


def error_key(loc: tuple[Any, ...]) -> tuple[str, str]:
    """(form field, the rest of the location) for a validation error's location."""
    parts = [str(p) for p in loc]
    for size in range(len(parts), 0, -1):
        key = ".".join(parts[:size])
        if key in FORM_KEYS:
            return key, ".".join(parts[size:])
    if parts and parts[0] == "early_stopping":
        return "early_stopping.patience", ".".join(parts[1:])
    if parts and parts[0] == "lr_schedule":
        return "lr_schedule.name", ".".join(parts[1:])
    if parts and parts[0] == "resume_from":
        return "resume_from.run_id", ".".join(parts[1:])
    if parts and parts[0] == "distributed":
        return "distributed.enabled", ".".join(parts[1:])
    return ("form" if not parts else ".".join(parts)), ""


def form_errors(exc: ValidationError) -> dict[str, str]:
    """Validation errors by form field, each a sentence naming what is wrong and what the field takes
    (app/runs/form/words.py; the API's 422 keeps pydantic's own messages)."""
    errors: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        key, rest = error_key(tuple(err["loc"]))
        if key == "optimizer_config" and rest.count(".") == 0 and rest in OPTIMIZER_ARGS:
            rest = ""  # the optimizer's own name says nothing the select does not
        elif key == "optimizer_config" and "." in rest:
            rest = rest.split(".", 1)[1]
        if rest.isdigit():
            rest = f"{key} item {int(rest) + 1}"
        message = sentence(err, rest or key)
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    return errors


def iterations_note(config: RunConfig, train_examples: int | None) -> str:
    """How iters and epochs relate for this training set, e.g. "2 epochs = 600 iterations (…)"."""
    if not train_examples:
        return "" if config.epochs is None else "epochs need a local data folder with train.jsonl to count examples"
    per_epoch = batches_per_epoch(train_examples, config.batch_size)
    if per_epoch == 0:
        return ""
    basis = f"{train_examples:,} examples ÷ batch_size {config.batch_size} = {per_epoch:,} iterations per epoch"
    if config.epochs is not None:
        return f"{config.epochs:g} epochs = {config.iters:,} iterations ({basis})"
    return f"{config.iters:,} iterations = {config.iters / per_epoch:.2f} epochs ({basis})"


def changed_advanced(values: dict[str, Any]) -> list[str]:
    """The Advanced fields whose value differs from mlx-lm's default (what the closed section still holds)."""
    defaults = form_values(RunConfig())
    changed = []
    for field in FORM_FIELDS:
        if field.group == "essentials":
            continue
        value = values.get(field.key, False if field.kind == "checkbox" else "")
        if field.kind == "checkbox":
            differs = (value in (True, "on", "true")) != defaults[field.key]
        else:
            differs = str(value).strip() != str(defaults[field.key])
        if differs:
            changed.append(field.key)
    return changed


def field_specs(values: dict[str, Any]) -> list[dict[str, Any]]:
    """What the template needs per field, in form order."""
    return [
        {"key": f.key, "dom_id": f.dom_id, "kind": f.kind, "group": f.group, "placeholder": f.placeholder,
         "help": help_text(f.key), "default": default_text(f.key),
         "value": values.get(f.key, False if f.kind == "checkbox" else ""),
         "choices": choices(f.key) if f.kind == "select" else [],
         "options": optimizer_options() if f.kind == "options" else []}
        for f in FORM_FIELDS
    ]


def grouped_specs(values: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"id", "title", "fields": [...]}] in FORM_GROUPS order."""
    specs = field_specs(values)
    return [{"id": gid, "title": title, "fields": [s for s in specs if s["group"] == gid]}
            for gid, title in FORM_GROUPS]
