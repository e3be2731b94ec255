"""The `quantize` job (worker/job.py): a model folder converted to 2- to 8-bit MLX, as `mlx_lm convert -q` does.

mlx_lm.convert writes into a fresh temporary path inside the models folder (it refuses an existing one), which is
renamed when whole and registered. Progress: two steps (convert, register).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.contract.kinds import QuantizeParams
from worker.job import JobContext
from worker.model_output import check_free, folder_bytes, peak_memory, register, writing


def run(ctx: JobContext[QuantizeParams]) -> dict[str, Any]:
    from mlx_lm import convert

    params = ctx.params
    source, dest = params.model, Path(params.dest)
    bits, group_size = params.bits, params.group_size
    db_path = ctx.settings.database_path
    check_free(db_path, dest)
    ctx.set_total(2, "steps")
    ctx.detail = f"quantizing {Path(source).name} to {bits}-bit, group size {group_size}"
    with writing(dest, create=False) as temp:
        convert(hf_path=source, mlx_path=str(temp), quantize=True, q_bits=bits, q_group_size=group_size)
        ctx.check_stop()
    ctx.advance()
    size = folder_bytes(dest)
    register(db_path, {"name": dest.name, "path": str(dest.resolve()), "origin": "quantized",
                       "source_model": params.source or source, "job_id": ctx.job_id, "bits": bits,
                       "group_size": group_size, "size_bytes": size}, ctx.settings.db_unwritable_limit_s)
    ctx.advance()
    ctx.detail = f"quantized into {dest.name}"
    return {"name": dest.name, "path": str(dest.resolve()), "size_bytes": size, "bits": bits,
            "group_size": group_size, **peak_memory()}
