"""Run statuses (MLflow-style: an enum with a terminal set). No database imports here."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    stopping = "stopping"
    completed = "completed"
    stopped = "stopped"
    early_stopped = "early_stopped"
    failed = "failed"
    interrupted = "interrupted"


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.completed, RunStatus.stopped, RunStatus.early_stopped, RunStatus.failed, RunStatus.interrupted}
)
