"""Checks of a distributed run before its row is created: the numbers, the hostfile, and every other host.

The config-only checks are pure. The host checks ask each non-loopback host over ssh (BatchMode, so a
password prompt fails at once instead of hanging) whether its python imports mlx and mlx_lm and whether
the model and data paths exist there; the ssh calls go through a `Runner`, so tests can give a fake one.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import json_text
from app.contract.distributed import Distributed, is_loopback, world_size
from app.contract.run_config import RunConfig, looks_like_path

CONNECT_TIMEOUT_S = 5
CALL_TIMEOUT_S = 20.0
HOSTFILE_EXAMPLE = '[{"ssh": "mac1.local", "ips": ["192.168.1.10"]}, {"ssh": "mac2.local", "ips": ["192.168.1.11"]}]'
_HOST = re.compile(r"^(?:[A-Za-z0-9_.-]+@)?[A-Za-z0-9_.:%\[\]-]+\Z")  # \Z: "$" would let a final newline in
_USER = re.compile(r"^[A-Za-z0-9_.-]+\Z")
_PYTHON = re.compile(r"^/[A-Za-z0-9_./+-]+\Z")


@dataclass(frozen=True)
class Finished:
    """What one command did: its exit status and its output (stderr after stdout); None status: timed out."""

    returncode: int | None
    output: str


Runner = Callable[[list[str], float], Finished]
Which = Callable[[str], str | None]


SHARED = ("loraboard's database", "loraboard's adapters folder")  # what every rank reads the run from


def run_command(argv: list[str], timeout: float) -> Finished:
    """Run a command (no shell) with a timeout: the Runner the web process uses."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)
    except subprocess.TimeoutExpired:
        return Finished(None, "")
    except OSError as exc:
        return Finished(127, str(exc))
    return Finished(done.returncode, (done.stdout + done.stderr).strip())


def read_hostfile(path: str) -> tuple[list[str], str | None]:
    """The ssh names of an mlx.launch hostfile, or a message saying what is wrong with it (pure but for reading)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], f"{file} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot read {file}: {exc}"
    return parse_hostfile(text, str(file))


def parse_hostfile(text: str, name: str = "the hostfile") -> tuple[list[str], str | None]:
    """mlx.launch's hostfile format: a JSON list of {"ssh": host, "ips": [addresses]} objects, one per process
    (or, as mlx.distributed_config writes it, an object whose "hosts" key holds that list)."""
    expected = f"expected mlx.launch's format, a JSON list such as {HOSTFILE_EXAMPLE}"
    try:
        entries: Any = json_text.loads(text)
    except json.JSONDecodeError as exc:
        return [], f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {expected}"
    if isinstance(entries, dict) and "hosts" in entries:
        entries = entries["hosts"]
    if not isinstance(entries, list) or not entries:
        return [], f"{name}: {expected}"
    hosts = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("ssh"), str) or not entry["ssh"].strip():
            return [], f"{name}, host {number}: needs an \"ssh\" key naming the host; {expected}"
        ips = entry.get("ips", [])
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            return [], f"{name}, host {number} ({entry['ssh']}): \"ips\" must be a list of addresses (strings)"
        hosts.append(entry["ssh"].strip())
    return hosts, None


def config_problems(config: RunConfig, which: Which = shutil.which) -> tuple[dict[str, str], list[str]]:
    """({field: message}, the group's hosts) from the config alone (the hostfile is read): no ssh."""
    spec = config.distributed
    if spec is None:
        return {}, []
    problems: dict[str, str] = {}
    if spec.hosts and spec.hostfile:
        problems["distributed.hostfile"] = "give hosts or hostfile, not both"
        return problems, []
    if spec.hostfile:
        hosts, problem = read_hostfile(spec.hostfile)
        if problem:
            problems["distributed.hostfile"] = problem
            return problems, []
        if spec.processes_per_host != 1:  # mlx.launch starts one process per hostfile entry
            problems["distributed.processes_per_host"] = (
                "must be 1 with a hostfile: mlx.launch starts one process per entry (list a host several times "
                "for several processes there)")
    else:
        hosts = list(spec.hosts or ["127.0.0.1"])
    bad = [h for h in hosts if not _HOST.match(h)]
    if bad:
        key = "distributed.hostfile" if spec.hostfile else "distributed.hosts"
        problems[key] = f"{bad[0]!r} is not a host name or address (letters, digits, . - _ : and an optional user@)"
        return problems, []
    if spec.ssh_user is not None and not _USER.match(spec.ssh_user):
        problems["distributed.ssh_user"] = f"{spec.ssh_user!r} is not a user name (letters, digits, . - _)"
    if spec.python is not None and not _PYTHON.match(spec.python):
        problems["distributed.python"] = (f"{spec.python!r} is not an absolute path to a python "
                                          "(letters, digits, / . _ + -)")
    size = world_size(spec, hosts)
    if config.batch_size % size:
        problems["batch_size"] = (f"batch_size {config.batch_size} is not divisible by the {size} processes "
                                  f"(hosts × processes_per_host): mlx-lm splits each batch evenly across them")  # noqa: RUF001
    if spec.backend == "mpi" and which("mpirun") is None:
        problems["distributed.backend"] = "the mpi backend needs mpirun on PATH (install Open MPI), or use ring"
    return problems, hosts


def ssh_target(spec: Distributed, host: str) -> str:
    return host if "@" in host or not spec.ssh_user else f"{spec.ssh_user}@{host}"


def ssh_argv(spec: Distributed, host: str, remote: list[str]) -> list[str]:
    """ssh that fails instead of asking for a password, with the remote command quoted for its shell."""
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "--",
            ssh_target(spec, host), shlex.join(remote)]


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def probe_host(spec: Distributed, host: str, paths: list[tuple[str, str]], runner: Runner) -> str | None:
    """What stops `host` from taking part (None: ready): reachable, python with mlx and mlx_lm, the paths there."""
    python = spec.python or sys.executable
    done = runner(ssh_argv(spec, host, [python, "-c", "import mlx.core, mlx_lm"]), CALL_TIMEOUT_S)
    if done.returncode is None:
        return f"{host} did not answer over ssh within {CALL_TIMEOUT_S:g} s"
    if done.returncode == 255:
        return (f"cannot reach {ssh_target(spec, host)} over ssh without a password ({_last_line(done.output)}); "
                "set up key-based ssh from this machine first")
    if done.returncode != 0:
        return (f"{python} on {host} cannot import mlx.core and mlx_lm ({_last_line(done.output)}): install "
                "loraboard's environment there at the same path, or set python")
    for what, path in paths:
        check = runner(ssh_argv(spec, host, ["test", "-e", path]), CALL_TIMEOUT_S)
        if check.returncode is None or check.returncode == 255:
            return f"{host} stopped answering over ssh while checking {path}"
        if check.returncode != 0 and what in SHARED:
            return (f"{host} does not see {what} at {path}: every rank reads the run from it, so a run across "
                    "hosts needs loraboard's folder on a filesystem the hosts share, at the same path (e.g. NFS)")
        if check.returncode != 0:
            hint = "e.g. with mlx_lm.share" if what == "model" else "e.g. with rsync"
            return f"{host} has no {what} at {path}: copy it there first, at the same path ({hint})"
    return None


def host_problems(config: RunConfig, hosts: list[str], runner: Runner = run_command,
                  which: Which = shutil.which, shared: Sequence[str] = ()) -> dict[str, str]:
    """{field: message} for the non-loopback hosts, probed in parallel; loopback-only groups skip ssh.

    shared: loraboard's database (and adapters folder), which every rank reads the run from."""
    spec = config.distributed
    remote = [h for h in dict.fromkeys(hosts) if not is_loopback(h)]
    if spec is None or not remote:
        return {}
    key = "distributed.hostfile" if spec.hostfile else "distributed.hosts"
    if which("ssh") is None:
        return {key: f"ssh is not installed: it is needed to reach {', '.join(remote)} (install OpenSSH)"}
    paths = [("model", config.model)] if looks_like_path(config.model) else []
    paths.append(("data", config.data))
    paths += [(SHARED[min(i, len(SHARED) - 1)], path) for i, path in enumerate(shared)]
    with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:
        answers = list(pool.map(lambda h: probe_host(spec, h, paths, runner), remote))
    found = [answer for answer in answers if answer]
    return {key: "; ".join(found)} if found else {}


def distributed_problems(config: RunConfig, runner: Runner = run_command,
                         which: Which = shutil.which, shared: Sequence[str] = ()) -> dict[str, str]:
    """Every reason a resolved config's distributed group cannot start, by field (empty: none or fine).

    shared: the database path and the adapters folder, which the other hosts must see at the same path."""
    problems, hosts = config_problems(config, which)
    if problems:
        return problems
    return host_problems(config, hosts, runner, which, shared)
