"""What the dataset tools are asked, whether as JSON or from the dataset page's forms: a subset and its source
folder (confined to the data folders), and the max_seq_length token statistics are shown against by default."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.contract.paths import DATA_DIRS_SETTING, PathNotAllowed, confine, data_roots
from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.datasets.subset import DEFAULT_RATIOS, SubsetError, validate_ratios
from app.datasets.validation import SPLITS

DEFAULT_MAX_SEQ_LENGTH: int = RunConfig.model_fields["max_seq_length"].default


class SubsetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, description="Folder of the dataset to draw from.")
    name: str = Field(..., description="Name of the new dataset (its folder under the datasets folder).")
    n: int = Field(..., ge=1, description="Number of examples to draw.")
    seed: int = Field(0, ge=0, description="Random seed: the same seed draws the same subset.")
    ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS),
                                description="Shares of train, valid and test; they add up to 1.")
    splits: list[str] = Field(default_factory=lambda: list(SPLITS), description="Splits of the source to draw from.")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        return list(validate_ratios(value))


def confined_source(settings: Settings, source: str) -> Path:
    """The subset's source folder, inside the folders datasets may be read from (else SubsetError)."""
    try:
        return confine(source, data_roots(settings), "source folder", DATA_DIRS_SETTING)
    except PathNotAllowed as exc:
        raise SubsetError("source", str(exc)) from None
