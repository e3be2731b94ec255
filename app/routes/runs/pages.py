"""A run's page and the htmx partials it includes of the run: its status (with Stop) and its early-stopping rule."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app.contract.memory_guard import memory_warning
from app.contract.paths import checkpoint_files
from app.contract.run_config import EarlyStopping
from app.deps import SessionDep, SettingsDep, SupervisorDep, TemplatesDep
from app.evaluation.card import card_context
from app.routes.params import RunId, run_or_404
from app.runs.cluster.view import distributed_view
from app.runs.live.stream import STATUS_GLYPHS, tab_title
from app.runs.store.checkpoint_table import table_context
from app.runs.store.runs import latest_train, peak_worker_memory, progress_view, set_early_stopping
from app.runs.store.summary import run_summary
from app.tables import Run

router = APIRouter(include_in_schema=False)
CHART_MAX_POINTS = 2000  # the chart's overview: as static/run_chart.js asks for it


def _status_context(session: SessionDep, run: Run, alone: bool = True) -> dict[str, Any]:
    """What _run_status.html shows; alone: the partial answers an htmx request (a live run's summary cards, shown
    below the chart so that the chart stays above the fold, go out of band)."""
    assert run.id is not None
    latest = latest_train(session, run.id)
    config = run.config
    memory_note = memory_warning(peak_worker_memory(session, run.id), config.get("memory_limit_gb"),
                                 config.get("memory_limit_action", "warn"))
    return {"run": run, "latest": latest, "progress": progress_view(run), "rule": _live_rule(run),
            "summary": run_summary(session, run), "memory_warning": memory_note, "summary_oob": alone}


def _live_rule(run: Run) -> EarlyStopping | None:
    return EarlyStopping.model_validate_json(run.early_stopping_json) if run.early_stopping_json else None


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request, session: SessionDep, settings: SettingsDep, templates: TemplatesDep, run_id: RunId,
) -> Response:
    run = run_or_404(session, run_id)
    base_url = str(request.base_url).rstrip("/")
    context = {**_status_context(session, run, alone=False), **table_context(session, run, base_url),
               **card_context(session, settings, run)}
    # a continued run's chart starts with the earlier run's curve
    source = run.config.get("resume_from")
    parent = "?include_parent=true" if source else ""
    context["parent_exists"] = bool(source) and session.get(Run, source["run_id"]) is not None
    context["parent_optimizer_state"] = bool(source) and checkpoint_files(
        settings, source["run_id"], source["iteration"])[1].exists()
    context["metrics_url"] = f"/api/runs/{run_id}/metrics{parent}"
    separator = "&" if "?" in context["metrics_url"] else "?"
    context["first_metrics_url"] = f"{context['metrics_url']}{separator}max_points={CHART_MAX_POINTS}"
    context["events_url"] = f"/api/runs/{run_id}/events{parent}"
    context["status_glyphs"] = STATUS_GLYPHS
    context["distributed"] = distributed_view(run.config, run.hardware_json)
    latest = context["latest"]
    context["page_title"] = tab_title(run.status, latest.train_loss if latest else None, run.name)
    return templates.TemplateResponse(request, "run.html", context)


@router.get("/runs/{run_id}/status", response_class=HTMLResponse)
def run_status_partial(request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId) -> Response:
    run = run_or_404(session, run_id)
    return templates.TemplateResponse(request, "_run_status.html", _status_context(session, run))


@router.post("/runs/{run_id}/stop", response_class=HTMLResponse)
def stop_from_page(
    request: Request, session: SessionDep, supervisor: SupervisorDep, templates: TemplatesDep, run_id: RunId,
    keep_best: bool = False,
) -> Response:
    run = run_or_404(session, run_id)
    supervisor.request_stop(session, run, keep_best=keep_best)
    session.expunge(run)  # read it afresh: it may have ended, or been deleted, meanwhile
    run = run_or_404(session, run_id)
    return templates.TemplateResponse(request, "_run_status.html", _status_context(session, run))


@router.get("/runs/{run_id}/early-stopping", response_class=HTMLResponse)
def early_stopping_partial(request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId) -> Response:
    run = run_or_404(session, run_id)
    context = {"run": run, "early_stopping_error": None, "saved": False, "rule": _live_rule(run)}
    return templates.TemplateResponse(request, "_early_stopping.html", context)


@router.post("/runs/{run_id}/early-stopping", response_class=HTMLResponse)
def early_stopping_from_page(
    request: Request, session: SessionDep, templates: TemplatesDep, run_id: RunId,
    enabled: Annotated[str | None, Form()] = None,
    patience: Annotated[str, Form()] = "2",
    min_delta: Annotated[str, Form()] = "0",
) -> Response:
    run = run_or_404(session, run_id)
    context: dict[str, Any] = {"run": run, "early_stopping_error": None, "saved": False}
    if run.is_terminal:
        context["early_stopping_error"] = "the run has ended"
    else:
        try:
            rule = EarlyStopping(patience=patience, min_delta=min_delta) if enabled else None  # type: ignore[arg-type]
            set_early_stopping(session, run, rule)
            context["saved"] = True
        except ValidationError as exc:
            context["early_stopping_error"] = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
            )
    context["rule"] = _live_rule(run)
    return templates.TemplateResponse(request, "_early_stopping.html", context)
