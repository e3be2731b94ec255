"""The `evaluate` job (worker/job.py): loss, perplexity and task accuracy of a run's checkpoints on one split.

The model and tokenizer are loaded once and the split read once. The base model is measured first, on the
weights as loaded; then the adapters are attached once and each checkpoint only swaps their weights in. The loss
is mlx-lm's (`mlx_lm.tuner.trainer.evaluate`: the run's batch size and max_seq_length, batches of similar length,
loss summed over counted tokens), with numpy's generator seeded with the run's seed before each model, so every
model sees the same batches and a checkpoint's figure equals `python -m mlx_lm lora --test` on it. With a task,
greedy answers to the split's first prompts are generated in batches and scored (worker/task_answers.py).

Each model's rows (its Evaluation and its EvaluationExample rows) are written in one transaction as soon as it is
done, so a job that fails or is cancelled keeps the models it finished. A failure while measuring a checkpoint
ends the job with a message naming that checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import default_loss, iterate_batches

from app.contract.answers import task_result
from app.contract.confinement import confine_file
from app.contract.kinds import EvaluateParams
from app.contract.paths import data_roots, run_file_roots
from app.contract.run_config import FEATURE_KEYS, RunConfig
from worker.job import JobContext, JobInputError, JobStopped
from worker.reporting import now_text, write_until
from worker.task_answers import References, TaskExample, decode, generate_answers, read_references, task_examples
from worker.token_stats import DatasetFileError, read_split

BASE = 0


class CheckpointFailed(JobInputError):
    """Measuring one checkpoint went wrong: the message names the checkpoint and its file."""


def checkpoint_file(adapter_dir: Path, iteration: int) -> Path:
    return adapter_dir / f"{iteration:07d}_adapters.safetensors"


def model_label(iteration: int, position: int, count: int) -> str:
    """'base model (1 of 4)' or 'checkpoint 200 (2 of 4)'."""
    name = "base model" if iteration == BASE else f"checkpoint {iteration:,}"
    return f"{name} ({position} of {count})"


def loss_batches(examples: int, batch_size: int, batches: int) -> int:
    """Batches the loss is measured on: every full batch (-1), or at most `batches`."""
    full = examples // batch_size
    return full if batches == -1 else min(full, batches)


@dataclass(frozen=True)
class Loss:
    loss: float
    tokens: int
    batches: int


def measure_loss(model: nn.Module, dataset: CacheDataset, config: RunConfig, batches: int,
                 on_batch: Callable[[int], None]) -> Loss:
    """mlx_lm.tuner.trainer.evaluate on `batches` batches (seeded with the run's seed), with a call per batch."""
    model.eval()
    np.random.seed(config.seed)
    total_loss, total_tokens = mx.array(0.0), mx.array(0)
    done = 0
    for batch in iterate_batches(dataset=dataset, batch_size=config.batch_size, max_seq_length=config.max_seq_length):
        if done >= batches:
            break
        losses, tokens = default_loss(model, *batch)
        total_loss += losses * tokens
        total_tokens += tokens
        mx.eval(total_loss, total_tokens)
        done += 1
        on_batch(done)
    tokens = int(total_tokens.item())
    if tokens == 0:
        raise JobInputError("no token counted for the loss: every example is empty or masked")
    return Loss(float((total_loss / tokens).item()), tokens, done)


@dataclass
class Measurement:
    """One model's figures on the split, and its scored answers (rows of EvaluationExample)."""

    iteration: int
    loss: Loss
    task: dict[str, Any] | None = None
    # (line, prompt, reference, output, score, outcome_json): the EvaluationExample columns after the split
    examples: list[tuple[int, str, str, str, float, str]] = field(default_factory=list)


def write_measurement(db_path: Path, job_id: int, run_id: int, split: str, mask_prompt: bool,
                      measured: Measurement, limit_s: float) -> None:
    """The model's Evaluation row and its EvaluationExample rows, in one transaction; tried again while the
    database refuses writes, for up to limit_s (Settings.db_unwritable_limit_s), so a short spell loses nothing."""

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO evaluation (run_id, job_id, iteration, split, batches, loss, perplexity, tokens,"
                " mask_prompt, task_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, job_id, measured.iteration, split, measured.loss.batches, measured.loss.loss,
                 math.exp(measured.loss.loss), measured.loss.tokens, int(mask_prompt),
                 json.dumps(measured.task) if measured.task is not None else None, now_text()))
            conn.executemany(
                "INSERT INTO evaluationexample (run_id, job_id, iteration, split, line, prompt, reference, output,"
                " score, outcome_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, job_id, measured.iteration, split, *row) for row in measured.examples])
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    write_until(db_path, write, limit_s)


def load_split(path: Path, tokenizer: Any, config: RunConfig,
               roots: list[Path] | None = None) -> tuple[list[dict[str, Any]], CacheDataset]:
    """The split's examples, and mlx-lm's dataset of them as the trainer (and `mlx_lm lora --test`) builds it;
    the file read within `roots` (the data folders; None: its own folder)."""
    if not path.is_file() and not path.is_symlink():
        raise JobInputError(f"{path} does not exist")
    examples = read_split(path, roots)
    if not examples:
        raise DatasetFileError(f"{path} is empty")
    features = {key: getattr(config, key) for key in FEATURE_KEYS if getattr(config, key) is not None}
    try:
        dataset = create_dataset(examples, tokenizer, SimpleNamespace(mask_prompt=config.mask_prompt, **features))
    except ValueError as exc:
        raise DatasetFileError(f"{path.name} line 1: {exc.args[0].splitlines()[0]}") from None
    return examples, CacheDataset(dataset)


@dataclass
class Evaluator:
    """Measures one model after another on the same split and writes each as soon as it is done."""

    ctx: JobContext[EvaluateParams]
    config: RunConfig
    model: nn.Module
    tokenizer: Any
    dataset: CacheDataset
    batches: int
    prompts: list[TaskExample]
    references: References  # read once: every model is scored the same way
    count: int  # models to measure
    result: dict[str, Any]

    def measure(self, iteration: int, position: int) -> Measurement:
        label = model_label(iteration, position, self.count)
        split = self.ctx.params.split

        def on_batch(done: int) -> None:
            self.ctx.advance()
            self.ctx.detail = f"{label}: {split} loss, batch {done} of {self.batches}"
            self.ctx.check_stop(self.partial())

        self.ctx.detail = f"{label}: {split} loss, batch 0 of {self.batches}"
        measured = Measurement(iteration, measure_loss(self.model, self.dataset, self.config, self.batches, on_batch))
        task = self.ctx.params.task
        if task is not None and self.prompts:
            self.answer(measured, label, task.max_tokens, task.batch_size)
        return measured

    def answer(self, measured: Measurement, label: str, max_tokens: int, batch_size: int) -> None:
        total = len(self.prompts)
        finished = [0]
        self.ctx.detail = f"{label}: answers, 0 of {total}"

        def on_answer() -> None:
            finished[0] += 1
            self.ctx.advance()
            self.ctx.detail = f"{label}: answers, {finished[0]} of {total}"

        outputs = generate_answers(self.model, self.tokenizer, [p.tokens for p in self.prompts], max_tokens,
                                   batch_size, on_answer, lambda: self.ctx.check_stop(self.partial()))
        outcomes = []
        for example, tokens in zip(self.prompts, outputs, strict=True):
            output = decode(self.tokenizer, tokens)
            outcome = self.references.score(example.reference, output)
            outcomes.append(outcome)
            measured.examples.append((example.line, example.prompt, example.reference, output, outcome.score,
                                      json.dumps(outcome.as_json())))
        measured.task = task_result(outcomes, self.references.kinds, self.references.format)

    def record(self, measured: Measurement) -> None:
        params = self.ctx.params
        write_measurement(self.ctx.settings.database_path, self.ctx.job_id, params.run_id, params.split,
                          self.config.mask_prompt, measured, self.ctx.settings.db_unwritable_limit_s)
        key = str(measured.iteration)
        self.result["evaluated"].append(measured.iteration)
        self.result["losses"][key] = measured.loss.loss
        if measured.task is not None:
            self.result["scores"][key] = measured.task["score"]

    def partial(self) -> dict[str, Any] | None:
        """What a cancel keeps: the models measured so far (None when none was)."""
        return dict(self.result) if self.result["evaluated"] else None


def run(ctx: JobContext[EvaluateParams]) -> dict[str, Any]:
    params = ctx.params
    config = RunConfig.model_validate(params.config)
    adapter_dir = Path(params.adapter_dir)
    models = ([BASE] if params.include_base else []) + params.iterations
    ctx.detail = "loading the model"
    ctx.check_stop()
    from worker.loading import attach_adapters, load_model

    started = time.perf_counter()
    model, tokenizer, _dtype = load_model(config, ctx.settings)
    load_s = time.perf_counter() - started
    ctx.detail = f"reading {params.split}.jsonl"
    examples, dataset = load_split(Path(params.data) / f"{params.split}.jsonl", tokenizer, config,
                                   data_roots(ctx.settings))
    batches = loss_batches(len(dataset), config.batch_size, params.batches)
    if batches < 1:
        raise JobInputError(f"{params.split}.jsonl has {len(dataset)} examples, fewer than one batch of "
                            f"{config.batch_size}")
    prompts = task_examples(examples, tokenizer, config, params.task.max_examples) if params.task else []
    ctx.set_total(len(models) * (batches + len(prompts)), "steps")
    result: dict[str, Any] = {"split": params.split, "evaluated": [], "losses": {}, "scores": {},
                              "batches": batches, "task_examples": len(prompts), "load_s": round(load_s, 3),
                              "seconds": {}}
    references = read_references([p.reference for p in prompts])
    evaluator = Evaluator(ctx, config, model, tokenizer, dataset, batches, prompts, references, len(models), result)
    attached = False
    for position, iteration in enumerate(models, start=1):
        ctx.check_stop(evaluator.partial())
        tic = time.perf_counter()
        if iteration == BASE:
            measured = evaluator.measure(BASE, position)
        else:
            path = checkpoint_file(adapter_dir, iteration)
            try:
                if not attached:
                    attach_adapters(model, config)
                    attached = True
                model.load_weights(str(confine_file(path, run_file_roots(ctx.settings))), strict=False)
                measured = evaluator.measure(iteration, position)
            except (JobStopped, JobInputError):
                raise
            except Exception as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                raise CheckpointFailed(f"checkpoint {iteration:,} ({path.name}): {type(exc).__name__}: "
                                       f"{text}") from exc
        evaluator.record(measured)
        result["seconds"][str(iteration)] = round(time.perf_counter() - tic, 3)
    ctx.detail = ""
    if not result["scores"]:
        del result["scores"]
    return result
