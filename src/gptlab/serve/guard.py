"""Host and Origin checks against DNS rebinding and cross-origin requests from web pages.

A web page can make a browser send requests to ``127.0.0.1``: directly (cross-origin, with an
``Origin`` header) or by rebinding its own host name to 127.0.0.1 (same-origin for the browser,
but with the page's name in ``Host``). The server answers 403 unless ``Host`` names an allowed
host (loopback names always; more when the user allows them or binds a public address; a
request with no ``Host`` only when any name is allowed), and
unless a request's ``Origin``, when it has one, is an allowed origin (by default only the
server's own loopback origin; ``*`` allows any).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from gptlab.serve.errors import error_response

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(value: str) -> str:
    """Return the host part of a ``Host`` header or URL netloc, lower-case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare IPv6 address, or no port


def is_loopback(host: str) -> bool:
    """Return True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host_name(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str, allowed_hosts: Iterable[str] | None = None) -> list[str]:
    """Return the Host names to accept for a server bound to ``bind_host``.

    ``allowed_hosts`` given: exactly those (loopback names are always accepted as well).
    Otherwise a loopback bind accepts loopback names only, and any other bind (``0.0.0.0``,
    a LAN address) accepts any name (``["*"]``), as the user chose to be reachable.
    """
    if allowed_hosts:
        return [h.strip().lower() for h in allowed_hosts]
    return [] if is_loopback(bind_host) else ["*"]


class HostOriginGuard:
    """ASGI middleware: 403 (in the API's error shape) for a disallowed ``Host`` or ``Origin``.

    ``allowed_hosts``: extra host names (``*``: any); ``allowed_origins``: extra origins such
    as ``http://localhost:3000`` (``*``: any). Loopback host names are always accepted, and
    an ``Origin`` equal to the server's own loopback origin (scheme://Host) too.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()):
        self.app = app
        self.hosts = {host_name(h) if h != "*" else "*" for h in allowed_hosts}
        self.origins = {o.strip().rstrip("/").lower() for o in allowed_origins}

    def host_ok(self, host: str) -> bool:
        """Return True when the ``Host`` header value ``host`` may be answered.

        A request without one (HTTP/1.0 allows it) is answered only when any host is allowed (``*``).
        """
        name = host_name(host)
        return "*" in self.hosts or (bool(name) and (name in self.hosts or is_loopback(name)))

    def origin_ok(self, origin: str, host: str, scheme: str) -> bool:
        """Return True when a request from ``origin`` (its ``Origin`` header) to ``scheme://host`` may be answered."""
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        return origin == f"{scheme}://{host.lower()}" and is_loopback(parts.hostname or "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        host, origin, path = headers.get("host", ""), headers.get("origin"), scope.get("path", "")
        if not host.strip() and not self.host_ok(host):
            message = "a request without a Host header is not answered (DNS rebinding guard); send Host: localhost"
            await error_response(path, 403, message, code="host_not_allowed")(scope, receive, send)
            return
        if not self.host_ok(host):
            message = f"Host {host!r} is not allowed (DNS rebinding guard); add it with --allow-host {host_name(host) or 'NAME'}"
            await error_response(path, 403, message, code="host_not_allowed")(scope, receive, send)
            return
        if origin is not None and not self.origin_ok(origin, host, scope.get("scheme", "http")):
            message = f"Origin {origin!r} is not allowed (cross-origin request); allow it with --allow-origin {origin}"
            await error_response(path, 403, message, code="origin_not_allowed")(scope, receive, send)
            return
        await self.app(scope, receive, send)
