"""Shared helpers of the benchmarks: paths, the machine, child processes, statistics, output.

Imports neither mlx nor the app, so a benchmark's own process stays small (a smoke's imports transformers, for
its children: bench/warm.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.warm import forkable, start_forked, warm_up

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_DIR / "bench" / "results"
DEFAULT_MODEL = PROJECT_DIR / "data" / "models" / "tiny-mistral"
DEFAULT_DATA = PROJECT_DIR / "data" / "contact-center"
CACHE_DIR = PROJECT_DIR / "data" / ".cache"
MODEL_20M = CACHE_DIR / "bench-20m"  # the 20M-parameter bench model (bench/model_20m.py builds it)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: shown under every table and stored in the JSON."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mlx": package_version("mlx"),
        "mlx_lm": package_version("mlx-lm"),
        "load_average_at_start": load_average(),
    }


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info.get("load_average_at_start", []))
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}; Python {info['python']}, "
        f"mlx {info['mlx']}, mlx-lm {info['mlx_lm']}; load average at start {load or 'n/a'}"
    )


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "misses"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_path(name: str, smoke: bool = False) -> Path:
    """bench/results/<name>.json; a smoke run's figures go to <name>-smoke.json, never over real measurements."""
    return RESULTS_DIR / f"{name}{'-smoke' if smoke else ''}.json"


def write_results(name: str, payload: dict[str, Any], smoke: bool = False) -> Path:
    path = results_path(name, smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def shown_on(line: str, value: float) -> bool:
    """Whether `line` prints `value`: one of its numbers is `value` rounded to the decimals it is printed with."""
    for match in NUMBER.finditer(line):
        text = match.group().replace(",", "")
        decimals = len(text.split(".", 1)[1]) if "." in text else 0
        if abs(float(text) - value) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9) + 1e-12:
            return True
    return False


def check_figures(figures: Iterable[tuple[str, float | None]], table: str) -> None:
    """A smoke run's check of its own figures: each exists, is a finite positive number, and the table printed shows it.

    figures: (label, value) pairs; the label is a piece of the table line that shows the value (a row's name),
    the value in the unit and scale that line prints it in. Exits naming every figure that fails the check.
    """
    problems: list[str] = []
    count = 0
    for label, value in figures:
        count += 1
        lines = [line for line in table.splitlines() if label in line]
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{label}: no figure ({value!r})")
        elif not math.isfinite(value) or value <= 0:
            problems.append(f"{label}: {value!r} is not a finite positive number")
        elif not lines:
            problems.append(f"{label}: no line of the table names it")
        elif not any(shown_on(line, value) for line in lines):
            problems.append(f"{label}: {value!r} is not on its line: {lines[0].strip()}")
    if not count:
        problems.append("no figures to check")
    if problems:
        raise SystemExit("bench smoke: figures missing or not sane:\n  " + "\n  ".join(problems))
    print(f"smoke: {count} figures present, finite and positive", file=sys.stderr, flush=True)


def ensure_defaults() -> None:
    """The embedded model and sample data in data/, created on first use as `loraboard defaults` creates them (a
    fresh clone has neither; building the model takes minutes, once). A lock file makes parallel callers build once."""
    if (DEFAULT_MODEL / "config.json").is_file() and (DEFAULT_DATA / "train.jsonl").is_file():
        return
    print("bench: creating the embedded default model and sample data (first use only, a few minutes)...",
          file=sys.stderr, flush=True)
    DEFAULT_DATA.parent.mkdir(parents=True, exist_ok=True)
    with (DEFAULT_DATA.parent / ".defaults.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = base_env(LORABOARD_DATA_DIR=str(DEFAULT_DATA.parent))
        subprocess.run([sys.executable, "-m", "worker", "defaults"], cwd=PROJECT_DIR, env=env, check=True)


def ensure_model_20m(source: Path = DEFAULT_MODEL, timeout_s: float = 1800) -> Path:
    """The ~20M-parameter bench model in data/.cache/bench-20m with `source`'s tokenizer, built by bench/model_20m.py
    in its own process (mlx stays out of this one) when absent or built from another tokenizer."""
    from bench import model_20m

    if source.resolve() == DEFAULT_MODEL.resolve():
        ensure_defaults()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "bench-20m.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not model_20m.is_built(MODEL_20M, source):
            log = CACHE_DIR / "bench-20m.log"
            cmd = [sys.executable, str(PROJECT_DIR / "bench" / "model_20m.py"), "--source", str(source), "--out",
                   str(MODEL_20M)]
            child = run_child(cmd, base_env(), log, timeout_s)
            if child.returncode != 0:
                raise SystemExit(f"bench: building the 20M model failed:\n{log_tail(log)}")
    return MODEL_20M


SMOKE_DATA = CACHE_DIR / "bench-smoke-data"  # the sample's first examples: what smoke runs train and test on
SMOKE_EXAMPLES = 16


def smoke_data(data: Path) -> Path:
    """The dataset a smoke run reads: the sample's first SMOKE_EXAMPLES lines of each split (written to
    data/.cache/bench-smoke-data when absent or different), or `data` itself when another folder was asked for.
    Every process that loads a dataset tokenizes it whole (the sample's 1,500 examples: about a second each time);
    a smoke's few steps and batches need 16."""
    if data.resolve() != DEFAULT_DATA.resolve():
        return data
    ensure_defaults()
    SMOKE_DATA.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        text = "".join((DEFAULT_DATA / f"{split}.jsonl").read_text().splitlines(True)[:SMOKE_EXAMPLES])
        target = SMOKE_DATA / f"{split}.jsonl"
        if not target.is_file() or target.read_text() != text:  # written whole: a parallel smoke reads either
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
    return SMOKE_DATA


GPU_SMOKE = CACHE_DIR / "bench-gpu-smoke"  # the GPU benchmarks' small model and data, shared by their smokes


def gpu_smoke_inputs(tokenizer: Path, seq_tokens: int, log: Path) -> tuple[Path, Path]:
    """The small model and the data rows of `bench/gpu_build.py --smoke` in data/.cache/bench-gpu-smoke, built
    under a lock when absent or built otherwise (gpu_build skips what is there): both GPU benchmarks' smokes
    read them, so neither builds them again."""
    if tokenizer.resolve() == DEFAULT_MODEL.resolve():
        ensure_defaults()
    model, data = GPU_SMOKE / "model", GPU_SMOKE / f"data-{seq_tokens}"
    GPU_SMOKE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PROJECT_DIR / "bench" / "gpu_build.py"), "--tokenizer", str(tokenizer), "--model-out",
           str(model), "--data-out", str(data), "--seq-tokens", str(seq_tokens), "--smoke"]
    with (GPU_SMOKE / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        child = run_child(cmd, base_env(), log, 900)
    if child.returncode != 0:
        raise SystemExit(f"bench: building the smoke model or data failed:\n{log_tail(log, 30)}")
    return model, data


def check_inputs(model: Path, data: Path) -> None:
    """Exit with a readable line when the model or the dataset folder is missing (the embedded ones are created)."""
    if model.resolve() == DEFAULT_MODEL.resolve() or data.resolve() == DEFAULT_DATA.resolve():
        ensure_defaults()
    if not (model / "config.json").is_file():
        hint = " (create it with `python -m worker defaults`)" if model == DEFAULT_MODEL else ""
        raise SystemExit(f"bench: {model} is not a model folder{hint}")
    if not (data / "train.jsonl").is_file():
        raise SystemExit(f"bench: {data} has no train.jsonl")


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every child: offline, unbuffered, plus `extra`."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "LORABOARD_HF_OFFLINE": "true", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def own_env(**settings: str) -> dict[str, str]:
    """base_env without the LORABOARD_ settings of the caller's environment, plus `settings`: a server or worker
    the benchmark configures entirely itself (a user's LORABOARD_TOKEN or data folder changes nothing)."""
    env = {k: v for k, v in base_env().items() if not k.startswith("LORABOARD_")}
    env.update({"LORABOARD_HF_OFFLINE": "true", **settings})
    return env


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    peak_rss_mb: float  # the child's own peak resident set (ru_maxrss of wait4)
    wall_s: float
    timed_out: bool


def run_child(
    cmd: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float, cwd: Path = PROJECT_DIR,
    warm: bool = False,
) -> ChildResult:
    """Run one process to its end; its peak RSS comes from wait4 (this child only, not the others).

    warm: a smoke's child: a Python command runs in a fork of this interpreter with transformers imported
    (bench/warm.py) where it can, instead of a new interpreter."""
    started = time.perf_counter()
    process: subprocess.Popen[bytes] | None = None
    with log_path.open("ab") as log:
        if warm and forkable(cmd, env):
            warm_up()
            pid = start_forked(cmd, env, cwd, log.fileno())
        else:
            process = subprocess.Popen(
                list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            pid = process.pid
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(pid, 0)
    finally:
        timer.cancel()
    returncode = os.waitstatus_to_exitcode(status)
    if process is not None:
        process.returncode = returncode  # reaped here: keep Popen from waiting again
    return ChildResult(
        returncode=returncode,
        peak_rss_mb=usage.ru_maxrss / 1024.0,  # KiB on Linux
        wall_s=time.perf_counter() - started,
        timed_out=timed_out.is_set(),
    )


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
