"""What keeps other web pages, other machines and rebinding DNS names out of the dashboard (one ASGI middleware).

Every request passes three checks, in this order:

1. Host allow-list (DNS rebinding). The Host header must name loopback (localhost, *.localhost, 127.0.0.0/8,
   ::1), the address the server binds, a name in LORABOARD_ALLOWED_HOSTS, or, when bound to a wildcard address
   (0.0.0.0, ::), any IP literal: a rebinding attack needs a DNS name, never an address. Else 403.
2. Access token, when one is configured (LORABOARD_TOKEN, `--token`; required off loopback): `?token=`,
   `Authorization: Bearer <token>` or the cookie set after a visit with `?token=`, compared with
   hmac.compare_digest. Else 401. A page visited with `?token=` is redirected to the same address without it.
3. Cross-site requests. A state-changing request (POST, PUT, PATCH, DELETE) is refused with 403 unless it comes
   from the dashboard's own origin, judged by the first of these headers the request carries:
   `Origin` (must be this origin), else `Sec-Fetch-Site` (must be same-origin or none), else `Referer`
   (must be on this origin). A request carrying none of them is a script (curl, urllib) and passes, unless it
   carries a cookie: a browser that sends cookies but no origin information must also send the per-server
   CSRF token (header `X-CSRF-Token`, form field or query parameter `csrf_token`). Pages get the token from
   `<meta name="csrf-token">` (static/csrf.js adds the header to htmx requests) and hidden form fields; a
   SameSite=Strict cookie marks a browser that has loaded a page.

Refusals are a sentence (JSON `{"detail": ...}` for the API and scripts, plain text for pages) and happen
before the route runs, so nothing changes.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})
MAX_FORM_BYTES = 1 << 20  # a form read for its csrf_token field (uploads carry the token in the URL)
HOSTS_SETTING = "LORABOARD_ALLOWED_HOSTS"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # safe in a URL and a cookie as written


# Pure rules ------------------------------------------------------------------------------------------


def split_host(host: str) -> str:
    """The name or address of a Host header (or URL netloc), lower case, without port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    """localhost, *.localhost and loopback addresses (127.0.0.0/8, ::1)."""
    name = split_host(name)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _ip(name)
    return address is not None and address.is_loopback


def is_wildcard(bind_host: str) -> bool:
    address = _ip(split_host(bind_host))
    return address is not None and address.is_unspecified


def parse_hosts(text: str) -> frozenset[str]:
    """Names of LORABOARD_ALLOWED_HOSTS (comma- or space-separated)."""
    return frozenset(split_host(part) for part in text.replace(",", " ").split() if part.strip())


def host_allowed(host_header: str, bind_host: str, extra: Iterable[str] = ()) -> bool:
    """Whether the dashboard answers a request with this Host header (see the module docstring)."""
    name = split_host(host_header)
    if not name:
        return False
    if is_loopback(name) or name == split_host(bind_host) or name in set(extra):
        return True
    return is_wildcard(bind_host) and _ip(name) is not None


def host_refusal(host_header: str) -> str:
    name = split_host(host_header) or "(none)"
    return (f"loraboard answers only to loopback names and addresses, the address it binds and the names in "
            f"{HOSTS_SETTING}; this request was addressed to {name!r}. To allow it, start loraboard with "
            f"{HOSTS_SETTING}={name} (comma-separated for several names).")


def cross_site_problem(headers: dict[str, str], own_host: str) -> str | None:
    """Why a state-changing request is not from this dashboard's origin, or None (decided by the first header
    present of Origin, Sec-Fetch-Site, Referer; None also when none of them is present)."""
    own = own_host.strip().lower()
    if "origin" in headers:
        origin = headers["origin"].strip()
        parts = urlsplit(origin)
        if origin == "null" or parts.scheme not in ("http", "https") or parts.netloc.lower() != own:
            return f"it came from {origin!r}, not from this dashboard (http://{own})"
        return None
    if "sec-fetch-site" in headers:
        site = headers["sec-fetch-site"].strip().lower()
        return None if site in SAME_ORIGIN_FETCH else f"the browser marked it {site} (Sec-Fetch-Site)"
    if "referer" in headers:
        referer = urlsplit(headers["referer"].strip())
        if referer.netloc.lower() != own:
            return f"it came from a page on {referer.netloc or 'no host'!r}, not from this dashboard (http://{own})"
    return None


def has_origin_info(headers: dict[str, str]) -> bool:
    return any(name in headers for name in ("origin", "sec-fetch-site", "referer"))


def secret_matches(given: str | None, secret: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


def bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:  # a malformed Cookie header is no cookie
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def without_param(query: str, name: str) -> str:
    """The query string less one parameter."""
    return urlencode([(key, value) for key, value in parse_qsl(query, keep_blank_values=True) if key != name])


# The middleware -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """What the middleware enforces: the bound host, extra host names, the access token, the CSRF token."""

    bind_host: str
    port: int
    allowed_hosts: frozenset[str]
    token: str | None
    csrf_token: str

    def __post_init__(self) -> None:
        if self.token is not None and not TOKEN_PATTERN.fullmatch(self.token):
            raise ValueError("the access token must be 16 or more letters, digits, '.', '_', '~' or '-'")

    @property
    def token_cookie(self) -> str:  # cookies ignore ports: one name per port keeps two dashboards apart
        return f"loraboard_token_{self.port}"

    @property
    def csrf_cookie(self) -> str:
        return f"loraboard_csrf_{self.port}"


def _cookie(name: str, value: str, http_only: bool = True) -> tuple[bytes, bytes]:
    flags = "; HttpOnly" if http_only else ""
    return b"set-cookie", f"{name}={value}; Path=/; SameSite=Strict{flags}".encode()


class SecurityMiddleware:
    """Host allow-list, access token and cross-site refusal in front of the whole app (pure ASGI)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        guard = self.guard
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not host_allowed(host, guard.bind_host, guard.allowed_hosts):
            await refuse(scope, send, 403, host_refusal(host), headers)
            return
        jar = cookies(headers)
        query = scope.get("query_string", b"").decode("latin-1")
        params = parse_qs(query)
        set_cookies: list[tuple[bytes, bytes]] = []
        if guard.token is not None:
            from_query = (params.get("token") or [None])[0]
            if not any(secret_matches(given, guard.token)
                       for given in (from_query, bearer(headers), jar.get(guard.token_cookie))):
                await refuse(scope, send, 401, token_refusal(from_query or bearer(headers)), headers,
                             [(b"www-authenticate", b'Bearer realm="loraboard"')])
                return
            if from_query is not None and not secret_matches(jar.get(guard.token_cookie), guard.token):
                set_cookies.append(_cookie(guard.token_cookie, guard.token))
                if scope["type"] == "http" and scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
                    rest = without_param(query, "token")
                    location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
                    await redirect(send, location, set_cookies)
                    return
        if scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS:
            problem = cross_site_problem(headers, host)
            if problem is None and "cookie" in headers and not has_origin_info(headers):
                receive, problem = await self._csrf_check(scope, receive, headers, params)
            if problem is not None:
                await refuse(scope, send, 403, f"loraboard refused this cross-site request: {problem}; "
                             "nothing was changed.", headers)
                return
        if not secret_matches(jar.get(guard.csrf_cookie), guard.csrf_token):
            set_cookies.append(_cookie(guard.csrf_cookie, guard.csrf_token))
        await self.app(scope, receive, with_cookies(send, set_cookies))

    async def _csrf_check(
        self, scope: Scope, receive: Receive, headers: dict[str, str], params: dict[str, list[str]],
    ) -> tuple[Receive, str | None]:
        """A cookie-bearing request without origin information must carry the CSRF token."""
        secret = self.guard.csrf_token
        if secret_matches(headers.get("x-csrf-token"), secret) or secret_matches(
                (params.get("csrf_token") or [None])[0], secret):
            return receive, None
        missing = "it carries cookies but no Origin, Sec-Fetch-Site or Referer, and no CSRF token"
        if scope["type"] != "http" or not headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return receive, missing
        body, replay = await read_body(receive, MAX_FORM_BYTES)
        if body is None:
            return replay, missing
        field = (parse_qs(body.decode("latin-1")).get("csrf_token") or [None])[0]
        return replay, None if secret_matches(field, secret) else missing


def token_refusal(given: str | None) -> str:
    start = "the token given is not this dashboard's token" if given else "this dashboard needs its access token"
    return (f"{start}: open the link loraboard printed when it started (http://host:port/?token=...), or send "
            "the header 'Authorization: Bearer <token>' (the token is LORABOARD_TOKEN, --token, or the one kept in "
            "<data dir>/token).")


async def read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The whole request body (None past `limit` bytes) and a receive that hands the app the same messages."""
    messages: list[Message] = []
    size = 0
    more = True
    while more:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
        if size > limit:
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return (body if size <= limit and not more else None), replay


def with_cookies(send: Send, set_cookies: list[tuple[bytes, bytes]]) -> Send:
    """`send` that adds Set-Cookie headers (the CSRF cookie only to pages) to the response."""
    if not set_cookies:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            extra = [c for c in set_cookies if ctype.startswith(b"text/html") or b"loraboard_token_" in c[1]]
            message = {**message, "headers": headers + extra}
        await send(message)

    return sending


async def redirect(send: Send, location: str, set_cookies: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"), *set_cookies]})
    await send({"type": "http.response.body", "body": b""})


async def refuse(scope: Scope, send: Send, status: int, sentence: str, headers: dict[str, str],
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A sentence: JSON for the API and scripts, plain text for a browser's page (a websocket is closed)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": sentence[:120]})
        return
    wants_page = "text/html" in headers.get("accept", "") and not scope["path"].startswith("/api")
    if wants_page:
        body, ctype = sentence.encode(), b"text/plain; charset=utf-8"
    else:
        body, ctype = json.dumps({"detail": sentence}).encode(), b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


# Binding off loopback --------------------------------------------------------------------------------


class BindRefused(ValueError):
    """Serving off loopback without a token, and without --no-token: the message says what to do."""


def routable_addresses() -> list[str]:
    """Non-loopback addresses of this machine (the default route's source and the host name's), best effort."""
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    return [a for a in dict.fromkeys(str(x) for x in found) if not is_loopback(a) and not is_wildcard(a)]


def token_for_bind(host: str, token: str | None, no_token: bool, addresses: list[str]) -> str | None:
    """The access token to serve with: as given on loopback; required elsewhere unless no_token.

    Raises BindRefused (naming --token, LORABOARD_TOKEN and --no-token) for a non-loopback bind without one."""
    if no_token:
        return None
    if token and not TOKEN_PATTERN.fullmatch(token):
        raise BindRefused("loraboard: the access token must be 16 or more letters, digits, '.', '_', '~' or '-' "
                          "(--token alone generates one)")
    if token or is_loopback(host):
        return token or None
    reach = f" (this machine's addresses: {', '.join(addresses)})" if addresses else ""
    raise BindRefused(
        f"loraboard: refusing to serve on {host} without an access token: other machines could reach the "
        f"dashboard{reach} and start runs or read its files. Add --token to have one generated and printed "
        "(or --token VALUE, or set LORABOARD_TOKEN), or --no-token to serve without one anyway.")


def start_lines(host: str, port: int, token: str | None, no_token: bool, addresses: list[str]) -> list[str]:
    """What the command prints at start: the address to open (with ?token=) and, without a token off
    loopback, what that means."""
    query = f"/?token={token}" if token else "/"
    hosts = ["127.0.0.1", *addresses] if is_wildcard(host) else [host]
    lines = [f"loraboard: serving on http://{_url_host(h)}:{port}{query}" for h in hosts]
    if no_token and not is_loopback(host):
        lines.append("loraboard: --no-token: anyone who can reach this port can start and delete runs and read "
                     "datasets and adapters; use it only on a network you trust.")
    elif no_token:
        lines.append("loraboard: --no-token: any program or account on this machine can use the dashboard at this "
                     "address (start and delete runs, read datasets and adapters).")
    return lines


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
