"""Dataset upload: multipart streamed straight to a temp folder with a per-file size limit, checked, then renamed.

A bad upload (too large, wrong field, bad name, a file:line validation error) leaves nothing behind: the files
are written to `<datasets dir>/.upload-<random>/` and that folder becomes `<datasets dir>/<name>/` only after
every check passed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import FormParserError, MultipartParser, parse_options_header
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.contract.settings import Settings
from app.datasets.registry import DatasetError, record_dataset, registry_problem
from app.datasets.validation import SPLITS, ValidationReport, validate_dataset
from app.tables import Dataset

TEXT_FIELD_LIMIT = 4096
TEXT_FIELDS = ("name",)


class UploadError(Exception):
    """The upload was refused: an HTTP status and a message (and the validation report when it failed)."""

    def __init__(self, status_code: int, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.report = report


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    handle: BinaryIO | None = None
    size: int = 0
    data: bytearray = field(default_factory=bytearray)


@dataclass
class UploadReceiver:
    """Parses a multipart body chunk by chunk, writing train/valid/test files into `folder` as they arrive."""

    folder: Path
    limit_bytes: int
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # split -> the file name the client sent
    _part: _Part = field(default_factory=_Part)
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._on_part_begin, "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end, "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished}

    def _on_part_begin(self) -> None:
        self._part, self._disposition = _Part(), b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        part = self._part
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            if part.name not in TEXT_FIELDS:
                raise UploadError(422, f"unexpected form field {part.name!r}: expected name and the files "
                                       "train, valid and test")
            return
        part.filename = options[b"filename"].decode("utf-8", "replace")
        if part.name not in SPLITS:
            raise UploadError(422, f"unexpected file field {part.name!r}: expected train, valid or test")
        if not part.filename:
            return  # a file input left empty
        if part.name in self.files:
            raise UploadError(422, f"{part.name}: more than one file was sent")
        if not part.filename.lower().endswith(".jsonl"):
            raise UploadError(422, f"{part.name}: expected a .jsonl file, got {part.filename!r}")
        self.files[part.name] = part.filename
        part.handle = (self.folder / f"{part.name}.jsonl").open("wb")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.filename is None:
            if part.size > TEXT_FIELD_LIMIT:
                raise UploadError(422, f"form field {part.name!r} is longer than {TEXT_FIELD_LIMIT} bytes")
            part.data += data[start:end]
        elif part.handle is not None:
            if part.size > self.limit_bytes:
                raise UploadError(413, f"{part.name}.jsonl ({part.filename}) is larger than the upload limit of "
                                       f"{self.limit_bytes // (1024 * 1024)} MB per file (max_upload_mb)")
            part.handle.write(data[start:end])

    def _on_part_end(self) -> None:
        part = self._part
        if part.handle is not None:
            part.handle.close()
            part.handle = None
        if part.filename is None and part.name:
            self.fields[part.name] = part.data.decode("utf-8", "replace")

    def close(self) -> None:
        if self._part.handle is not None:
            self._part.handle.close()
            self._part.handle = None

    async def receive(self, content_type: str, stream: AsyncIterator[bytes]) -> None:
        """Feed the whole body through the parser; on a refusal the rest is read and dropped, then it is raised."""
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise UploadError(415, "an upload must be multipart/form-data (fields: name, train, valid, test)")
        parser = MultipartParser(options[b"boundary"], self.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in stream:
                parser.write(chunk)
            parser.finalize()
        except (UploadError, FormParserError) as exc:
            async for _ in stream:  # a browser reads the answer only once it has sent its whole body
                pass
            if isinstance(exc, UploadError):
                raise
            raise UploadError(400, f"the upload is not valid multipart/form-data: {exc}") from None
        finally:
            self.close()


def body_too_large(content_length: str | None, limit_bytes: int) -> bool:
    """A body larger than three files at the limit (plus the form's overhead) is refused without parsing it."""
    try:
        return content_length is not None and int(content_length) > 3 * limit_bytes + 64 * 1024
    except ValueError:
        return False


async def receive_dataset_upload(
    session: Session, settings: Settings, content_type: str, content_length: str | None,
    stream: AsyncIterator[bytes],
) -> Dataset:
    """Store an uploaded dataset under <datasets dir>/<name>/ and register it; UploadError otherwise."""
    limit = settings.max_upload_mb * 1024 * 1024
    if body_too_large(content_length, limit):
        async for _ in stream:  # nothing is stored; read so that the client gets the answer, not a reset
            pass
        raise UploadError(413, f"the upload is larger than three files of {settings.max_upload_mb} MB "
                               "(max_upload_mb per file)")
    root = settings.local_datasets_dir
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".upload-{secrets.token_hex(8)}"
    temp.mkdir()
    try:
        receiver = UploadReceiver(temp, limit)
        await receiver.receive(content_type, stream)
        return await run_in_threadpool(_store, session, root, temp, receiver.fields.get("name", "").strip())
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _store(session: Session, root: Path, temp: Path, name: str) -> Dataset:
    """Check the received folder and move it into place; the registry row is written last."""
    target = root / name
    problem = registry_problem(session, name, target.resolve() if name else None)
    if problem is None and os.path.lexists(target):
        problem = f"folder {target} already exists: choose another name"
    if problem:
        raise UploadError(422, problem)
    report = validate_dataset(temp)
    if not report.ok:
        noun = "problem" if report.errors.count == 1 else "problems"
        raise UploadError(422, f"the upload has {report.errors.count:,} {noun}:\n{report.summary()}", report)
    temp.rename(target)
    try:
        return record_dataset(session, target.resolve(), name, "upload", report)
    except DatasetError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise UploadError(422, str(exc)) from None
