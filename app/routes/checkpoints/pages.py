"""A run's checkpoints on its page: the table partial and its actions (deployment, note, delete), and the
"use this checkpoint" page `/runs/{id}/checkpoints/{iteration}`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import SessionDep, SettingsDep, TemplatesDep
from app.models.view import checkpoint_context
from app.routes.params import Iteration, RunId, run_checkpoint_or_404, run_or_404
from app.runs.store.checkpoint_table import table_context
from app.runs.store.checkpoints import CheckpointError, delete_checkpoint, find_checkpoint, set_deployment, set_note
from app.tables import Checkpoint, Run

router = APIRouter(include_in_schema=False)


@router.get("/runs/{run_id}/checkpoints", response_class=HTMLResponse)
def checkpoints_partial(request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId) -> Response:
    return _checkpoint_partial(request, session, templates, run_or_404(session, run_id))


def _checkpoint_partial(
    request: Request, session: SessionDep, templates: TemplatesDep, run: Run, error: str | None = None
) -> Response:
    context = table_context(session, run, str(request.base_url).rstrip("/"), error)
    return templates.TemplateResponse(request, "_checkpoints.html", context)


def _checkpoint_action(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: int, iteration: int,
    action: Callable[[Run, Checkpoint], None],
) -> Response:
    """Apply one action to a checkpoint and answer with the table (showing the error, if any)."""
    run = run_or_404(session, run_id)
    ckpt = find_checkpoint(session, run_id, iteration)
    error = None
    if ckpt is None:
        error = f"no checkpoint at iteration {iteration}"
    else:
        try:
            action(run, ckpt)
        except CheckpointError as exc:
            error = str(exc)
    return _checkpoint_partial(request, session, templates, run, error)


@router.post("/runs/{run_id}/checkpoints/{iteration}/deployment", response_class=HTMLResponse)
def set_deployment_from_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId, iteration: Iteration
) -> Response:
    def deploy(run: Run, ckpt: Checkpoint) -> None:
        set_deployment(session, run_id, ckpt)
        session.commit()

    return _checkpoint_action(request, session, templates, run_id, iteration, deploy)


@router.post("/runs/{run_id}/checkpoints/{iteration}/note", response_class=HTMLResponse)
def set_note_from_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId, iteration: Iteration,
    note: Annotated[str, Form()] = "",
) -> Response:
    return _checkpoint_action(
        request, session, templates, run_id, iteration, lambda run, ckpt: set_note(session, ckpt, note)
    )


@router.post("/runs/{run_id}/checkpoints/{iteration}/delete", response_class=HTMLResponse)
def delete_from_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: RunId,
    iteration: Iteration, confirm: Annotated[str, Form()] = "",
) -> Response:
    return _checkpoint_action(
        request, session, templates, run_id, iteration,
        lambda run, ckpt: delete_checkpoint(session, settings, run, ckpt, confirm),
    )


@router.get("/runs/{run_id}/checkpoints/{iteration}", response_class=HTMLResponse, include_in_schema=False)
def checkpoint_page(request: Request, run_id: RunId, iteration: Iteration, session: SessionDep,
                    settings: SettingsDep, templates: TemplatesDep) -> HTMLResponse:
    """Use this checkpoint: its facts, fuse it, serve it, try it, and the terminal commands that do the same."""
    run, ckpt = run_checkpoint_or_404(session, run_id, iteration)
    base_url = str(request.base_url).rstrip("/")
    return templates.TemplateResponse(request, "checkpoint.html",
                                      checkpoint_context(session, settings, run, ckpt, base_url))
