"""A safetensors file's header, read and checked the way the safetensors library checks it before a load.

The format: an 8-byte little-endian header length N, then N bytes of JSON ({name: {dtype, shape, data_offsets}}
plus an optional `__metadata__` of strings), then the tensors' bytes. Offsets count from the end of the header;
the tensors must fill the data exactly, one after another, each with as many bytes as its shape and dtype need.
Only the header is read: no tensor data, no mlx.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app import json_text

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DTYPE_BYTES: dict[str, int] = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class HeaderProblem(ValueError):
    """What is wrong with a safetensors file, worded to follow its name."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # data_offsets, from the end of the header
    end: int

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise HeaderProblem(f"not a safetensors file (its header names {key!r} twice)")
        seen[key] = value
    return seen


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, raw: Any) -> TensorEntry:
    """One tensor's header entry: a known dtype, a shape of counts, offsets that hold exactly its bytes."""
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= set(raw):
        raise HeaderProblem(f"tensor {name} lacks dtype, shape or data_offsets in the header")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise HeaderProblem(f"tensor {name} has the unknown dtype {json.dumps(dtype)[:40]} "
                            f"(safetensors knows {', '.join(DTYPE_BYTES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderProblem(f"tensor {name} has the shape {json.dumps(shape)[:80]}: expected a list of "
                            "non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise HeaderProblem(f"tensor {name} has the data_offsets {json.dumps(offsets)[:80]}: expected "
                            "[start, end] with 0 <= start <= end")
    entry = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    needed = entry.numel * DTYPE_BYTES[dtype]
    if entry.end - entry.start != needed:
        raise HeaderProblem(f"tensor {name}: its data_offsets {offsets} hold {entry.end - entry.start:,} bytes, "
                            f"its shape {list(shape)} of {dtype} needs {needed:,}")
    return entry


def parse_header(raw: bytes, data_bytes: int) -> dict[str, TensorEntry]:
    """Tensors of a header's JSON text, given how many bytes follow the header; HeaderProblem otherwise."""
    try:
        header = json_text.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise HeaderProblem(f"not a safetensors file (its header is not UTF-8 text: byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise HeaderProblem(f"not a safetensors file (its header is not valid JSON: {exc.msg} at "
                            f"character {exc.pos})") from None
    if not isinstance(header, dict):
        raise HeaderProblem(f"not a safetensors file (its header is a JSON {type(header).__name__}, "
                            "not an object)")
    metadata = header.pop("__metadata__", None) or {}  # mlx writes null
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderProblem("its __metadata__ is not a mapping of strings")
    tensors = {name: _entry(name, raw_entry) for name, raw_entry in header.items()}
    position, previous = 0, None
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != position:
            after = f"tensor {previous} ended at byte {position:,}" if previous else "the data starts at byte 0"
            raise HeaderProblem(f"tensor {name} starts at byte {entry.start:,} of the data, but {after} "
                                "(tensors overlap or leave a gap)")
        position, previous = entry.end, name
    if position != data_bytes:
        raise HeaderProblem(f"its tensors end at byte {position:,} of the data, but the file holds "
                            f"{data_bytes:,} data bytes after the header"
                            + (" (truncated?)" if position > data_bytes else " (bytes no tensor accounts for)"))
    return tensors


def read_header_from(handle: BinaryIO) -> dict[str, TensorEntry]:
    """The checked header of an open safetensors file (read from its start)."""
    size = os.fstat(handle.fileno()).st_size
    handle.seek(0)
    head = handle.read(8)
    if len(head) < 8:
        raise HeaderProblem(f"not a safetensors file ({size:,} bytes, shorter than the 8-byte header length)")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        limit = f"the file's {size:,} bytes" if 8 + length > size else f"the limit of {MAX_HEADER_BYTES:,}"
        raise HeaderProblem(f"not a safetensors file (its header length {length:,} exceeds {limit})")
    raw = handle.read(length)
    if len(raw) != length:
        raise HeaderProblem(f"the file changed while being read ({len(raw):,} of {length:,} header bytes)")
    return parse_header(raw, size - 8 - length)


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The checked header of the safetensors file at `path` (OSError when it cannot be opened)."""
    with path.open("rb") as handle:
        return read_header_from(handle)
