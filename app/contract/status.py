"""Run and job statuses (MLflow-style: an enum with its active and terminal sets). No database imports here."""

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

ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.starting, RunStatus.running, RunStatus.stopping})
"""A worker holds the run: its files are being written, and the supervisor watches its heartbeat."""
