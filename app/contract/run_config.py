"""RunConfig: the keys of `mlx_lm lora` (and its YAML) plus loraboard's own.

Defaults, bounds and help text live here once; the API validation, the new-run
form (app/runs/form/fields.py), YAML import/export (app/runs/configs/yaml_config.py) and the worker all
read them from these classes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.contract.distributed import Distributed
from app.contract.paths import DATA_DIRS_SETTING, MODEL_DIRS_SETTING, PathNotAllowed, confine, data_roots, model_roots
from app.contract.safe_text import text_problem
from app.contract.settings import Settings

OptimizerName = Literal["adam", "adamw", "sgd", "adafactor", "muon"]
ScheduleName = Literal["cosine_decay", "linear_schedule", "exponential_decay", "step_decay"]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def config_error(loc: tuple[str | int, ...], message: str, value: Any = None) -> ValidationError:
    """A validation error for one field, worded as given (pydantic keeps the location when nested)."""
    detail = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("RunConfig", [detail])


class LoraParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank: width of the low-rank update.")
    scale: float = Field(20.0, gt=0, le=10_000, description="LoRA scale applied to the low-rank update.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    keys: list[Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.]+$")]] | None = Field(
        None, min_length=1,
        description="Module keys to adapt inside each layer, e.g. self_attn.q_proj, self_attn.v_proj "
        "(default: every linear layer mlx-lm finds).",
    )


# (argument names, how many are required) of each mlx.optimizers schedule, in mlx_lm's YAML order.
SCHEDULE_ARGUMENTS: dict[str, tuple[tuple[str, ...], int]] = {
    "cosine_decay": (("init", "decay_steps", "end"), 2),
    "linear_schedule": (("init", "end", "steps"), 3),
    "exponential_decay": (("init", "decay_rate"), 2),
    "step_decay": (("init", "decay_rate", "step_size"), 3),
}
STEP_ARGUMENTS = {"decay_steps", "steps", "step_size"}


class LrSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ScheduleName = Field(
        ..., description="An mlx.optimizers schedule: cosine_decay, linear_schedule, exponential_decay or step_decay."
    )
    arguments: list[float] = Field(
        ..., min_length=1,
        description="The schedule's arguments, the initial learning rate first: cosine_decay init, decay_steps[, end]; "
        "linear_schedule init, end, steps; exponential_decay init, decay_rate; step_decay init, decay_rate, step_size.",
    )
    warmup: int = Field(0, ge=0, le=10_000_000, description="Linear warm-up steps before the schedule starts.")
    warmup_init: float = Field(0.0, ge=0, description="Learning rate at the start of warm-up.")

    @model_validator(mode="after")
    def _check_arguments(self) -> LrSchedule:
        names, required = SCHEDULE_ARGUMENTS[self.name]
        count = len(self.arguments)
        if not required <= count <= len(names):
            wanted = str(required) if required == len(names) else f"{required} or {len(names)}"
            raise config_error(("arguments",), f"{self.name} takes {wanted} arguments ({', '.join(names)}), "
                               f"got {count}", self.arguments)
        if self.arguments[0] <= 0:
            raise config_error(("arguments",), f"the first argument ({names[0]}, the initial learning rate) "
                               "must be above 0", self.arguments)
        for name, value in zip(names, self.arguments, strict=False):
            if name in STEP_ARGUMENTS and value < 1:
                raise config_error(("arguments",), f"{name} must be at least 1, got {value:g}", self.arguments)
        return self


class OptimizerArgs(BaseModel):
    """Keyword arguments of one mlx.optimizers class; only the keys given are kept."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise PydanticCustomError(
                    "unknown_option", "{optimizer} has no option {unknown}; it takes {known}",
                    {"optimizer": cls.__name__.removesuffix("Args").lower(), "unknown": ", ".join(unknown),
                     "known": ", ".join(cls.model_fields)},
                )
        return data

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if k in self.model_fields_set and v is not None}


class AdamArgs(OptimizerArgs):
    betas: tuple[Beta, Beta] | None = Field(None, description="[0.9, 0.999]")
    eps: float | None = Field(None, gt=0, description="1e-08")
    bias_correction: bool | None = Field(None, description="false")


class AdamWArgs(AdamArgs):
    weight_decay: float | None = Field(None, ge=0, description="0.01")


class SgdArgs(OptimizerArgs):
    momentum: float | None = Field(None, ge=0, description="0.0")
    weight_decay: float | None = Field(None, ge=0, description="0.0")
    dampening: float | None = Field(None, ge=0, description="0.0")
    nesterov: bool | None = Field(None, description="false")


class AdafactorArgs(OptimizerArgs):
    eps: tuple[float, float] | None = Field(None, description="[1e-30, 0.001]")
    clip_threshold: float | None = Field(None, gt=0, description="1.0")
    decay_rate: float | None = Field(None, description="-0.8")
    beta_1: float | None = Field(None, ge=0, lt=1, description="none")
    weight_decay: float | None = Field(None, ge=0, description="0.0")
    scale_parameter: bool | None = Field(None, description="true")
    relative_step: bool | None = Field(None, description="true")
    warmup_init: bool | None = Field(None, description="false")


class MuonArgs(OptimizerArgs):
    momentum: float | None = Field(None, ge=0, description="0.95")
    weight_decay: float | None = Field(None, ge=0, description="0.01")
    nesterov: bool | None = Field(None, description="true")
    ns_steps: int | None = Field(None, ge=1, le=100, description="5")


class OptimizerConfig(BaseModel):
    """mlx_lm's `optimizer_config`: extra arguments per optimizer, used for the chosen one."""

    model_config = ConfigDict(extra="forbid")

    adam: AdamArgs | None = None
    adamw: AdamWArgs | None = None
    sgd: SgdArgs | None = None
    adafactor: AdafactorArgs | None = None
    muon: MuonArgs | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_empty(cls, data: Any) -> Any:  # mlx_lm's defaults list every optimizer with {}
        return {k: v for k, v in data.items() if v not in ({}, None)} if isinstance(data, dict) else data

    @model_serializer(mode="wrap")
    def _non_empty(self, handler: Any) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if v}

    def arguments_for(self, optimizer: str) -> dict[str, Any]:
        args = getattr(self, optimizer, None)
        return args.model_dump() if args is not None else {}


OPTIMIZER_ARGS: dict[str, type[OptimizerArgs]] = {
    "adam": AdamArgs, "adamw": AdamWArgs, "sgd": SgdArgs, "adafactor": AdafactorArgs, "muon": MuonArgs,
}


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patience: int = Field(2, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(
        0.0, ge=0.0, description="An evaluation improves when it is at least this much below the best so far."
    )


class ResumeFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: int = Field(..., ge=1, le=2**63 - 1, description="The earlier run to continue.")
    iteration: int = Field(..., ge=1, le=2**63 - 1, description="Its checkpoint to continue from.")


# Keys of RunConfig that are loraboard's own (mlx_lm has no such option), and mlx_lm's data key names.
LORABOARD_KEYS: tuple[str, ...] = ("name", "epochs", "early_stopping", "full_val_at_checkpoints", "resume_from",
                                   "memory_limit_gb", "memory_limit_action", "distributed", "lora_precision",
                                   "batch_padding", "batch_grouping")
FEATURE_KEYS: tuple[str, ...] = ("prompt_feature", "completion_feature", "chat_feature", "text_feature")


class RunConfig(BaseModel):
    """A run's configuration, as posted to /api/runs and stored with the run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="A name for the run (default: model and time).")
    model: str = Field("", description="Local model folder or Hugging Face model id (default: embedded).")
    data: str = Field("", description="Folder holding train.jsonl and valid.jsonl (test.jsonl for test).")
    fine_tune_type: Literal["lora", "dora", "full"] = Field(
        "lora", description="lora or dora add small trainable adapters; full trains the layers' own weights."
    )
    optimizer: OptimizerName = Field("adam", description="Optimizer: adam, adamw, sgd, adafactor or muon.")
    optimizer_config: OptimizerConfig = Field(
        default_factory=OptimizerConfig,
        description="Extra arguments of the chosen optimizer (mlx_lm's optimizer_config), e.g. adamw weight_decay.",
    )
    num_layers: int = Field(
        16, ge=-1, le=10_000, description="Number of layers to fine-tune, counted from the top; -1 for all."
    )
    batch_size: int = Field(4, ge=1, le=4096, description="Examples per training step (minibatch size).")
    iters: int = Field(1000, ge=1, le=10_000_000, description="Training steps (batches) to run.")
    epochs: float | None = Field(
        None, gt=0, le=100_000,
        description="Passes over the training set instead of iters: iters becomes epochs * (train.jsonl examples "
        "÷ batch_size), rounded up (loraboard's own key).",
    )
    learning_rate: float = Field(1e-5, gt=0, le=10, description="Learning rate (unused with a schedule).")
    lr_schedule: LrSchedule | None = Field(None, description="Learning-rate schedule (default: constant).")
    lora_parameters: LoraParameters = Field(
        default_factory=LoraParameters, description="LoRA rank, scale, dropout and keys."
    )
    lora_precision: Literal["mixed", "float32"] = Field(
        "mixed", description="mixed keeps the LoRA/DoRA weights and optimizer state in float32 but multiplies them "
        "in the model's dtype (faster, less memory); float32 also multiplies in float32, as mlx-lm does. Only "
        "matters for bfloat16/float16 models (GPU, Metal); on CPU loraboard trains in float32 (loraboard's own key).",
    )
    max_seq_length: int = Field(2048, ge=8, le=1_000_000, description="Longer examples are truncated to this.")
    batch_padding: Literal["tight", "mlx_lm"] = Field(
        "tight", description="tight pads a batch's rows to what the longest batch of its shape needs (rounded up "
        "to 8 tokens): mlx_lm's shapes, less padding; grouped by length, each batch to its own longest row (rounded "
        "up to 8 tokens: more shapes, each compiled once). A run shorter than one epoch keeps mlx_lm's. mlx_lm pads "
        "to the next multiple of 32 (loraboard's own key).",
    )
    batch_grouping: Literal["length", "file_order"] = Field(
        "length", description="length cuts the training set into batches of examples of similar token length "
        "(less padding, fewer positions computed); the order of the batches is still shuffled every epoch, and "
        "each batch's loss is weighed by its token count so that every token counts as in file order (the train "
        "loss shown is the mean per token). "
        "file_order keeps mlx-lm's own order, which for JSONL data is the order of the file (loraboard's own key).",
    )
    grad_checkpoint: bool = Field(
        False, description="Gradient checkpointing: recompute activations to use less memory (slower)."
    )
    grad_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Batches whose gradients are summed before each optimizer update."
    )
    clear_cache_threshold: int = Field(
        0, ge=0, description="Clear MLX's memory cache between steps when it holds more than this many bytes "
        "(0: never)."
    )
    mask_prompt: bool = Field(False, description="Compute the loss on the completion only (chat and completions "
                              "data).")
    steps_per_report: int = Field(10, ge=1, le=10_000_000, description="Training steps between loss reports.")
    steps_per_eval: int = Field(200, ge=1, le=10_000_000, description="Training steps between validations.")
    save_every: int = Field(100, ge=1, le=10_000_000, description="Save a checkpoint every this many steps.")
    val_batches: int = Field(
        25, ge=-1, description="Validation batches per evaluation; -1 uses the entire validation set."
    )
    full_val_at_checkpoints: bool = Field(
        False,
        description="Validate on the whole validation set at each checkpoint, so checkpoint losses compare "
        "(the usual val_batches sample is noisy).",
    )
    test: bool = Field(
        False, description="After training, measure the loss of the best (or final) adapter on test.jsonl."
    )
    trust_remote_code: bool = Field(
        False, description="Let the model's own Python code (from its repository) run when it loads: only for a "
        "model whose code you trust."
    )
    test_batches: int = Field(500, ge=-1, description="Test batches to evaluate; -1 uses the entire test set.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed for weights, batches and dropout.")
    prompt_feature: str | None = Field(None, min_length=1, description="Key of the prompt in completions data "
                                       "(default: prompt).")
    completion_feature: str | None = Field(None, min_length=1, description="Key of the completion in completions "
                                           "data (default: completion).")
    chat_feature: str | None = Field(None, min_length=1, description="Key of the message list in chat data "
                                     "(default: messages).")
    text_feature: str | None = Field(None, min_length=1, description="Key of the text in text data "
                                     "(default: text).")
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when validation loss stops improving (absent or null: off)."
    )
    resume_from: ResumeFrom | None = Field(
        None,
        description="Continue an earlier run from one of its checkpoints: weights, optimizer state (where the "
        "checkpoint saved it), iteration count and learning-rate schedule position. iters is the total to reach.",
    )

    memory_limit_gb: float | None = Field(
        None, gt=0, le=1_000_000,
        description="Watch the worker's memory (resident; on macOS its physical footprint), in GB: above this the "
        "run page warns, or the run stops (memory_limit_action). Blank: no limit (loraboard's own key).",
    )
    memory_limit_action: Literal["warn", "stop"] = Field(
        "warn", description="What crossing memory_limit_gb does: warn shows a warning on the run page; stop saves "
        "the adapter and ends the run, saying why.",
    )
    distributed: Distributed | None = Field(
        None, description="Train with several processes, on this machine or several hosts, through mlx.launch "
        "(loraboard's own key). Blank: one process.")

    @field_validator("name")
    @classmethod
    def _one_line_name(cls, value: str) -> str:
        problem = text_problem(value, "name")
        if problem is not None:
            raise PydanticCustomError("value_error", problem)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        for key in ("val_batches", "test_batches"):
            if getattr(self, key) == 0:
                raise config_error((key,), f"{key} must be -1 (all) or at least 1", 0)
        if self.num_layers == 0:  # mlx-lm would take layers[-0:], i.e. every layer: refuse the surprise
            raise config_error(("num_layers",), "num_layers must be -1 (all) or at least 1", 0)
        if self.resume_from is not None and self.iters <= self.resume_from.iteration:
            raise config_error(
                ("iters",), f"iters ({self.iters}) must be above the iteration resumed from "
                f"({self.resume_from.iteration}): it is the total to reach", self.iters)
        return self

    def resolved(self, settings: Settings) -> RunConfig:
        """Every default filled in: model and data as absolute paths (or the hub id given), epochs as iters.

        Refuses what the data folder cannot support (a ValidationError naming the field): a batch larger
        than the training set, or test without a test.jsonl of at least one batch.
        """
        model = self.model.strip() or str(settings.default_model_dir)
        try:
            data = confine(self.data.strip() or settings.default_dataset_dir, data_roots(settings), "data folder",
                           DATA_DIRS_SETTING)
        except PathNotAllowed as exc:
            raise config_error(("data",), str(exc), self.data) from None
        if looks_like_path(model):
            try:
                model = str(confine(model, model_roots(settings), "model folder", MODEL_DIRS_SETTING))
            except PathNotAllowed as exc:
                raise config_error(("model",), str(exc), self.model) from None
        update: dict[str, Any] = {"model": model, "data": str(data)}
        train = count_examples(data / "train.jsonl")
        if train is not None and train < self.batch_size:
            raise config_error(("batch_size",), f"batch_size ({self.batch_size}) is more than the {train} examples "
                               f"in {data / 'train.jsonl'}: mlx-lm needs at least one full batch", self.batch_size)
        if train is not None and self.epochs is not None:
            update["iters"] = iters_for_epochs(self.epochs, train, self.batch_size)
        if self.test and data.is_dir():
            test = count_examples(data / "test.jsonl")
            if not test:
                raise config_error(("test",), f"test is on but {data} has no test.jsonl with examples", True)
            if test < self.batch_size:
                raise config_error(("test",), f"test.jsonl has {test} examples, fewer than one batch "
                                   f"(batch_size {self.batch_size})", True)
        return RunConfig.model_validate({**self.model_dump(), **update})


def count_examples(path: Path) -> int | None:
    """Lines holding an example in a JSONL file (None when it does not exist)."""
    if not path.is_file():
        return None
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """Full batches mlx-lm makes from a training set (it drops the remainder)."""
    return examples // batch_size


def iters_for_epochs(epochs: float, examples: int, batch_size: int) -> int:
    """Iterations for `epochs` passes over `examples` in batches of `batch_size`, rounded up."""
    return max(1, math.ceil(round(epochs * batches_per_epoch(examples, batch_size), 6)))


def _absolute(path: str) -> Path:
    return Path(path).expanduser().resolve()


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def resolve_model(model: str) -> str:
    """A local folder becomes an absolute path; anything else is kept as a hub id."""
    return str(_absolute(model)) if looks_like_path(model) else model
