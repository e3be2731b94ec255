"""What templates/_serve.html shows of one served thing: its newest server job (found again after a dashboard
restart: it is a row), the URL and model name, and copyable curl and Python snippets built from them."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session

from app.contract.kinds import CLIENT_MODEL
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.jobs.jobs import LIVE
from app.serving.requests import ServeRefused, Target, check_target, serve_jobs
from app.tables import Job

EXAMPLE_MESSAGES = [{"role": "user", "content": "Hello! What can you do?"}]
EXAMPLE_MAX_TOKENS = 64


def curl_snippet(base_url: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": EXAMPLE_MESSAGES, "max_tokens": EXAMPLE_MAX_TOKENS})
    return (f"curl {base_url}/v1/chat/completions \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'")


def python_snippet(base_url: str, model: str) -> str:
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key="not-needed")\n'
        "reply = client.chat.completions.create(\n"
        f"    model={json.dumps(model)},\n"
        f"    messages={json.dumps(EXAMPLE_MESSAGES)},\n"
        f"    max_tokens={EXAMPLE_MAX_TOKENS},\n"
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )


def state_of(job: Job | None) -> str:
    """idle (no server), waiting (queued), starting (loading, not answering yet), serving, stopping, ended."""
    if job is None:
        return "idle"
    if job.status == RunStatus.queued.value:
        return "waiting"
    if job.status == RunStatus.stopping.value:
        return "stopping"
    if job.status in LIVE:
        return "serving" if (job.detail or "").startswith("serving") else "starting"
    return "ended"


def urls(target: Target) -> dict[str, str]:
    """The partial's own address (GET: show, POST: start)."""
    if target.model_name is not None:
        return {"self": f"/models/{target.model_name}/serve"}
    return {"self": f"/runs/{target.run_id}/checkpoints/{target.iteration}/serve"}


def panel(target: Target, job: Job | None, problem: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The partial's context for the target's newest server job (None: never served)."""
    view: dict[str, Any] = {
        "target": target, "label": target.label, "job": job, "state": state_of(job), "problem": problem,
        "live": job is not None and job.status in LIVE, "error": error, "urls": urls(target), "dom_id": dom_id(target),
    }
    if job is not None:
        params = job.params
        base_url, model = str(params.get("base_url", "")), str(params.get("client_model", CLIENT_MODEL))
        view.update(base_url=base_url, model=model, curl=curl_snippet(base_url, model),
                    python=python_snippet(base_url, model), served=params.get("model"),
                    adapter_path=params.get("adapter_path"))
    return view


def serve_view(session: Session, settings: Settings, target: Target, error: str | None = None) -> dict[str, Any]:
    """panel() of the target's newest server job, checked for a dead worker; when none is live, why it cannot
    be served (if it cannot)."""
    jobs = serve_jobs(session, settings, target, limit=1)
    job = jobs[0] if jobs else None
    problem = None
    if job is None or job.status not in LIVE:
        try:
            check_target(session, settings, target, make_folder=False)
        except ServeRefused as exc:
            problem = str(exc)
    return panel(target, job, problem, error)


def dom_id(target: Target) -> str:
    if target.model_name is not None:
        return "serve-model-" + "".join(ch if ch.isalnum() else "-" for ch in target.model_name)
    return f"serve-{target.run_id}-{target.iteration}"


def serve_context(session: Session, settings: Settings, run_id: int | None, iteration: int | None,
                  model_name: str | None = None) -> dict[str, Any]:
    """The context templates/_serve.html needs (`{"serve": ...}`), for a checkpoint (run_id, iteration) or a
    model folder under the models folder (model_name)."""
    if model_name is not None:
        target = Target(model_name=model_name)
    elif run_id is not None and iteration is not None:
        target = Target(run_id=run_id, iteration=iteration)
    else:
        raise ValueError("serve_context needs run_id and iteration, or model_name")
    return {"serve": serve_view(session, settings, target)}
