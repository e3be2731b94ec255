"""Importing runs trained with the `mlx_lm lora` CLI (POST /api/imports)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from app.deps import SessionDep, SettingsDep
from app.imports.adapter_folder import ImportProblem
from app.imports.service import import_run
from app.routes.params import problems
from app.runs.store.runs import run_json

router = APIRouter(prefix="/api", tags=["imports"])


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_dir: str = Field(description="The adapter folder `mlx_lm lora --train` wrote (its --adapter-path): "
                             "adapter_config.json and the adapters' safetensors files; an absolute path")
    log: str | None = Field(None, description="The output of that mlx_lm lora run saved to a file (absolute path), "
                            "for the loss curves; null: checkpoints only")
    name: str | None = Field(None, max_length=200, description="A name for the run (default: the folder's name)")
    copy_files: bool = Field(True, alias="copy", description="true: copy the files into loraboard's adapters "
                             "folder; false: link them (symlinks: the run needs the folder to stay where it is)")


@router.post("/imports", status_code=status.HTTP_201_CREATED, responses=problems(400, 409, 422))
def post_import(session: SessionDep, settings: SettingsDep, body: ImportBody) -> dict[str, Any]:
    """A completed run from an mlx_lm adapter folder and its log: curves, checkpoints (val loss, size, sha256).
    The answer is the run, plus `import`: what was copied or linked, the log's line counts, config keys dropped."""
    try:
        imported = import_run(session, settings, body.adapter_dir, body.log, body.name, body.copy_files)
    except ImportProblem as exc:
        raise HTTPException(exc.status, detail=str(exc)) from None
    return {**run_json(session, imported.run), "import": imported.summary}
