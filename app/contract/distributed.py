"""A run trained by several processes (data parallel through `mlx.launch`): what the config says (pure).

loraboard builds no transport: `mlx.launch` starts the worker on every host with the chosen backend (ring over
TCP, MPI, or NCCL on NVIDIA GPUs) and mlx-lm's trainer averages the gradients across the group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Distributed(BaseModel):
    """loraboard's own `distributed` key of a run config."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["ring", "mpi", "nccl"] = Field(
        "ring", description="mlx.launch's backend: ring (TCP, e.g. Macs over Ethernet or Thunderbolt), mpi, or "
        "nccl (NVIDIA GPUs).")
    hosts: list[str] | None = Field(
        None, description="Hosts to train on, one process group per host (e.g. [\"127.0.0.1\"] or "
        "[\"mac1.local\", \"mac2.local\"]); or give hostfile.")
    hostfile: str | None = Field(
        None, description="An mlx.launch hostfile (JSON list of {\"ssh\": host, \"ips\": [...]}), used as is.")
    processes_per_host: int = Field(1, ge=1, le=64, description="Processes (ranks) started on each host.")
    ssh_user: str | None = Field(None, description="User for ssh to the other hosts (default: your own).")
    python: str | None = Field(
        None, description="Python on the other hosts that has loraboard's worker and mlx installed "
        "(default: this one's path).")


def hostfile_hosts(text: str) -> list[str]:
    """The ssh names of an mlx.launch hostfile: a JSON list of objects with an "ssh" key (or, as
    mlx.distributed_config writes it, an object whose "hosts" key holds that list)."""
    entries = json.loads(text)
    if isinstance(entries, dict) and "hosts" in entries:
        entries = entries["hosts"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("ssh"), str)
                                                for e in entries):
        raise ValueError('expected a JSON list of {"ssh": host, "ips": [...]} objects')
    return [e["ssh"] for e in entries]


def hosts_of(spec: Distributed) -> list[str]:
    """The hosts of the group, from `hosts` or the hostfile (read from disk)."""
    if spec.hosts:
        return list(spec.hosts)
    if spec.hostfile:
        return hostfile_hosts(Path(spec.hostfile).read_text(encoding="utf-8"))
    return ["127.0.0.1"]


def world_size(spec: Distributed, hosts: list[str]) -> int:
    return len(hosts) * spec.processes_per_host


def is_loopback(host: str) -> bool:
    return host.split("@")[-1] in LOOPBACK
