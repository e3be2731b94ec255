"""Asking for a GGUF export of a model folder: what may be asked, what the worker (worker/gguf_export.py) is given,
every check made before a job row exists, and what the model card's GGUF section shows.

A model is any folder under the models folder (fused or placed by hand). Checks read config.json, the
tokenizer files and the safetensors headers only: the architecture (what llama.cpp loads as "llama": Llama,
Mistral, Mixtral), an unquantized source, a rope scaling the file can describe, a tokenizer llama.cpp can
rebuild, q4_k_m's library, the output folder free, and the disk space the file needs.
The export goes to `<exports>/<name>/` (default name `<model>-<type>`) holding `<name>.gguf` and `Modelfile`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from app import json_text
from app.contract.kinds import GGUF, GgufParams
from app.contract.settings import Settings
from app.jobs.job_view import JobView
from app.jobs.jobs import LIVE, JobRefused, create_job, progress_view
from app.models.cards import card_pending, write_gguf_card
from app.models.registry import NAME, NAME_RULE
from app.tables import Job

KIND = GGUF.name
TYPES = ("f16", "q8_0", "q4_k_m")
SUPPORTED = ("llama", "mistral", "mixtral")
BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 2.0 + 0.6}  # q4_k_m: the f16 file first, then ~4.8 bits
QUANT_LIBRARY = "q4_k_m is made by llama.cpp's own quantizer: install llama-cpp-python (pip install " \
                "'loraboard[gguf-quant]', it builds llama.cpp) and restart loraboard"
# The pre-tokenizer regex of Llama 3 style byte-level BPE (llama.cpp's "llama-bpe").
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# SmolLM's pre-tokenizer (llama.cpp's "smollm"): each digit alone, then GPT-2's byte-level split with its regex.
SMOLLM_STEPS = [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]
FreeSpace = Callable[[Path], int]


class GgufRequest(BaseModel):
    """The body of POST /api/models/{name}/gguf."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["f16", "q8_0", "q4_k_m"] = Field("f16", description="Weight type of the file: f16, q8_0 (8-bit "
                                                                      "blocks) or q4_k_m (llama.cpp's quantizer).")
    name: str | None = Field(None, description="The export's folder and file name under the exports folder "
                                               "(default <model>-<type>).")


class GgufRefused(JobRefused):
    """A GGUF export request that cannot start."""


def disk_free(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def model_folder(settings: Settings, name: str) -> Path:
    """The folder `name` under the models folder (GgufRefused 404 when there is none)."""
    root = settings.local_models_dir
    folder = root / name
    if not NAME.match(name) or not (folder / "config.json").is_file():
        raise GgufRefused(404, ("path", "name"), f"no model folder named {name!r} under {root}")
    return folder


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json_text.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GgufRefused(422, ("path", "name"), f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise GgufRefused(422, ("path", "name"), f"{path} is not a JSON object")
    return data


def architecture_problem(config: dict[str, Any]) -> str | None:
    """Why this config cannot be written as a GGUF file (None: it can)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        return f"model_type {model_type!r} cannot be exported to GGUF; supported: {', '.join(SUPPORTED)}"
    if config.get("quantization") or config.get("quantization_config"):
        quant = config.get("quantization") or config.get("quantization_config") or {}
        bits = quant.get("bits") if isinstance(quant, dict) else None
        return (f"the model is quantized{f' ({bits}-bit)' if bits else ''}: GGUF export needs float weights; fuse "
                "its checkpoint with dequantize, or export the unquantized model it was made from")
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in (None, "linear", "default"):
            return f"rope_scaling type {kind!r} is not written by this export (only linear is)"
    return None


def tokenizer_kind(folder: Path) -> tuple[str, str]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre) llama.cpp needs to tokenize as the model's tokenizer does."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        if (folder / "tokenizer.model").is_file():
            return "llama", "default"
        raise GgufRefused(422, ("path", "name"), f"{folder} has no tokenizer.json or tokenizer.model")
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise GgufRefused(422, ("path", "name"), f"{path.name}: tokenizer type {model.get('type')!r} is not "
                                                 "exported (BPE only)")
    if model.get("byte_fallback"):
        return "llama", "default"
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2", "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if isinstance(steps, list) and [smollm_step(step) for step in steps] == SMOLLM_STEPS:
        return "gpt2", "smollm"
    if steps:
        patterns = [(s.get("pattern") or {}).get("Regex") for s in steps if s.get("type") == "Split"]
        if patterns == [LLAMA3_REGEX]:
            return "gpt2", "llama-bpe"
    raise GgufRefused(422, ("path", "name"), f"{path.name}: its pre-tokenizer is not one llama.cpp is known to "
                                             "reproduce (GPT-2 byte-level, SmolLM or Llama 3); the file would "
                                             "tokenize differently")


def smollm_step(step: Any) -> dict[str, Any]:
    """A pre-tokenizer step reduced to what tells SmolLM's apart: its type, and whether digits are split one by
    one (Digits) or GPT-2's regex is applied without a prefix space (ByteLevel); anything else stays in, so it
    cannot match."""
    if not isinstance(step, dict):
        return {"step": step}
    if step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False):
        return {"type": "ByteLevel", "use_regex": step.get("use_regex", True)}
    return dict(step)


def weight_count(folder: Path) -> int:
    """Number of weights, from the safetensors headers."""
    total = 0
    for path in folder.glob("*.safetensors"):
        try:
            with path.open("rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json_text.loads(handle.read(size))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GgufRefused(422, ("path", "name"), f"{path} is not a readable safetensors file: {exc}") from None
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for n in info.get("shape", []):
                    count *= int(n)
                total += count
    if total == 0:
        raise GgufRefused(422, ("path", "name"), f"{folder} has no .safetensors weights")
    return total


def estimate_bytes(weights: int, kind: str) -> int:
    return int(weights * BYTES_PER_WEIGHT[kind]) + 4 * 1024 * 1024  # + tokenizer and header


def has_quant_library() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def live_export(session: Session, export: str) -> Job | None:
    jobs = session.exec(select(Job).where(Job.kind == KIND, col(Job.status).in_(LIVE))).all()
    return next((job for job in jobs if job.params.get("export") == export), None)


def prepare(session: Session, settings: Settings, name: str, request: GgufRequest,
            free: FreeSpace = disk_free, quant_library: Callable[[], bool] = has_quant_library) -> GgufParams:
    """The job's parameters, or GgufRefused (404 no such model, 409 output taken, 422 the rest)."""
    folder = model_folder(settings, name)
    config = read_json(folder / "config.json")
    problem = architecture_problem(config)
    if problem is not None:
        raise GgufRefused(422, ("path", "name"), problem)
    if request.type == "q4_k_m" and not quant_library():
        raise GgufRefused(422, ("body", "type"), QUANT_LIBRARY)
    export = request.name.strip() if request.name and request.name.strip() else f"{name}-{request.type}"
    if not NAME.match(export):
        raise GgufRefused(422, ("body", "name"), f"name {export!r} is not valid: use {NAME_RULE}")
    dest = settings.local_exports_dir / export
    if dest.exists():
        raise GgufRefused(409, ("body", "name"), f"{dest} already exists: delete it or choose another name")
    running = live_export(session, export)
    if running is not None:
        raise GgufRefused(409, ("body", "name"), f"job {running.id} is already writing {export}")
    tokenizer_model, tokenizer_pre = tokenizer_kind(folder)
    needed = estimate_bytes(weight_count(folder), request.type)
    available = free(settings.local_exports_dir)
    if available < needed:
        raise GgufRefused(422, ("body", "type"), f"not enough disk space for {export}: about {needed / 1e9:,.2f} GB "
                                                 f"needed, {available / 1e9:,.2f} GB free in "
                                                 f"{settings.local_exports_dir}")
    return GgufParams(model=str(folder.resolve()), name=name, type=request.type, export=export, dest=str(dest),
                      file=f"{export}.gguf", tokenizer_model=tokenizer_model, tokenizer_pre=tokenizer_pre)


def start(session: Session, settings: Settings, name: str, request: GgufRequest) -> Job:
    params = prepare(session, settings, name, request)
    return create_job(session, KIND, params, key=name, unit="tensors")


# What pages show -----------------------------------------------------------------------------------------

def export_folder(settings: Settings, export: str) -> Path | None:
    """An existing export folder by name (None when the name is not one or the folder is gone)."""
    if not NAME.match(export):
        return None
    folder = settings.local_exports_dir / export
    return folder if (folder / f"{export}.gguf").is_file() else None


def commands(folder: Path, export: str) -> dict[str, str]:
    import shlex

    modelfile = shlex.quote(str(folder / "Modelfile"))
    gguf = shlex.quote(str(folder / f"{export}.gguf"))
    return {"ollama": f"ollama create {export.lower()} -f {modelfile}",
            "llama_cli": f"llama-cli -m {gguf}"}


def export_view(settings: Settings, job: Job) -> dict[str, Any] | None:
    """A finished export whose folder is still there: files, sizes, the Modelfile and the commands."""
    export = str(job.params.get("export", ""))
    folder = export_folder(settings, export)
    if folder is None:
        return None
    result = job.result if isinstance(job.result, dict) else {}
    modelfile = folder / "Modelfile"
    return {"export": export, "type": job.params.get("type"), "job_id": job.id, "folder": str(folder),
            "file": f"{export}.gguf", "size_bytes": (folder / f"{export}.gguf").stat().st_size,
            "gguf_url": f"/api/exports/{export}/gguf", "modelfile_url": f"/api/exports/{export}/Modelfile",
            "modelfile": modelfile.read_text(encoding="utf-8") if modelfile.is_file() else "",
            "checked": result.get("checked"), "commands": commands(folder, export)}


def blocked_reason(settings: Settings, name: str) -> str | None:
    """Why this model cannot be exported at all (shown instead of the form)."""
    try:
        folder = model_folder(settings, name)
        problem = architecture_problem(read_json(folder / "config.json"))
        if problem is None:
            tokenizer_kind(folder)
        return problem
    except GgufRefused as exc:
        return str(exc)


def panel(session: Session, settings: Settings, name: str, error: str | None = None,
          values: dict[str, str] | None = None) -> dict[str, Any]:
    """The model card's GGUF section: the form (or why not), live jobs, the last failure, finished exports."""
    jobs = session.exec(select(Job).where(Job.kind == KIND, Job.key == name).order_by(col(Job.id).desc())
                        .limit(20)).all()
    live = [{"job": job, "progress": progress_view(job), "info": JOB_VIEW.describe(session, job), "live": True}
            for job in jobs if job.status in LIVE]
    exports = [view for job in jobs if job.status == "completed" and (view := export_view(settings, job))]
    ended = [job for job in jobs if job.status not in LIVE]
    failed = ended[0] if ended and ended[0].status in ("failed", "interrupted") else None
    return {"name": name, "types": TYPES, "has_quant_library": has_quant_library(), "quant_library": QUANT_LIBRARY,
            "blocked": blocked_reason(settings, name), "live": live, "exports": exports, "failed": failed,
            "error": error, "values": values or {"type": "f16", "name": ""}}


def result_summary(job: Job) -> str:
    from app.templating import human_bytes

    result = job.result if isinstance(job.result, dict) else {}
    if not result.get("file"):
        return ""
    return f"wrote {result['file']} ({human_bytes(int(result.get('gguf_bytes') or 0))}), every tensor checked"


def subject(_session: Session, job: Job) -> tuple[str, str | None]:
    return f"model {job.params.get('name', '')}, {job.params.get('type', '')}", "/models"


JOB_VIEW = JobView(GGUF, summary=result_summary, subject=subject, on_completed=write_gguf_card, finishing=card_pending)
