"""What both HTTP apps share: the error shape, CORS, and the Host guard (API.md, "Both APIs")."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = ["ApiError", "error_response", "make_middlewares"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_CORS_METHODS = "GET, HEAD, POST, OPTIONS"
_CORS_MAX_AGE = "86400"
# Typed request keys: aiohttp >= 3.14 warns (NotAppKeyWarning) on plain string keys.
_CORS_ORIGIN: web.RequestKey[str] = web.RequestKey("cors_origin")
_CORS_ON_PREPARE: web.RequestKey[Callable[[web.Request, web.StreamResponse], Awaitable[None]]] = (
    web.RequestKey("cors_on_prepare")
)


class ApiError(Exception):
    """An error a handler reports to the client as ``{"error", "errorCode"}`` with that status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    body = json.dumps({"error": message, "errorCode": status})
    return web.Response(status=status, text=body, content_type="application/json")


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header, without port or IPv6 brackets, lowercased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_loopback(name: str) -> bool:
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def make_middlewares(
    *, cors_origins: Iterable[str], allowed_hosts: Iterable[str]
) -> list[Middleware]:
    """Middlewares in order: Host guard, CORS (preflight + headers), error rendering."""
    origins = tuple(cors_origins)
    hosts = frozenset(h.lower() for h in allowed_hosts)

    def allow_origin(origin: str | None) -> str | None:
        if origin is None:
            return None
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    @web.middleware
    async def guard_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None:
            name = _host_name(host)
            if not (_is_loopback(name) or name in hosts):
                log.warning("http.host_rejected", extra={"host": host, "path": request.path})
                return error_response(403, f"host {host!r} is not allowed")
        origin = allow_origin(request.headers.get("Origin"))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = web.Response(status=204)
            if origin is not None:
                preflight.headers["Access-Control-Allow-Origin"] = origin
                preflight.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    preflight.headers["Access-Control-Allow-Headers"] = requested
                preflight.headers["Access-Control-Max-Age"] = _CORS_MAX_AGE
                if origin != "*":
                    preflight.headers["Vary"] = "Origin"
            return preflight
        if origin is not None:
            # Set before the handler runs so streaming responses carry it when they prepare.
            request[_CORS_ORIGIN] = origin

            async def on_prepare(req: web.Request, resp: web.StreamResponse) -> None:
                resp.headers.setdefault("Access-Control-Allow-Origin", origin)
                resp.headers.setdefault(
                    "Access-Control-Expose-Headers", "ETag, Content-Length, Content-Range"
                )
                if origin != "*":
                    resp.headers.setdefault("Vary", "Origin")

            request[_CORS_ON_PREPARE] = on_prepare
        return await handler(request)

    @web.middleware
    async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason or "error"
            if exc.status == 413:
                message = "request body too large"
            return error_response(
                exc.status, message.lower() if exc.status in (404, 405) else message
            )
        except (ConnectionResetError, TimeoutError):
            raise
        except Exception:
            log.exception(
                "http.internal_error", extra={"path": request.path, "method": request.method}
            )
            return error_response(500, "internal error")

    return [guard_and_cors, render_errors]


async def apply_cors_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: add the CORS headers the middleware chose for the request."""
    hook = request.get(_CORS_ON_PREPARE)
    if hook is not None:
        await hook(request, response)


def new_app(
    *, cors_origins: Iterable[str], allowed_hosts: Iterable[str], client_max_size: int
) -> web.Application:
    """A bare application with the shared middlewares and signals; each API adds its routes."""
    app = web.Application(
        middlewares=make_middlewares(cors_origins=cors_origins, allowed_hosts=allowed_hosts),
        client_max_size=client_max_size,
    )
    app.on_response_prepare.append(apply_cors_on_prepare)
    return app
