"""Run presets: named settings one click puts into the new-run form (GET /runs/new?preset=<key>).

A preset is plain data, declared once here: its key, its title, a sentence saying what it is for and what it
costs, the model folder it trains (a name under the models folder) and the values it sets over the form's
defaults (app/runs/form/fields.FORM_DEFAULTS). The form shows every preset above the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.contract.run_config import RunConfig
from app.contract.settings import Settings
from app.runs.form.fields import FORM_DEFAULTS


@dataclass(frozen=True)
class Preset:
    """Settings for the new-run form, chosen by key: the model folder under the models folder, the sample data,
    and the config values over the form's defaults."""

    key: str
    title: str
    description: str
    model_folder: str
    values: dict[str, Any] = field(default_factory=dict)


# SmolLM2-135M-Instruct in float32 (`loraboard defaults` converts it), LoRA on its last 4 of 30 blocks, the loss on
# the answers only. Sized from one measured run of 32 steps (the same settings otherwise): its worker used 402
# CPU-seconds (one OpenBLAS thread: the wall time of a quiet 2-core machine), 1,426 s of wall time on a machine at
# load average ~15; validation loss 3.81 -> 0.24 by step 24. 48 steps: about 600 CPU-seconds, 10 minutes.
REAL_MODEL_DEMO = Preset(
    key="real-model-demo",
    title="Real model demo",
    description="SmolLM2-135M-Instruct (float32) learns the sample's answer format: LoRA on its last 4 blocks, "
                "loss on the answers only, early stopping and checkpoints as usual. About 10 minutes on a 2-core "
                "CPU.",
    model_folder="smollm2-135m-instruct",
    values={"fine_tune_type": "lora", "num_layers": 4, "batch_size": 4, "iters": 48, "learning_rate": 5e-4,
            "mask_prompt": True, "max_seq_length": 512, "steps_per_report": 4, "steps_per_eval": 8,
            "save_every": 8, "val_batches": 2},
)
PRESETS: tuple[Preset, ...] = (REAL_MODEL_DEMO,)


def find_preset(key: str) -> Preset | None:
    return next((preset for preset in PRESETS if preset.key == key), None)


def preset_config(preset: Preset, settings: Settings) -> RunConfig:
    """The preset's run config: the form's defaults, then its values, its model folder and the sample data."""
    return RunConfig.model_validate({**FORM_DEFAULTS, **preset.values, "name": preset.title,
                                     "model": str(settings.local_models_dir / preset.model_folder),
                                     "data": str(settings.default_dataset_dir)})


def preset_choices(settings: Settings) -> list[dict[str, Any]]:
    """What the form lists: each preset's key, title, description, link, and whether its model folder is there."""
    return [{"key": preset.key, "title": preset.title, "description": preset.description,
             "href": f"/runs/new?preset={preset.key}",
             "missing": not (settings.local_models_dir / preset.model_folder / "config.json").is_file()}
            for preset in PRESETS]
