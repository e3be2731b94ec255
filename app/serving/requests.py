"""Asking for a server: what a `serve` job's worker is given (ServeParams) and every check made before a job row
exists.

A server serves one thing: a checkpoint (the run's base model with that checkpoint's `--adapter-path` folder) or a
model folder under the models folder (a fused model). It is refused, with one sentence and no job left behind,
when the checkpoint does not exist or its file was deleted, the run's model folder is gone, the model folder does
not exist, or a live server of the same thing exists already (409 naming that job and its URL). The port is a free
loopback port chosen now (bind 127.0.0.1:0), kept in the params with the URL and the name a client sends.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from app.contract.kinds import CLIENT_MODEL, SERVE, ServeParams
from app.contract.paths import checkpoint_adapter_dir, checkpoint_files, ensure_checkpoint_adapter_dir, run_dir
from app.contract.settings import Settings
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, WORKING, JobRefused, check_job, create_job, lookup_key
from app.tables import Checkpoint, Job, Run

KIND = SERVE.name
HOST = "127.0.0.1"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class ServeRefused(JobRefused):
    """A request for a server that cannot start; a 409 carries the live server job it collides with."""

    def __init__(self, status: int, loc: tuple[str, ...], message: str, job: Job | None = None) -> None:
        super().__init__(status, loc, message)
        self.job = job


@dataclass(frozen=True)
class Target:
    """What is served: a checkpoint (run_id, iteration) or a model folder (model_name)."""

    run_id: int | None = None
    iteration: int | None = None
    model_name: str | None = None

    @property
    def key(self) -> str:
        if self.model_name is not None:
            return lookup_key(KIND, "model", self.model_name)
        return lookup_key(KIND, "checkpoint", str(self.run_id), str(self.iteration))

    @property
    def label(self) -> str:
        if self.model_name is not None:
            return f"model {self.model_name}"
        return f"run {self.run_id}, checkpoint {self.iteration:,}"

    @staticmethod
    def of(job: Job) -> Target:
        params = job.params
        if params.get("model_name") is not None:
            return Target(model_name=str(params["model_name"]))
        return Target(run_id=job.run_id, iteration=job.iteration)


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def base_url_of(port: int) -> str:
    return f"http://{HOST}:{port}"


def serve_jobs(session: Session, settings: Settings, target: Target, limit: int = 20) -> list[Job]:
    """This target's serve jobs, newest first, each checked for a dead worker."""
    query = select(Job).where(Job.kind == KIND, Job.key == target.key).order_by(col(Job.id).desc()).limit(limit)
    return [check_job(session, settings, job) for job in session.exec(query).all()]


def live_job(session: Session, settings: Settings, target: Target) -> Job | None:
    """The live (queued, starting, running or stopping) server of this target, if any."""
    return next((job for job in serve_jobs(session, settings, target) if job.status in LIVE), None)


def servers_holding_memory(session: Session, settings: Settings) -> list[Job]:
    """Servers that are up or starting and did not ask to share: a new training run waits until they stop."""
    query = select(Job).where(Job.kind == KIND, col(Job.status).in_(WORKING), col(Job.allow_while_training).is_(False))
    jobs = [check_job(session, settings, job) for job in session.exec(query.order_by(col(Job.id))).all()]
    return [job for job in jobs if job.status in WORKING]


def checkpoint_source(session: Session, settings: Settings, run_id: int, iteration: int,
                      make_folder: bool = True) -> tuple[str, Path]:
    """(base model, the checkpoint's --adapter-path folder, made now unless make_folder is False), or
    ServeRefused."""
    run = session.get(Run, run_id)
    if run is None:
        raise ServeRefused(404, ("path", "run_id"), f"no run with id {run_id}")
    ckpt = session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id,
                                                 Checkpoint.iteration == iteration)).first()
    if ckpt is None:
        have = ", ".join(f"{c:,}" for c in sorted(session.exec(
            select(Checkpoint.iteration).where(Checkpoint.run_id == run_id)).all())) or "none"
        raise ServeRefused(404, ("path", "iteration"), f"run {run_id} has no checkpoint at iteration "
                                                       f"{iteration:,} (it has {have})")
    weights, _ = checkpoint_files(settings, run_id, iteration)
    if not weights.is_file():
        raise ServeRefused(422, ("path", "iteration"), f"the file of checkpoint {iteration:,} ({weights.name}) "
                                                       f"was deleted from {weights.parent}")
    model = str(run.config.get("model", ""))
    if not model:
        raise ServeRefused(422, ("path", "run_id"), f"run {run_id} names no base model in its config")
    if model.startswith(("/", "~", ".")) and not (Path(model).expanduser() / "config.json").is_file():
        raise ServeRefused(422, ("path", "run_id"), f"the base model folder of run {run_id}, {model}, does not "
                                                    "exist any more (or has no config.json)")
    config = run_dir(settings, run_id) / "adapter_config.json"
    if not make_folder and not config.is_file():
        raise ServeRefused(422, ("path", "iteration"), f"checkpoint {iteration:,} cannot be served: "
                                                       f"{config.name} is missing from {config.parent}")
    if not make_folder:
        return model, checkpoint_adapter_dir(settings, run_id, iteration)
    try:
        folder = ensure_checkpoint_adapter_dir(settings, run_id, iteration)
    except FileNotFoundError as exc:
        missing = Path(str(exc.filename)).name
        raise ServeRefused(422, ("path", "iteration"), f"checkpoint {iteration:,} cannot be served: {missing} is "
                                                       f"missing from {run_dir(settings, run_id)}") from None
    return model, folder


def model_folder(settings: Settings, name: str) -> Path:
    """A model folder under the models folder, by name, or ServeRefused."""
    if not MODEL_NAME.match(name):
        raise ServeRefused(422, ("path", "name"), f"{name!r} is not a model name: letters, digits, '.', '_' and "
                                                  "'-', starting with a letter or digit")
    folder = settings.local_models_dir / name
    if not folder.is_dir():
        raise ServeRefused(404, ("path", "name"), f"no model folder {name} in {settings.local_models_dir}")
    if not (folder / "config.json").is_file():
        raise ServeRefused(422, ("path", "name"), f"{folder} is not a model folder: it has no config.json")
    return folder


def check_target(session: Session, settings: Settings, target: Target,
                 make_folder: bool = True) -> tuple[str, Path | None]:
    """(model, adapter folder or None) of what the target serves; ServeRefused when it cannot be served.
    make_folder False: only look (a page showing whether it can be served writes nothing)."""
    if target.model_name is not None:
        return str(model_folder(settings, target.model_name)), None
    assert target.run_id is not None and target.iteration is not None
    return checkpoint_source(session, settings, target.run_id, target.iteration, make_folder)


def plan(session: Session, settings: Settings, target: Target) -> ServeParams:
    """The job's parameters (a free port chosen now), or ServeRefused before anything is written."""
    running = live_job(session, settings, target)
    if running is not None:
        url = running.params.get("base_url", "")
        raise ServeRefused(409, ("path",), f"{target.label} is already served by job {running.id} "
                                           f"({running.status}) at {url}; stop it first", running)
    model, adapter = check_target(session, settings, target)
    port = free_port()
    return ServeParams(run_id=target.run_id, iteration=target.iteration, model=model,
                       adapter_path=str(adapter) if adapter is not None else None, model_name=target.model_name,
                       port=port, base_url=base_url_of(port))


def start_serving(session: Session, settings: Settings, target: Target) -> Job:
    """Check the request, then queue the job (the supervisor starts it when no run needs the model's memory).
    The caller holds the supervisor's lock, so two requests cannot both pass the one-server check."""
    params = plan(session, settings, target)
    return create_job(session, KIND, params, key=target.key, unit="server", run_id=target.run_id,
                      iteration=target.iteration)


def result_summary(job: Job) -> str:
    params = job.params
    return f"served {params.get('client_model', CLIENT_MODEL)} at {params.get('base_url', '?')}"


def subject(_session: Session, job: Job) -> tuple[str, str | None]:
    target = Target.of(job)
    if target.model_name is not None:
        return target.label, "/models"
    if target.run_id is None or target.iteration is None:
        return "", None
    return target.label, f"/runs/{target.run_id}/checkpoints/{target.iteration}"


JOB_VIEW = JobView(SERVE, summary=result_summary, subject=subject)
