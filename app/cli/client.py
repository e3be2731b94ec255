"""A small HTTP client of loraboard's API for the command line (standard library, and the token kept for this
account: app/access_token.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from app.access_token import TokenFileError, read_token, token_path
from app.contract.settings import Settings
from app.security import is_loopback

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "LORABOARD_URL"
TOKEN_ENV = "LORABOARD_TOKEN"


class ApiError(Exception):
    """The server refused a request, or could not be reached; the message is the API's own words."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def problem_lines(detail: Any) -> list[str]:
    """An API error's detail as lines: a sentence, or one line per bad field ("field.path: message")."""
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc") or item.get("path", "").split(".") if str(p) not in ("body", "")]
            where = ".".join(loc)
            if item.get("line"):
                where += f" (line {item['line']})"
            lines.append(f"{where}: {item.get('msg') or item.get('message')}" if where else
                         str(item.get("msg") or item.get("message") or item))
        return lines
    return [str(detail)]


def kept_token(url: str) -> str | None:
    """The token `loraboard serve` keeps for this account (<data dir>/token), for a dashboard on this machine only:
    a remote address never gets it."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not is_loopback(host):
        return None
    try:
        return read_token(token_path(Settings().data_dir))
    except TokenFileError:
        return None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Client:
    url: str = DEFAULT_URL
    token: str | None = None
    timeout_s: float = 60.0

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json", query: dict[str, Any] | None = None) -> Response:
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        address = self.url.rstrip("/") + path
        if query:
            address += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        token = self.token or kept_token(self.url)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(address, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return Response(resp.status, resp.read(), resp.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                detail = json.loads(payload).get("detail", payload.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = payload.decode(errors="replace").strip() or err.reason
            raise ApiError("\n".join(problem_lines(detail)), err.code) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ApiError(f"cannot reach loraboard at {self.url} ({reason}): is `loraboard serve` running? "
                           f"(--url or {URL_ENV} names another address)") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None).json()

    def post(self, path: str, body: Any = None) -> Any:
        answer = self.request("POST", path, body if body is not None else {})
        return answer.json() if "json" in answer.content_type else None
