"""RunConfig: the keys of `mlx_lm lora` (and its YAML) plus loraboard's own.

Defaults and help text live here once; the API validation, the new-run form,
YAML export and the worker all read them from this class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.settings import Settings


class LoraParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank: width of the low-rank update.")
    scale: float = Field(20.0, gt=0, description="LoRA scale applied to the low-rank update.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    keys: list[str] | None = Field(
        None, description="Module keys to adapt (e.g. self_attn.q_proj); default: mlx-lm's choice."
    )


class LrSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["cosine_decay", "linear_schedule", "exponential_decay", "step_decay"] = Field(
        ..., description="An mlx.optimizers schedule."
    )
    arguments: list[float] = Field(
        ..., min_length=1, description="Arguments of the schedule, the initial learning rate first (as mlx_lm's YAML)."
    )
    warmup: int = Field(0, ge=0, description="Linear warm-up steps.")
    warmup_init: float = Field(0.0, ge=0, description="Learning rate at the start of warm-up.")


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patience: int = Field(2, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(
        0.0, ge=0.0, description="An evaluation improves when it is at least this much below the best so far."
    )


class ResumeFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: int = Field(..., ge=1, description="The earlier run to continue.")
    iteration: int = Field(..., ge=1, description="Its checkpoint to continue from.")


class RunConfig(BaseModel):
    """A run's configuration, as posted to /api/runs and stored with the run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="A name for the run (default: model and time).")
    model: str = Field("", description="Local model folder or Hugging Face model id (default: embedded).")
    data: str = Field("", description="Folder holding train.jsonl and valid.jsonl (default: sample data).")
    fine_tune_type: Literal["lora", "dora", "full"] = Field(
        "lora", description="Type of fine-tuning: lora, dora or full."
    )
    optimizer: Literal["adam", "adamw", "sgd", "adafactor", "muon"] = Field(
        "adam", description="Optimizer."
    )
    num_layers: int = Field(
        16, ge=-1, description="Number of layers to fine-tune, counted from the top; -1 for all."
    )
    batch_size: int = Field(4, ge=1, le=4096, description="Minibatch size.")
    iters: int = Field(1000, ge=1, le=10_000_000, description="Iterations to train for.")
    learning_rate: float = Field(1e-5, gt=0, le=10, description="Adam learning rate.")
    steps_per_report: int = Field(10, ge=1, description="Training steps between loss reports.")
    steps_per_eval: int = Field(200, ge=1, description="Training steps between validations.")
    save_every: int = Field(100, ge=1, description="Save a checkpoint every this many steps.")
    val_batches: int = Field(
        25, ge=-1, description="Validation batches per evaluation; -1 uses the entire validation set."
    )
    full_val_at_checkpoints: bool = Field(
        False,
        description="Validate on the whole validation set at each checkpoint, so checkpoint losses compare "
        "(the usual val_batches sample is noisy).",
    )
    max_seq_length: int = Field(2048, ge=8, le=1_000_000, description="Maximum sequence length.")
    seed: int = Field(0, ge=0, description="Random seed for weights, batches and dropout.")
    grad_checkpoint: bool = Field(False, description="Use gradient checkpointing to reduce memory use.")
    grad_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Steps to accumulate gradients before an optimizer update."
    )
    mask_prompt: bool = Field(False, description="Compute the loss on the completion only (chat data).")
    lora_parameters: LoraParameters = Field(
        default_factory=LoraParameters, description="LoRA rank, scale, dropout and keys."
    )
    lr_schedule: LrSchedule | None = Field(None, description="Learning-rate schedule (default: constant).")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when validation loss stops improving (absent or null: off)."
    )
    resume_from: ResumeFrom | None = Field(
        None,
        description="Continue an earlier run from one of its checkpoints: weights, optimizer state, "
        "iteration count and learning-rate schedule position. iters is the total to reach.",
    )

    @model_validator(mode="after")
    def _check_val_batches(self) -> RunConfig:
        if self.val_batches == 0:
            raise ValueError("val_batches must be -1 (all) or at least 1")
        if self.resume_from is not None and self.iters <= self.resume_from.iteration:
            raise ValueError(
                f"iters ({self.iters}) must be above the iteration resumed from ({self.resume_from.iteration}): "
                "it is the total to reach"
            )
        return self

    def resolved(self, settings: Settings) -> RunConfig:
        """Every default filled in: model and data as absolute paths (or the hub id given)."""
        model = self.model.strip() or str(settings.default_model_dir)
        data = self.data.strip() or str(settings.default_dataset_dir)
        return self.model_copy(update={"model": resolve_model(model), "data": str(_absolute(data))})


def _absolute(path: str) -> Path:
    return Path(path).expanduser().resolve()


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def resolve_model(model: str) -> str:
    """A local folder becomes an absolute path; anything else is kept as a hub id."""
    return str(_absolute(model)) if looks_like_path(model) else model


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
    "early_stopping.enabled": True,
    "early_stopping.patience": 3,
    "early_stopping.min_delta": 0.0,
}

# The fields the form shows, in order: (key, kind). Nested keys use a dot.
FORM_FIELDS: list[tuple[str, str]] = [
    ("name", "text"),
    ("model", "text"),
    ("data", "text"),
    ("fine_tune_type", "select"),
    ("iters", "number"),
    ("batch_size", "number"),
    ("learning_rate", "number"),
    ("num_layers", "number"),
    ("steps_per_report", "number"),
    ("steps_per_eval", "number"),
    ("save_every", "number"),
    ("val_batches", "number"),
    ("max_seq_length", "number"),
    ("seed", "number"),
    ("optimizer", "select"),
    ("lora_parameters.rank", "number"),
    ("lora_parameters.scale", "number"),
    ("lora_parameters.dropout", "number"),
    ("early_stopping.enabled", "checkbox"),
    ("early_stopping.patience", "number"),
    ("early_stopping.min_delta", "number"),
    ("full_val_at_checkpoints", "checkbox"),
    ("grad_checkpoint", "checkbox"),
    ("mask_prompt", "checkbox"),
    ("resume_from.run_id", "number"),
    ("resume_from.iteration", "number"),
]


def _field_info(key: str) -> Any:
    model: Any = RunConfig
    parts = key.split(".")
    for part in parts[:-1]:
        model = {"lora_parameters": LoraParameters, "early_stopping": EarlyStopping, "resume_from": ResumeFrom}[part]
    return model.model_fields[parts[-1]]


def form_field_specs(values: dict[str, Any]) -> list[dict[str, Any]]:
    """What the template needs per field: key, kind, help, value and choices, from RunConfig."""
    specs = []
    for key, kind in FORM_FIELDS:
        if key == "early_stopping.enabled":
            help_text = "Stop when validation loss stops improving, keeping the best checkpoint."
            value: Any = bool(values.get(key))
            specs.append({"key": key, "kind": kind, "help": help_text, "value": value, "choices": []})
            continue
        info = _field_info(key)
        choices = list(getattr(info.annotation, "__args__", ())) if kind == "select" else []
        specs.append({"key": key, "kind": kind, "help": info.description or "",
                      "value": values.get(key, ""), "choices": choices})
    return specs


def flat_values(config: dict[str, Any]) -> dict[str, Any]:
    """{"lora_parameters": {"rank": 8}} -> {"lora_parameters.rank": 8}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def form_to_payload(form: dict[str, str]) -> dict[str, Any]:
    """Form strings -> a nested dict for RunConfig (pydantic converts the numbers)."""
    payload: dict[str, Any] = {}
    for key, kind in FORM_FIELDS:
        if kind == "checkbox":
            value: Any = key in form
        elif key in form and form[key].strip() != "":
            value = form[key].strip()
        else:
            continue
        head, _, tail = key.partition(".")
        if tail:
            payload.setdefault(head, {})[tail] = value
        else:
            payload[head] = value
    rule = payload.pop("early_stopping", {})
    if rule.pop("enabled", False):  # the switch decides; the numbers alone do not turn it on
        payload["early_stopping"] = rule
    return payload
