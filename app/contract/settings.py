"""Every path, host, port and limit of loraboard, in one place (env prefix LORABOARD_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORABOARD_")

    host: str = Field("127.0.0.1", description="Interface the dashboard binds to (loopback by default).")
    port: int = Field(8000, description="Port the dashboard listens on.")
    data_dir: Path = Field(PROJECT_DIR / "data", description="Datasets, the default model, the database.")
    adapters_dir: Path = Field(PROJECT_DIR / "adapters", description="One folder of checkpoints per run.")
    db_path: Path | None = Field(None, description="SQLite database file (default: <data_dir>/loraboard.db).")
    cache_dir: Path | None = Field(None, description="Compiled helpers (default: <data_dir>/.cache).")
    heartbeat_timeout_s: float = Field(
        30.0, description="A worker silent this long whose process is gone is marked interrupted."
    )
    supervisor_interval_s: float = Field(2.0, description="How often the supervisor checks workers.")
    db_unwritable_limit_s: float = Field(
        600.0, gt=0, description="A training worker that cannot write to the database this long (its reports kept "
        "meanwhile) saves its adapter and ends; its run fails, saying so."
    )
    max_concurrent_runs: int = Field(1, ge=1, description="Runs that train at once; the rest wait queued.")
    qlora_offer_min_gb: float = Field(
        1.0, ge=0, description="The model panel offers QLoRA (training on a 4-bit copy) for models whose weights "
        "take at least this many GB: below that, the memory it saves is too little to matter."
    )
    fork_workers: bool = Field(
        True, description="On Linux, start each worker as a fork of a process that has imported transformers once "
        "(app/contract/worker_fork.py): every job but the first starts about 1.6 CPU-seconds sooner."
    )
    openblas: bool = Field(True, description="Route MLX's CPU matrix products to OpenBLAS on Linux.")
    blas_threads: int = Field(
        1, ge=0, description="OpenBLAS threads per worker (0: one per core); more than one pays only when idle."
    )
    hf_offline: bool = Field(False, description="Never reach a model hub (sets HF_HUB_OFFLINE=1 in workers).")
    models_dir: Path | None = Field(
        None, description="Local model folders the model picker lists (default: <data_dir>/models)."
    )
    datasets_dir: Path | None = Field(
        None, description="Uploaded and derived datasets are stored here (default: <data_dir>/datasets)."
    )
    exports_dir: Path | None = Field(
        None, description="GGUF files and their Ollama Modelfiles are written here (default: <data_dir>/exports)."
    )
    playground_idle_s: float = Field(
        600.0, gt=0, description="The playground releases its model after this many seconds without a prompt."
    )
    max_upload_mb: int = Field(200, ge=1, description="Largest dataset file accepted by upload, in MB.")
    token: str | None = Field(
        None,
        description="Access token every page, API call and event stream needs (required off loopback); "
        "16 or more letters, digits, '.', '_', '~' or '-'.",
    )
    allowed_hosts: str = Field(
        "", description="Extra host names the dashboard answers to, comma-separated (loopback names always)."
    )
    allowed_dirs: str = Field(
        "", description="Extra folders datasets and models may be read from, separated by ':'."
    )
    allowed_data_dirs: str = Field("", description="Extra folders datasets may be read from, separated by ':'.")
    allowed_model_dirs: str = Field("", description="Extra folders models may be read from, separated by ':'.")

    @property
    def database_path(self) -> Path:
        return self.db_path or self.data_dir / "loraboard.db"

    @property
    def compiled_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / ".cache"

    @property
    def local_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def local_datasets_dir(self) -> Path:
        return self.datasets_dir or self.data_dir / "datasets"

    @property
    def local_exports_dir(self) -> Path:
        return self.exports_dir or self.data_dir / "exports"

    @property
    def default_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-mistral"

    @property
    def default_dataset_dir(self) -> Path:
        return self.data_dir / "contact-center"

    @property
    def templates_dir(self) -> Path:
        return PROJECT_DIR / "templates"

    @property
    def static_dir(self) -> Path:
        return PROJECT_DIR / "static"


@lru_cache
def get_settings() -> Settings:
    return Settings()
