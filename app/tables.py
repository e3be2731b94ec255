"""Database tables. Shared by the app (reads, run creation, stop requests) and workers (reports)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index
from sqlmodel import Field, SQLModel

from app.contract.status import TERMINAL, RunStatus

_STATUS_LIST = ", ".join(f"'{s.value}'" for s in RunStatus)
# Ids people see (pages, links, the API, exported reports) are never handed out again once deleted: SQLite's
# AUTOINCREMENT (app/id_upgrade.py rebuilds a table an older loraboard made without it).
NEVER_REUSED: dict[str, Any] = {"sqlite_autoincrement": True}


__all__ = ["TERMINAL", "AllowedFolder", "Checkpoint", "Evaluation", "EvaluationExample", "Generation",
           "GenerationColumn", "GenerationToken", "Job", "PromptSet", "RegisteredModel", "Run", "RunStatus",
           "TrainReport", "ValReport", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Run(SQLModel, table=True):
    __table_args__ = (CheckConstraint(f"status IN ({_STATUS_LIST})", name="run_status"), NEVER_REUSED)

    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    status: str = Field(default=RunStatus.queued.value, index=True)
    config_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stop_reason: str | None = None
    error: str | None = None  # one readable line
    traceback: str | None = None
    pid: int | None = None
    heartbeat_at: datetime | None = None
    stop_requested: bool = False
    iteration: int = 0  # last iteration reported
    total_iters: int = 0
    backend: str | None = None  # e.g. "CPU + OpenBLAS (scipy-openblas32), 1 thread"
    train_dtype: str | None = None  # e.g. "float32 (weights stored as bfloat16)"
    trainable_params: int | None = None
    total_params: int | None = None
    hardware_json: str | None = None  # the training machine: cpu, gpu, memory, os, mlx versions (worker/hardware.py)
    log_path: str | None = None
    early_stopping_json: str | None = None  # the live rule (JSON of EarlyStopping); re-tunable while training
    deploy_best_on_end: bool = False  # "Stop and keep best": the best checkpoint becomes the deployment
    test_loss: float | None = None  # loss on test.jsonl after training (config "test"), of the best or final adapter
    # tokens of the training batches' rows against the positions computed (rows times width), 0-1; None: not counted
    useful_token_share: float | None = None
    # the training steps' speed, recorded when the run ends (worker/throughput.py): positions computed (rows times
    # width) in the steps timed, the seconds inside those steps, and their ratio
    train_positions: int | None = None
    train_seconds: float | None = None
    positions_per_s: float | None = None
    # the pre-start estimate, recorded when the run is created (app/runs/duration/): wall seconds, useful-token share,
    # and what the time was reckoned by ("run 12's speed: 1,850 positions/s")
    estimated_wall_s: float | None = None
    estimated_useful_share: float | None = None
    estimate_basis: str | None = None
    notes: str = ""  # free text from the runs list (what was tried, why)
    queue_position: int | None = None  # order among queued runs (app/runs/store/queue.py); None: behind, oldest first
    waiting_reason: str | None = None  # why a queued run has not started, e.g. "waits for run 3 (training) to finish"
    waiting_for: str | None = None  # what it waits for: "run 3" or "job 12" (the one click that frees it acts on it)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)

    @property
    def is_terminal(self) -> bool:
        return RunStatus(self.status) in TERMINAL


class TrainReport(SQLModel, table=True):
    __table_args__ = (Index("ix_train_run_iter", "run_id", "iteration"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    iteration: int
    train_loss: float
    learning_rate: float
    iterations_per_second: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory: float
    recorded_at: datetime = Field(default_factory=utcnow)
    rss_bytes: int | None = None  # the worker process's resident memory when it reported
    footprint_bytes: int | None = None  # its physical footprint (macOS, where psutil gives it)
    swap_used_bytes: int | None = None  # the system's swap in use


class ValReport(SQLModel, table=True):
    __table_args__ = (Index("ix_val_run_iter", "run_id", "iteration"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    iteration: int
    val_loss: float
    val_time: float = 0.0
    batches: int = 0  # validation batches evaluated; -1: the whole validation set
    recorded_at: datetime = Field(default_factory=utcnow)


class Checkpoint(SQLModel, table=True):
    __table_args__ = (Index("ix_ckpt_run_iter", "run_id", "iteration", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    iteration: int  # the weights after this many optimizer steps
    filename: str
    size_bytes: int
    sha256: str
    val_loss: float | None = None  # measured on exactly these weights, when it was
    val_full: bool = False  # measured on the whole validation set
    train_loss: float | None = None
    trained_tokens: int | None = None
    is_deployment: bool = False
    note: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    """A worker task that is not a training run (`python -m worker job --job-id N`): token statistics, evaluation,
    generation, fuse, serve... Its kind (app/contract/kinds.py) says what params_json and result_json hold.

    status: the runs' statuses (queued, starting, running, stopping, then completed, stopped, failed or
    interrupted). A queued job that waits for memory says why in waiting_reason.
    """

    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="job_status"),
        Index("ix_job_kind_key", "kind", "key"),
        NEVER_REUSED,
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # e.g. "token_stats"
    key: str = ""  # what makes two jobs of a kind the same work (reuse a result while its inputs are unchanged)
    params_json: str = "{}"
    status: str = Field(default=RunStatus.queued.value, index=True)
    waiting_reason: str | None = None  # why a queued job has not started, e.g. "waits for run 3 (training)..."
    waiting_for: str | None = None  # what it waits for: "run 3" or "job 12"
    done: int = 0  # progress: done of total units
    total: int = 0
    unit: str = ""  # e.g. "examples"
    detail: str | None = None  # where the work is, in words: "checkpoint 200 (2 of 4): test loss, batch 3 of 37"
    heartbeat_at: datetime | None = None
    pid: int | None = None
    result_json: str | None = None
    error: str | None = None  # one readable line
    traceback: str | None = None
    log_path: str | None = None
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="CASCADE", index=True)
    iteration: int | None = None  # the checkpoint it concerns, when it concerns one
    allow_while_training: bool = False  # the user lets a memory-needing job run beside training
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def result(self) -> Any:
        return json.loads(self.result_json) if self.result_json else None

    @property
    def is_terminal(self) -> bool:
        return RunStatus(self.status) in TERMINAL


class Evaluation(SQLModel, table=True):
    """One model's loss (and, when asked, task score) on one split of its run's data, measured by an `evaluate`
    job (worker/evaluate.py). Iteration 0 is the base model without an adapter."""

    __table_args__ = (Index("ix_eval_run_split_iter", "run_id", "split", "iteration"), NEVER_REUSED)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    job_id: int | None = Field(default=None, index=True)  # the job that measured it
    iteration: int  # 0: the base model
    split: str  # "test", "valid" or "train"
    batches: int  # batches evaluated
    loss: float  # mean loss per counted token
    perplexity: float  # exp(loss)
    tokens: int  # tokens that counted (with mask_prompt: the completions' only)
    mask_prompt: bool = False
    task_json: str | None = None  # app/contract/answers.task_result, when the task was run
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def task(self) -> dict[str, Any] | None:
        return json.loads(self.task_json) if self.task_json else None


class EvaluationExample(SQLModel, table=True):
    """One generated answer of an evaluation's task, with its outcome per field (for a person to read)."""

    __table_args__ = (Index("ix_evalex_job_iter", "job_id", "iteration"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE", index=True)
    job_id: int
    iteration: int  # 0: the base model
    split: str
    line: int  # the example's line in the split file (1-based)
    prompt: str  # the prompt as the model saw it (chat template applied)
    reference: str
    output: str
    score: float  # 0..1: the mean of its fields' scores
    outcome_json: str  # app/contract/answers.ExampleOutcome.as_json()

    @property
    def outcome(self) -> dict[str, Any]:
        return json.loads(self.outcome_json)


class Dataset(SQLModel, table=True):
    """A registered dataset folder (train/valid/test.jsonl), checked when registered and when its files change."""

    __table_args__ = NEVER_REUSED

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    path: str  # absolute folder
    format: str | None = None  # text, chat, completions or tools
    train_count: int = 0
    valid_count: int = 0
    test_count: int = 0
    source: str = "folder"  # sample, folder (registered), upload, or "subset of N"
    created_at: datetime = Field(default_factory=utcnow)
    checked_at: datetime = Field(default_factory=utcnow)
    files_signature: str = ""  # JSON {file name: [size, mtime_ns]} of the split files when last checked
    error_count: int = 0  # problems found at the last check (0: valid)
    first_error: str | None = None  # the first of them, one line


class AllowedFolder(SQLModel, table=True):
    """A folder the user allowed (Allow this folder, POST /api/allowed-folders): datasets and models are read from it
    as from the LORABOARD_ALLOWED_* settings' folders, from the moment it is added (app/contract/allowed_folders.py
    reads this table for the app and the workers alike)."""

    __table_args__ = NEVER_REUSED

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(unique=True)  # absolute, links resolved
    added_at: datetime = Field(default_factory=utcnow)


class DatasetCheck(SQLModel, table=True):
    """The outcome of checking a data folder's every line for one way of reading it (mask_prompt, feature keys),
    kept while the files keep their size and modification time: the new-run form checks as you type."""

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(index=True)  # absolute folder
    reading: str  # JSON of mask_prompt and the feature keys the data is read with
    files_signature: str  # JSON {file name: [size, mtime_ns]} when checked
    problem: str | None = None  # what dataset_problem said (None: trainable)
    checked_at: datetime = Field(default_factory=utcnow)


class RegisteredModel(SQLModel, table=True):
    """A model folder loraboard wrote under the models folder: a fused checkpoint or a quantized copy. The model
    picker lists it with its origin; `path` is the folder mlx_lm loads."""

    __tablename__ = "registered_model"
    __table_args__ = NEVER_REUSED

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)  # the folder's name under the models folder
    path: str  # absolute folder
    origin: str  # "fused" or "quantized"
    source_model: str  # the model it was made from (path or hub id)
    run_id: int | None = Field(default=None, index=True)  # fused: the run and checkpoint it came from
    iteration: int | None = None
    job_id: int | None = None  # the job that wrote it
    bits: int | None = None  # quantized (a quantized base fused without --dequantize stays quantized too)
    group_size: int | None = None
    dequantized: bool = False
    size_bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class PromptSet(SQLModel, table=True):
    """A named list of playground prompts kept for a run, to be answered again by later checkpoints."""

    __table_args__ = NEVER_REUSED

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="CASCADE", index=True)
    name: str
    prompts_json: str = "[]"  # [{"system": str | None, "prompt": str}, ...]
    settings_json: str = "{}"  # max_tokens, temperature, top_p, seed it was saved with
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return json.loads(self.prompts_json)


class Generation(SQLModel, table=True):
    """One playground request: a prompt answered by up to four columns (the base model, or a checkpoint of a run on
    the same base), token by token, by the playground worker (the job `job_id`, kind `playground`).

    status: queued (written by the app), running (taken by the worker), then completed, failed or stopped.
    """

    __table_args__ = (CheckConstraint(f"status IN ({_STATUS_LIST})", name="generation_status"), NEVER_REUSED)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int | None = Field(default=None, index=True)
    model: str  # the base model every column loads (path or hub id)
    request_json: str  # {"messages": [...] | "prompt": str, "max_tokens", "temperature", "top_p", "seed"}
    status: str = Field(default=RunStatus.queued.value, index=True)
    error: str | None = None  # one readable line
    prompt_set_id: int | None = Field(default=None, foreign_key="promptset.id", ondelete="CASCADE", index=True)
    prompt_index: int | None = None  # the prompt of the set it answers
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.request_json)


class GenerationColumn(SQLModel, table=True):
    """One column of a generation: what it is (base or a run's checkpoint), and once done its text and figures."""

    __table_args__ = (Index("ix_gencol_generation_column", "generation_id", "column_index", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id", ondelete="CASCADE")
    column_index: int  # 0-based, left to right
    run_id: int | None = None  # None (and iteration None): the base model
    iteration: int | None = None
    text: str = ""  # the whole answer, written when the column is done
    tokens: int = 0  # generated tokens
    prompt_tokens: int = 0
    first_token_s: float | None = None  # seconds from the column's start to its first token
    tokens_per_second: float | None = None  # generation speed after the first token
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (max_tokens)
    done: bool = False


class GenerationToken(SQLModel, table=True):
    """One generated token's text of one column, in order (the stream the page and the API read)."""

    __table_args__ = (Index("ix_gentoken_generation_id", "generation_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    generation_id: int = Field(foreign_key="generation.id", ondelete="CASCADE")
    column_index: int
    seq: int  # 0-based position in the column's answer
    text: str  # the text this token adds (may be empty while a multi-byte character is incomplete)
