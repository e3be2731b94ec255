"""What templates/_serve.html shows of one served thing: its newest server job (found again after a dashboard
restart: it is a row), the URL and model name, and copyable curl and Python snippets built from them, asking the
first prompt of the run's own test split."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.contract.confinement import PathNotAllowed, open_confined
from app.contract.kinds import CLIENT_MODEL
from app.contract.paths import data_roots
from app.contract.settings import Settings
from app.contract.status import RunStatus
from app.jobs.jobs import LIVE
from app.serving.requests import ServeRefused, Target, check_target, serve_jobs
from app.tables import Job, Run

EXAMPLE_MESSAGES = [{"role": "user", "content": "Hello! What can you do?"}]  # where the data gives no prompt
EXAMPLE_MAX_TOKENS = 64
FIRST_LINE_MAX = 1 << 20  # bytes of a split's first line read for its prompt


def prompt_messages(line: bytes) -> list[dict[str, str]] | None:
    """The prompt of one JSONL example as chat messages: its `messages` up to the answer (ending with the user's
    turn), or its `prompt` as one user message; None for a text-only example or a line that is not one."""
    try:
        example = json.loads(line)
    except ValueError:
        return None
    if not isinstance(example, dict):
        return None
    messages = example.get("messages")
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        turns = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        prompt = [{"role": m["role"], "content": m["content"]} for m in turns]
        if prompt and prompt[-1]["role"] == "user":
            return prompt
    if isinstance(example.get("prompt"), str) and example["prompt"].strip():
        return [{"role": "user", "content": example["prompt"]}]
    return None


def example_messages(session: Session, settings: Settings, target: Target) -> list[dict[str, str]]:
    """The snippets' prompt: the first of the run's test split (else its validation split), which a model trained
    on that data answers as it learnt to; a fixed greeting for a model folder or data without one."""
    run = session.get(Run, target.run_id) if target.run_id is not None else None
    data = str(run.config.get("data") or "") if run is not None else ""
    for split in ("test", "valid") if data else ():
        try:
            with open_confined(Path(data) / f"{split}.jsonl", data_roots(settings)) as handle:
                messages = prompt_messages(handle.readline(FIRST_LINE_MAX))
        except (OSError, PathNotAllowed):
            continue
        if messages:
            return messages
    return EXAMPLE_MESSAGES


def curl_snippet(base_url: str, model: str, messages: list[dict[str, str]] = EXAMPLE_MESSAGES) -> str:
    body = json.dumps({"model": model, "messages": messages, "max_tokens": EXAMPLE_MAX_TOKENS})
    return (f"curl {base_url}/v1/chat/completions \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(body)}")


def python_snippet(base_url: str, model: str, messages: list[dict[str, str]] = EXAMPLE_MESSAGES) -> str:
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key="not-needed")\n'
        "reply = client.chat.completions.create(\n"
        f"    model={json.dumps(model)},\n"
        f"    messages={json.dumps(messages)},\n"
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


def panel(target: Target, job: Job | None, problem: str | None = None, error: str | None = None,
          messages: list[dict[str, str]] = EXAMPLE_MESSAGES) -> dict[str, Any]:
    """The partial's context for the target's newest server job (None: never served); messages: the snippets'."""
    view: dict[str, Any] = {
        "target": target, "label": target.label, "job": job, "state": state_of(job), "problem": problem,
        "live": job is not None and job.status in LIVE, "error": error, "urls": urls(target), "dom_id": dom_id(target),
    }
    if job is not None:
        params = job.params
        base_url, model = str(params.get("base_url", "")), str(params.get("client_model", CLIENT_MODEL))
        view.update(base_url=base_url, model=model, curl=curl_snippet(base_url, model, messages),
                    python=python_snippet(base_url, model, messages), served=params.get("model"),
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
    messages = example_messages(session, settings, target) if job is not None else EXAMPLE_MESSAGES
    return panel(target, job, problem, error, messages)


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
