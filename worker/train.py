"""A training job: load the run's model and data, train with mlx_lm.tuner.train, report, stop cleanly.

The training schedule around mlx-lm's loop lives in `StepHooks`, which wraps the
batch iterator: when the loop asks for batch k+1, step k is finished, so the
hooks validate, save and check for a stop request on exactly the weights after
k steps. A checkpoint named k therefore holds the weights whose validation loss
is recorded at iteration k. Ending the iterator ends mlx-lm's loop normally,
which then writes the final adapter.

Files are written through worker/durable.py (temporary file, fsync, rename), the
optimizer state before the weights, and the checkpoint's database row only after
both: a listed checkpoint is complete and resumable. Each train report carries the
worker's memory (worker/memory.py), held against the run's memory limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner import trainer
from mlx_lm.tuner.datasets import CacheDataset
from mlx_lm.tuner.utils import build_schedule

from app.contract.paths import remove_temp_files
from app.contract.policy import best_checkpoint, divergence, early_stop_decision
from app.contract.run_config import LORABOARD_KEYS, RunConfig
from app.contract.status import RunStatus
from worker.batch_padding import padded_batches
from worker.distributed import agree, backend_of, gather, group_record, rank_and_size, share_from_rank0
from worker.durable import publish, temp_path, write_safetensors, write_text
from worker.hardware import record_hardware
from worker.length_grouping import UsefulTokens, counted, grouped
from worker.loading import attach_adapters, count_parameters, load_data, load_model
from worker.memory import MemoryGuard
from worker.mixed_lora import mixed_applies, precision_label, use_mixed_lora
from worker.reporting import ReportWriter
from worker.resume import ResumePoint, optimizer_name, restore, save_optimizer
from worker.throughput import StepClock
from worker.token_weighting import TokenMeanTrainLoss, training_loss

HEARTBEAT_EVERY_S = 2.0


class SilentUI:
    """Stands in for mlx-lm's console UI: loraboard reports through the database."""

    def __init__(self, total_iters: int, rank: int = 0) -> None:
        self.total_iters = total_iters

    def __enter__(self) -> SilentUI:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self) -> None:
        return None

    def report_train(self, *args: object) -> None:
        return None

    def report_val(self, *args: object) -> None:
        return None

    def report_save(self, *args: object) -> None:
        return None


class TrainingDiverged(RuntimeError):
    """A loss that is not a finite number: the run fails with advice, keeping its checkpoints."""


class DatabaseCallback(trainer.TrainingCallback):
    """Writes every train report to the database (through the writer's queue), with the worker's memory."""

    def __init__(self, writer: ReportWriter, start: ResumePoint | None = None, guard: MemoryGuard | None = None,
                 useful: UsefulTokens | None = None) -> None:
        self.writer = writer
        self.start = start or ResumePoint(0, 0)
        self.guard = guard or MemoryGuard(None, "warn")
        self.useful = useful  # the training batches' useful-token count, recorded with each report

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        info = dict(train_info)  # a continued run counts on from where its checkpoint was
        info["iteration"] += self.start.iteration
        info["trained_tokens"] += self.start.trained_tokens
        problem = divergence("train", float(info["train_loss"]), info["iteration"], info.get("learning_rate"))
        if problem:  # a NaN cannot be stored or plotted; the checkpoints so far stay usable
            raise TrainingDiverged(problem)
        reading = self.guard.read(info["iteration"])
        info.update(rss_bytes=reading.rss_bytes, footprint_bytes=reading.footprint_bytes,
                    swap_used_bytes=reading.swap_used_bytes)
        if self.useful is not None:
            info["useful_token_share"] = self.useful.share
        self.writer.train_report(info)

    def on_val_loss_report(self, val_info: dict[str, Any]) -> None:
        # loraboard validates in StepHooks instead (aligned with checkpoints).
        return None


def save_adapter(model: nn.Module, path: Path, what: str) -> None:
    """Write the trainable weights durably (temporary file, fsync, rename)."""
    write_safetensors(dict(tree_flatten(model.trainable_parameters())), path, what)


def checkpoint_name(iteration: int) -> str:
    return f"{iteration:07d}_adapters.safetensors"


class StepHooks:
    """Validation, checkpoints, heartbeats and stop requests between mlx-lm's steps."""

    def __init__(
        self,
        model: nn.Module,
        config: RunConfig,
        run_dir: Path,
        writer: ReportWriter,
        val_set: CacheDataset | None,
        optimizer: optim.Optimizer,
        start_iteration: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.start_iteration = start_iteration
        self.config = config
        self.run_dir = run_dir
        self.writer = writer
        self.val_set = grouped(val_set, config.batch_grouping)  # batched as training is: length_grouping.py
        self.steps_done = 0
        self.validated: set[int] = set()
        self.saved: set[int] = set()
        self.ended_by_stop = False
        self.val_history: list[tuple[int, float]] = []
        self.early_stop_reason: str | None = None
        self.memory = MemoryGuard(config.memory_limit_gb, config.memory_limit_action)  # its stop_reason ends too
        self._last_beat = time.monotonic()
        self.rank, self.world_size = rank_and_size()
        self.agreed = [0, 0, 0]  # stop requested, early stop, memory stop: summed over the ranks
        self.rank_tokens = 0  # this rank's own tokens and seconds in mlx-lm's steps
        self.rank_seconds = 0.0
        self.useful = UsefulTokens()  # this rank's training batches: their rows' tokens against positions computed

    @property
    def stop_requested(self) -> bool:
        return self.writer.stop_event.is_set()

    def validate(self, iteration: int, full: bool = False) -> None:
        """Validation loss of the current weights (`full`: the whole validation set)."""
        if self.val_set is None or iteration in self.validated:
            return
        tic = time.perf_counter()
        batches = -1 if full else self.config.val_batches
        val_loss = trainer.evaluate(
            model=self.model,
            dataset=self.val_set,
            batch_size=self.config.batch_size,
            num_batches=batches,
            max_seq_length=self.config.max_seq_length,
        )
        self.model.train()
        problem = divergence("validation", float(val_loss), iteration, None)
        if problem:
            raise TrainingDiverged(problem)
        self.validated.add(iteration)
        self.writer.val_report(iteration, float(val_loss), time.perf_counter() - tic, batches)
        best = min((loss for _, loss in self.val_history), default=None)
        self.val_history.append((iteration, float(val_loss)))
        if best is None or val_loss <= best:  # a new best always has a file (ties: the later one)
            self.save_checkpoint(iteration)
        rule = self.writer.early_stopping  # may have been switched or re-tuned from the run page
        if rule is not None and self.early_stop_reason is None:
            decision = early_stop_decision(self.val_history, patience=rule.patience, min_delta=rule.min_delta)
            if decision.stop:
                self.early_stop_reason = decision.reason(iteration)

    def save_checkpoint(self, iteration: int) -> None:
        if iteration in self.saved or iteration == self.start_iteration:
            return  # the starting weights are the base model's or the resumed checkpoint's
        if self.rank != 0:  # every rank holds the same weights; rank 0 alone writes
            self.saved.add(iteration)
            return
        path = self.run_dir / checkpoint_name(iteration)
        # optimizer state first: a checkpoint whose weights are in place can always be continued
        save_optimizer(self.optimizer, self.run_dir / optimizer_name(iteration), f"checkpoint {iteration}'s "
                       "optimizer state")
        save_adapter(self.model, path, f"checkpoint {iteration}'s adapter weights")
        self.saved.add(iteration)
        self.writer.checkpoint(iteration, path)  # listed only now that both files are complete

    @property
    def iteration(self) -> int:
        """Steps done, counted from the start of the first run of a resumed chain."""
        return self.start_iteration + self.steps_done

    def between_steps(self, steps_done: int) -> None:
        self.steps_done = steps_done
        iteration = self.iteration
        checkpoint_due = steps_done > 0 and iteration % self.config.save_every == 0
        full = checkpoint_due and self.config.full_val_at_checkpoints
        if iteration % self.config.steps_per_eval == 0 or steps_done == 0 or full:
            self.validate(iteration, full)
        if checkpoint_due:
            self.save_checkpoint(iteration)
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_EVERY_S:
            self._last_beat = now
            self.writer.heartbeat()

    def iterate_batches(self, **kwargs: Any) -> Iterator[Any]:
        """mlx-lm's batch iterator, with the hooks run before each step. With several ranks, whether to stop
        is agreed by all of them at every step (a rank that left alone would hang the others' collectives).
        The dataset goes to mlx-lm grouped as the run's batch_grouping asks; training batches are counted in
        `self.useful`."""
        steps_done = 0
        stepped_at: float | None = None
        steps = self.config.iters - self.start_iteration
        kwargs = {**kwargs, "dataset": grouped(kwargs["dataset"], self.config.batch_grouping)}
        batches = padded_batches(trainer.iterate_batches(**kwargs), kwargs, self.config.batch_padding, steps,
                                 self.config.batch_grouping)
        if kwargs.get("loop"):
            batches = counted(batches, self.useful)
        for batch in batches:
            if kwargs.get("loop"):
                if stepped_at is not None:
                    self.rank_seconds += time.perf_counter() - stepped_at
                self.between_steps(steps_done)
                self.agreed = agree([int(self.stop_requested), int(bool(self.early_stop_reason)),
                                     int(bool(self.memory.stop_reason))], backend_of(self.config))
                if any(self.agreed):
                    self.ended_by_stop = True
                    return
                steps_done += 1
                if self.world_size > 1:  # per-rank throughput: a group's only (no host copy in a plain run)
                    lengths = np.array(batch[1])
                    self.rank_tokens += int((lengths[:, 1] - lengths[:, 0]).sum())
                    stepped_at = time.perf_counter()
            yield batch

    def per_rank_tokens_per_second(self) -> list[float]:
        """Each rank's own tokens per second in its training steps (rank order)."""
        mine = self.rank_tokens / self.rank_seconds if self.rank_seconds else 0.0
        return [round(v, 2) for v in gather(mine, backend_of(self.config))]


def write_adapter_config(run_dir: Path, config: RunConfig, num_layers: int) -> None:
    """adapter_config.json as mlx_lm reads it (generate, fuse, --test), written atomically."""
    data = config.model_dump(mode="json", exclude=set(LORABOARD_KEYS))
    data["num_layers"] = num_layers
    data["lora_precision"] = config.lora_precision  # loraboard's; mlx_lm reads the keys it knows and no others
    write_text(json.dumps(data, indent=2, sort_keys=True), run_dir / "adapter_config.json")


def make_optimizer(config: RunConfig) -> optim.Optimizer:
    learning_rate: Any = config.learning_rate
    if config.lr_schedule is not None:
        learning_rate = build_schedule(config.lr_schedule.model_dump())  # as mlx_lm: arguments[0] is the initial lr
    classes: dict[str, type[optim.Optimizer]] = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "sgd": optim.SGD,
        "adafactor": optim.Adafactor,
        "muon": optim.Muon,
    }
    extra = config.optimizer_config.arguments_for(config.optimizer)  # as mlx_lm: optimizer_config[optimizer]
    return classes[config.optimizer](learning_rate=learning_rate, **extra)


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    status: RunStatus
    reason: str | None
    test_loss: float | None = None
    clock: StepClock | None = None  # the training steps' positions and seconds


def tested_adapter(hooks: StepHooks, run_dir: Path, steps: int) -> Path:
    """The adapter `test` measures: the best checkpoint by validation loss (ties: the later), else the final one."""
    rows = [SimpleNamespace(iteration=it, val_loss=loss) for it, loss in hooks.val_history if it in hooks.saved]
    best = best_checkpoint(rows)
    return run_dir / checkpoint_name(best.iteration if best is not None else steps)


def evaluate_test(model: nn.Module, config: RunConfig, test_set: CacheDataset, adapter: Path,
                  writer: ReportWriter) -> float:
    """Loss of `adapter` on the test set (test_batches batches), with heartbeats while it runs."""
    if rank_and_size()[0] == 0 and adapter.exists():
        model.load_weights(str(adapter), strict=False)
    share_from_rank0(model, backend_of(config))  # the other ranks take rank 0's weights
    last_beat = [time.monotonic()]

    def progress() -> None:
        if time.monotonic() - last_beat[0] >= HEARTBEAT_EVERY_S:
            last_beat[0] = time.monotonic()
            writer.heartbeat()

    loss = trainer.evaluate(
        model=model,
        dataset=test_set,
        batch_size=config.batch_size,
        num_batches=config.test_batches,
        max_seq_length=config.max_seq_length,
        progress_callback=progress,
    )
    return float(loss)


def train_run(
    config: RunConfig, run_dir: Path, writer: ReportWriter, resume: tuple[Path, Path, ResumePoint] | None = None
) -> TrainOutcome:
    """Train until done, stopped on request, or stopped early; the final adapter is always saved.

    resume: (adapter file, optimizer file, where they were saved) of the checkpoint to continue.
    """
    mx.random.seed(config.seed)
    np.random.seed(config.seed)
    model, tokenizer, train_dtype = load_model(config)
    datasets = load_data(config, tokenizer)
    num_layers = attach_adapters(model, config)
    if mixed_applies(config.lora_precision, config.fine_tune_type, train_dtype):
        use_mixed_lora(model)
    train_dtype = precision_label(config.lora_precision, config.fine_tune_type, train_dtype)
    trainable, total = count_parameters(model)
    rank, size = rank_and_size()
    group = group_record(config, size)
    if rank == 0:  # of several processes, rank 0 alone writes files
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(run_dir)  # what an earlier worker of this run left when it was killed mid-write
        write_adapter_config(run_dir, config, num_layers)
    writer.mark_running(trainable, total, train_dtype)
    record_hardware(writer, group)

    optimizer = make_optimizer(config)
    start = ResumePoint(0, 0)
    if resume is not None:
        adapter_file, optimizer_file, start = resume
        restore(model, optimizer, adapter_file, optimizer_file if optimizer_file.exists() else None, start.iteration)
    hooks = StepHooks(model, config, run_dir, writer, datasets.valid, optimizer, start.iteration)
    final_adapter = run_dir / "adapters.safetensors"
    args = trainer.TrainingArgs(
        batch_size=config.batch_size,
        iters=config.iters - start.iteration,
        val_batches=config.val_batches,
        steps_per_report=config.steps_per_report,
        steps_per_eval=config.iters + 1,  # validation runs in StepHooks
        steps_per_save=config.iters + 1,  # checkpoints too
        max_seq_length=config.max_seq_length,
        adapter_file=str(temp_path(final_adapter)),  # mlx-lm writes it in place: published below
        grad_checkpoint=config.grad_checkpoint,
        grad_accumulation_steps=config.grad_accumulation_steps,
        clear_cache_threshold=config.clear_cache_threshold,
    )
    trainer.TrainUI = SilentUI  # type: ignore[misc,assignment]
    clock = StepClock()  # length grouping trains with every token weighing the same: worker/token_weighting.py
    loss, per_batch = training_loss(datasets.train, config.batch_grouping, config.batch_size, config.max_seq_length,
                                    size)
    trainer.train(
        model=model,
        optimizer=optimizer,
        train_dataset=datasets.train,
        val_dataset=None,
        args=args,
        loss=loss,
        iterate_batches=lambda **kwargs: clock.timed(hooks.iterate_batches(**kwargs)),
        training_callback=TokenMeanTrainLoss(DatabaseCallback(writer, start, hooks.memory, hooks.useful),
                                             per_batch, size),
    )
    if rank == 0:  # mlx-lm writes the final adapter on rank 0 only
        publish(temp_path(final_adapter), final_adapter)
    if group is not None:
        group["per_rank_tokens_per_second"] = hooks.per_rank_tokens_per_second()
        record_hardware(writer, group)
    steps = hooks.iteration if hooks.ended_by_stop else config.iters
    asked_to_stop = False
    if hooks.early_stop_reason:
        status, reason = RunStatus.early_stopped, hooks.early_stop_reason
    elif hooks.memory.stop_reason:
        status, reason = RunStatus.stopped, hooks.memory.stop_reason
    elif hooks.agreed[2] and not hooks.agreed[0]:
        status, reason = RunStatus.stopped, "another rank of the group crossed the memory limit"
    elif hooks.ended_by_stop:
        status, reason = RunStatus.stopped, f"stopped on request at iteration {steps:,}"
        asked_to_stop = True
    else:
        hooks.validate(steps, full=config.full_val_at_checkpoints)
        status, reason = RunStatus.completed, None
    hooks.save_checkpoint(steps)
    test_loss = None
    if datasets.test is not None:
        test_loss = evaluate_test(model, config, datasets.test, tested_adapter(hooks, run_dir, steps), writer)
        # recorded now, keeping the status the run has meanwhile ("stopping" after a stop request)
        writer.set_status(RunStatus.stopping if asked_to_stop else RunStatus.running, test_loss=test_loss)
    return TrainOutcome(steps, status, reason, test_loss, clock)
