"""What each kind of job's worker is given: its parameters, one pydantic model a kind (the job row's params_json).

The app builds them before a job row exists (its checks are app-side: app/evaluation/requests.py,
app/datasets/token_stats.py, app/serving/requests.py, app/models/requests.py, app/models/gguf.py, app/playground);
the worker reads them back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# token_stats: token statistics of a dataset --------------------------------------------------------------------


class TokenStatsParams(BaseModel):
    """What a token-statistics job counts."""

    data: str = Field(description="Absolute dataset folder holding train/valid/test.jsonl.")
    model: str = Field(description="Absolute model folder or hub id: whose tokenizer counts.")
    files_signature: str = Field("", description="JSON {file name: [size, mtime_ns]} of the split files.")


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


# playground: prompts answered side by side ---------------------------------------------------------------------


class PlaygroundParams(BaseModel):
    """What the playground worker is given."""

    model_config = ConfigDict(extra="forbid")

    idle_s: float = Field(600.0, gt=0, description="Release the model after this many seconds without a prompt.")


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
