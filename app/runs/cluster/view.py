"""What the run page shows of a distributed run: world size, backend, and each rank's host and throughput."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from app.contract.distributed import Distributed
from app.runs.cluster.checks import read_hostfile


@dataclass(frozen=True)
class RankRow:
    rank: int
    host: str
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class DistributedView:
    world_size: int
    backend: str
    processes_per_host: int
    hosts: list[str]
    hostfile: str | None = None
    recorded: bool = False  # the ranks' throughput came from the training worker
    ranks: list[RankRow] = field(default_factory=list)


def _recorded(hardware_json: str | None) -> dict[str, Any]:
    try:
        hardware = json.loads(hardware_json) if hardware_json else {}
    except json.JSONDecodeError:
        return {}
    spread = hardware.get("distributed") if isinstance(hardware, dict) else None
    return spread if isinstance(spread, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def distributed_view(config: dict[str, Any], hardware_json: str | None) -> DistributedView | None:
    """None for a one-process run; ranks run host by host (rank r on hosts[r // processes_per_host])."""
    raw = config.get("distributed")
    if not isinstance(raw, dict):
        return None
    try:
        spec = Distributed.model_validate(raw)
    except ValidationError:
        return None
    recorded = _recorded(hardware_json)
    hosts = recorded.get("hosts")
    if not (isinstance(hosts, list) and hosts and all(isinstance(h, str) for h in hosts)):
        hosts = list(spec.hosts) if spec.hosts else (read_hostfile(spec.hostfile)[0] if spec.hostfile else [])
        hosts = hosts or ([] if spec.hostfile else ["127.0.0.1"])
    per_host = spec.processes_per_host
    size = recorded.get("world_size")
    size = size if isinstance(size, int) and size > 0 else len(hosts) * per_host
    speeds = recorded.get("per_rank_tokens_per_second")
    speeds = speeds if isinstance(speeds, list) else []
    ranks = [RankRow(rank, hosts[min(rank // per_host, len(hosts) - 1)] if hosts else "?",
                     _number(speeds[rank]) if rank < len(speeds) else None)
             for rank in range(size)]
    backend = recorded.get("backend") if isinstance(recorded.get("backend"), str) else spec.backend
    return DistributedView(size, str(backend), per_host, hosts, spec.hostfile, bool(speeds), ranks)
