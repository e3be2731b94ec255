"""The `fuse` job (worker/job.py): a checkpoint merged into a full model folder, as `mlx_lm fuse` does it.

The base model is loaded with the checkpoint's `--adapter-path` folder
(app/contract/paths.ensure_checkpoint_adapter_dir), every LoRA/DoRA linear is fused (`m.fuse(dequantize=...)`),
optionally the model is dequantized, and the folder is written with mlx_lm.utils.save under a temporary name (the
base model's own tokenizer files copied over the ones it wrote), then renamed and registered. A full fine-tuning
checkpoint holds whole weights: loading them is the fuse. Progress: three steps (load, fuse, save).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.contract.kinds import FuseParams
from app.contract.paths import ensure_checkpoint_adapter_dir
from worker.job import JobContext, JobInputError
from worker.model_output import check_free, folder_bytes, peak_memory, register, writing

# The tokenizer's own files: fusing changes weights only, so these stay as the base model has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def keep_source_tokenizer(base: str, folder: Path) -> list[str]:
    """Copy the base model's tokenizer files over those mlx_lm's save wrote, and return their names. The save
    writes the tokenizer transformers rebuilt, which can differ from the original file (SmolLM2's tokenizer.json
    loses its digit-splitting pre-tokenizer step), and the fused model must tokenize as its base does."""
    import shutil

    from mlx_lm.utils import hf_repo_to_path

    source = Path(base) if Path(base).is_dir() else Path(hf_repo_to_path(base))
    kept = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in kept:
        shutil.copyfile(source / name, folder / name)
    return kept


def run(ctx: JobContext[FuseParams]) -> dict[str, Any]:
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, load, save

    params = ctx.params
    run_id, iteration, base = params.run_id, params.iteration, params.model
    dest, dequantize = Path(params.dest), params.dequantize
    db_path = ctx.settings.database_path
    check_free(db_path, dest)
    try:
        adapter_dir = ensure_checkpoint_adapter_dir(ctx.settings, run_id, iteration)
    except FileNotFoundError as exc:
        raise JobInputError(f"checkpoint {iteration:,} of run {run_id} cannot be fused: {exc.filename} is missing "
                            "(deleted since the request?)") from None
    ctx.set_total(3, "steps")
    ctx.detail = f"loading {Path(base).name} with checkpoint {iteration:,}"
    model, tokenizer, config = load(base, adapter_path=str(adapter_dir), return_config=True)
    ctx.advance()
    ctx.check_stop()
    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules()
             if hasattr(module, "fuse")]
    ctx.detail = f"fusing {len(fused)} adapted layers" if fused else "full fine-tuning weights: nothing to fuse"
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    ctx.advance()
    ctx.check_stop()
    ctx.detail = f"saving {dest.name}"
    with writing(dest) as temp:
        save(temp, base, model, tokenizer, config, donate_model=False)
        keep_source_tokenizer(base, temp)
        ctx.check_stop()
    ctx.advance()
    quant = config.get("quantization") if isinstance(config.get("quantization"), dict) else {}
    size = folder_bytes(dest)
    register(db_path, {"name": dest.name, "path": str(dest.resolve()), "origin": "fused", "source_model": base,
                       "run_id": run_id, "iteration": iteration, "job_id": ctx.job_id, "bits": quant.get("bits"),
                       "group_size": quant.get("group_size"), "dequantized": dequantize, "size_bytes": size},
             ctx.settings.db_unwritable_limit_s)
    ctx.detail = f"fused into {dest.name}"
    return {"name": dest.name, "path": str(dest.resolve()), "size_bytes": size, "fused_layers": len(fused),
            "adapter_path": str(adapter_dir), **peak_memory()}
