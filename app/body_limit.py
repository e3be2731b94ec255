"""Bounds on what a request body may cost to parse (one ASGI middleware, inside SecurityMiddleware).

Every request body except a dataset upload (which streams to disk under its own limit, `max_upload_mb`) is read
whole before the route runs, and refused when it is larger than MAX_BODY_BYTES (413): run configs, YAML, forms
and JSON bodies are all far smaller. A JSON body nested more than MAX_JSON_DEPTH levels is refused (422) before
anything parses it: Python's JSON reader would recurse until it fails, answering only "error parsing the body".
Refusals are a sentence, as SecurityMiddleware's are.
"""

from __future__ import annotations

import re
from itertools import accumulate

from starlette.concurrency import run_in_threadpool

from app.security import ASGIApp, Message, Receive, Scope, Send, refuse

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a run config is a few kB, a playground request at most a few hundred
MAX_JSON_DEPTH = 32  # arrays and objects inside one another; loraboard's bodies need five or six
SMALL_BODY = 64 << 10  # a larger JSON body is measured off the event loop
UPLOAD_PATHS = frozenset({"/datasets/upload", "/api/datasets/upload"})  # limited by max_upload_mb as they stream

_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = [0] * 256  # +1 for an opening bracket, -1 for a closing one, per byte value
for _byte, _step in ((b"[", 1), (b"{", 1), (b"]", -1), (b"}", -1)):
    _NESTING[_byte[0]] = _step


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings do not count)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    steps = accumulate(map(_NESTING.__getitem__, brackets))
    return max(steps, default=0)


def is_json(content_type: str) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON (application/json, application/*+json)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def declared_size(value: str | None) -> int | None:
    """The Content-Length header as a number (None when absent or not a number)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def too_large(limit: int) -> str:
    return (f"the request body is larger than {limit:,} bytes ({limit / (1 << 20):g} MiB), the most loraboard "
            "reads for a run config, a form or a JSON request (datasets are uploaded at /api/datasets/upload); "
            "nothing was changed.")


def too_deep(limit: int) -> str:
    return (f"the request body is nested too deeply (more than {limit} levels of arrays and objects); "
            "nothing was changed.")


async def read_whole(receive: Receive, limit: int) -> tuple[list[Message], int]:
    """The request's messages up to the end of its body, a disconnect or the first past `limit` bytes, and
    the body's size so far."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, size
        size += len(message.get("body", b""))
        if size > limit or not message.get("more_body", False):
            return messages, size


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands the app these messages first, then the connection's own."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


class BodyLimitMiddleware:
    """Reads each request body (up to `limit` bytes) before the app does; refuses too large or too deep ones."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.limit = limit
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        size = declared_size(headers.get("content-length"))
        if size is not None and size > self.limit:
            await refuse(scope, send, 413, too_large(self.limit), headers)
            return
        messages, size = await read_whole(receive, self.limit)
        if size > self.limit:
            await refuse(scope, send, 413, too_large(self.limit), headers)
            return
        if is_json(headers.get("content-type", "")):
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
            depth = json_depth(body) if len(body) < SMALL_BODY else await run_in_threadpool(json_depth, body)
            if depth > self.max_depth:
                await refuse(scope, send, 422, too_deep(self.max_depth), headers)
                return
        await self.app(scope, replaying(messages, receive), send)
