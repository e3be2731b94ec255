"""Warnings about a run config: combinations that train, but maybe not as the user expects.

`config_warnings(config, facts)` is pure; `gather_facts` reads what it needs from the model
(app.catalog.info), the data folder and the installed packages, without importing mlx.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path

from app import json_text
from app.catalog.info import ModelInfoError, model_info
from app.contract.run_config import SCHEDULE_ARGUMENTS, RunConfig, count_examples
from app.contract.settings import Settings

CUDA_DISTRIBUTIONS = ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda")


@dataclass(frozen=True)
class ModelFacts:
    layers: int | None = None
    dtype: str | None = None  # as stored: float32, bfloat16, float16
    max_positions: int | None = None


@dataclass(frozen=True)
class DataFacts:
    train: int | None = None
    valid: int | None = None
    test: int | None = None
    train_format: str | None = None  # chat, completions, text (by the first example's keys)


@dataclass(frozen=True)
class ConfigFacts:
    model: ModelFacts = field(default_factory=ModelFacts)
    data: DataFacts = field(default_factory=DataFacts)
    cpu_only: bool = False  # the worker will train on the CPU (Linux without MLX's CUDA backend)


@dataclass(frozen=True)
class ConfigWarning:
    field: str  # the form field it is about
    message: str


def _plural(count: int, word: str) -> str:
    """'1 full batch', '2 full batches', '3 examples'."""
    return f"{count:,} {word}" + ("" if count == 1 else "es" if word.endswith(("ch", "sh", "s", "x")) else "s")


def _evaluation_warnings(config: RunConfig, facts: ConfigFacts) -> list[ConfigWarning]:
    found: list[ConfigWarning] = []
    valid = facts.data.valid
    if valid == 0 or (valid is None and facts.data.train is not None):
        consequence = " early stopping cannot act and" if config.early_stopping else ""
        found.append(ConfigWarning("data", f"the data folder has no valid.jsonl examples: there will be no "
                                   f"validation loss, so{consequence} no checkpoint can be picked as best"))
    if config.save_every % config.steps_per_eval and not config.full_val_at_checkpoints:
        found.append(ConfigWarning(
            "save_every", f"save_every ({config.save_every}) is not a multiple of steps_per_eval "
            f"({config.steps_per_eval}): checkpoints at other iterations have no validation loss, so they cannot be "
            "compared or picked as best. Make them equal, or turn on full_val_at_checkpoints."))
    if config.save_every > config.iters:
        found.append(ConfigWarning("save_every", f"save_every ({config.save_every:,}) is more than iters "
                                   f"({config.iters:,}): only the final adapter (and the best one) will be saved"))
    if config.steps_per_eval > config.iters:
        found.append(ConfigWarning("steps_per_eval", f"steps_per_eval ({config.steps_per_eval:,}) is more than iters "
                                   f"({config.iters:,}): validation runs only at the start and the end"))
    if config.steps_per_report > config.iters:
        found.append(ConfigWarning("steps_per_report", f"steps_per_report ({config.steps_per_report:,}) is more than "
                                   f"iters ({config.iters:,}): the chart gets a single training loss point"))
    rule = config.early_stopping
    if rule is not None:
        evaluations = config.iters // config.steps_per_eval
        if evaluations <= rule.patience:
            found.append(ConfigWarning(
                "early_stopping.patience", f"early stopping needs more than {rule.patience} evaluations after the "
                f"first, but iters {config.iters:,} ÷ steps_per_eval {config.steps_per_eval:,} gives "
                f"{_plural(evaluations, 'evaluation')}: it can never stop the run"))
    for key, batches, examples, name in (("val_batches", config.val_batches, valid, "valid.jsonl"),
                                         ("test_batches", config.test_batches if config.test else -1,
                                          facts.data.test, "test.jsonl")):
        if batches > 0 and examples and batches * config.batch_size > examples:
            usable = examples // config.batch_size
            found.append(ConfigWarning(
                key, f"{key} {batches:,} * batch_size {config.batch_size} = {batches * config.batch_size:,} "
                f"examples, but {name} has {examples:,}: each evaluation uses {_plural(usable, 'full batch')} "
                f"(set {key} to -1 to say \"all\")"))
    return found


def _schedule_warnings(config: RunConfig) -> list[ConfigWarning]:
    schedule = config.lr_schedule
    if schedule is None:
        return []
    found: list[ConfigWarning] = []
    init = schedule.arguments[0]
    if abs(init - config.learning_rate) > 1e-12 * max(init, config.learning_rate):
        found.append(ConfigWarning("learning_rate", f"learning_rate ({config.learning_rate:g}) is not used: the "
                                   f"{schedule.name} schedule starts at its first argument ({init:g})"))
    updates = config.iters // config.grad_accumulation_steps  # the schedule counts optimizer updates
    if schedule.warmup >= updates:
        found.append(ConfigWarning("lr_schedule.warmup", f"warmup ({schedule.warmup:,}) is not shorter than the "
                                   f"{updates:,} optimizer updates: the schedule itself never starts"))
    names, _ = SCHEDULE_ARGUMENTS[schedule.name]
    arguments = dict(zip(names, schedule.arguments, strict=False))
    steps = arguments.get("decay_steps", arguments.get("steps"))
    after_warmup = updates - schedule.warmup
    if steps is not None and after_warmup > 0 and steps < after_warmup * 0.9:
        end = arguments.get("end", 0.0)
        found.append(ConfigWarning(
            "lr_schedule.arguments", f"{schedule.name} reaches its end value ({end:g}) after {int(steps):,} steps, "
            f"but the run makes {after_warmup:,} optimizer updates after warm-up: the rest trains at {end:g}"))
    return found


def _model_warnings(config: RunConfig, facts: ConfigFacts) -> list[ConfigWarning]:
    found: list[ConfigWarning] = []
    model = facts.model
    if model.layers is not None and config.num_layers > model.layers:
        found.append(ConfigWarning(
            "num_layers", f"num_layers ({config.num_layers}) is more than the model's {model.layers} layers: "
            f"loraboard trains all {model.layers} (mlx_lm lora itself would refuse; -1 means all)"))
    if model.dtype in ("bfloat16", "float16") and facts.cpu_only:
        found.append(ConfigWarning(
            "model", f"the model's weights are {model.dtype} and this machine trains on the CPU, where {model.dtype} "
            "has no fast matrix products: the worker converts them to float32, which needs about twice the memory "
            "of the weights on disk"))
    if config.trust_remote_code:
        found.append(ConfigWarning(
            "trust_remote_code", "trust_remote_code lets the model's repository run its own Python code on this "
            "machine when the model loads: leave it off unless you trust the model's source"))
    if model.max_positions is not None and config.max_seq_length > model.max_positions:
        found.append(ConfigWarning(
            "max_seq_length", f"max_seq_length ({config.max_seq_length:,}) is longer than the model's "
            f"{model.max_positions:,} positions (max_position_embeddings): longer examples may train poorly"))
    return found


def _training_warnings(config: RunConfig, facts: ConfigFacts) -> list[ConfigWarning]:
    found: list[ConfigWarning] = []
    custom_keys = config.chat_feature or config.prompt_feature or config.text_feature
    if config.mask_prompt and facts.data.train_format == "text" and not custom_keys:
        found.append(ConfigWarning("mask_prompt", "mask_prompt needs chat or prompt/completion examples, but "
                                   "train.jsonl holds plain text: mlx-lm will refuse to train"))
    lora_changed = config.lora_parameters.model_dump(exclude_none=True) != {"rank": 8, "scale": 20.0, "dropout": 0.0}
    if config.fine_tune_type == "full" and lora_changed:
        found.append(ConfigWarning("lora_parameters.rank", "lora_parameters are not used by full fine-tuning, which "
                                   f"trains every weight of the top {config.num_layers} layers (much more memory)"))
    if config.grad_accumulation_steps > 1 and config.save_every % config.grad_accumulation_steps:
        found.append(ConfigWarning(
            "grad_accumulation_steps", f"save_every ({config.save_every}) is not a multiple of "
            f"grad_accumulation_steps ({config.grad_accumulation_steps}): checkpoints fall between optimizer "
            "updates, and a run continued from one loses the gradients accumulated so far"))
    return found


def config_warnings(config: RunConfig, facts: ConfigFacts) -> list[ConfigWarning]:
    """Everything worth a second look before starting, most important first."""
    return (_model_warnings(config, facts) + _evaluation_warnings(config, facts) + _schedule_warnings(config)
            + _training_warnings(config, facts))


# Reading the facts --------------------------------------------------------------------


def trains_on_cpu() -> bool:
    """Whether MLX will train on the CPU here: Linux without MLX's CUDA backend installed (as worker/blas.py)."""
    if not sys.platform.startswith("linux"):
        return False
    for name in CUDA_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
            return False
        except importlib.metadata.PackageNotFoundError:
            continue
    return True


def read_model_facts(model: str, settings: Settings) -> ModelFacts:
    """Layers, stored dtype and positions of a model (app.catalog.info: config.json and safetensors headers);
    nothing when it cannot be read here (e.g. a hub id not in the local cache)."""
    try:
        info = model_info(model, settings)
    except ModelInfoError:
        return ModelFacts()
    text = info.config.get("text_config") if isinstance(info.config.get("text_config"), dict) else info.config
    positions = text.get("max_position_embeddings") or info.config.get("max_position_embeddings")
    dtype = info.dtype if info.dtype != "unknown" else None
    return ModelFacts(len(info.layers) or None, dtype, positions if isinstance(positions, int) else None)


def _first_format(path: Path) -> str | None:
    try:
        with path.open() as handle:
            sample = json_text.loads(handle.readline())
    except (OSError, ValueError):
        return None
    if not isinstance(sample, dict):
        return None
    if "messages" in sample:
        return "chat"
    if "prompt" in sample and "completion" in sample:
        return "completions"
    return "text" if "text" in sample else None


def read_data_facts(data: Path) -> DataFacts:
    if not data.is_dir():
        return DataFacts()
    train = data / "train.jsonl"
    return DataFacts(count_examples(train), count_examples(data / "valid.jsonl"),
                     count_examples(data / "test.jsonl"), _first_format(train) if train.is_file() else None)


def gather_facts(config: RunConfig, settings: Settings) -> ConfigFacts:
    """What the warnings need to know about a resolved config's model, data and this machine."""
    return ConfigFacts(read_model_facts(config.model, settings), read_data_facts(Path(config.data)), trains_on_cpu())
