"""RFC 9457 problem details: the one place where error kinds become HTTP statuses.

Domain errors know nothing of HTTP; this module maps :class:`vault.errors.ErrorKind` to a
status, and shapes every error the API can produce — domain errors, request validation, unknown
routes — as ``application/problem+json``. Bodies never carry secrets, stack traces or anything
outside the caller's scope (I4, I9).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vault.errors import ErrorKind, Forbidden, RateLimited, VaultError

__all__ = ["PROBLEM_JSON", "STATUS_OF", "install", "problem"]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_OF: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.INTEGRITY: 500,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.CONFIG: 500,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.RATE_LIMITED: 429,
}

_TITLES: dict[ErrorKind, str] = {
    ErrorKind.INVALID_INPUT: "Invalid input",
    ErrorKind.NOT_FOUND: "Not found",
    ErrorKind.CONFLICT: "Conflict",
    ErrorKind.INTEGRITY: "Stored footage failed its integrity check",
    ErrorKind.UNAVAILABLE: "Temporarily unavailable",
    ErrorKind.CONFIG: "Server misconfigured",
    ErrorKind.FORBIDDEN: "Forbidden",
    ErrorKind.UNAUTHENTICATED: "Authentication required",
    ErrorKind.RATE_LIMITED: "Too many attempts",
}


def problem(
    kind: ErrorKind,
    detail: str,
    instance: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    status = STATUS_OF[kind]
    body: dict[str, Any] = {
        "type": f"urn:cctv-vault:problem:{kind.value}",
        "title": _TITLES[kind],
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update(extra or {})
    hdrs = dict(headers or {})
    if kind is ErrorKind.UNAUTHENTICATED:
        hdrs.setdefault("WWW-Authenticate", 'Bearer realm="cctv-vault"')
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=hdrs)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "request"


async def _vault_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VaultError)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, Forbidden):
        extra["rule"] = exc.rule
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.kind in (ErrorKind.INTEGRITY, ErrorKind.CONFIG):
        log.error("request %s %s failed: %s", request.method, request.url.path, exc.kind)
    return problem(exc.kind, exc.message, request.url.path, extra=extra, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _location(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "request", "message": "invalid"}
    detail = f"{first['field']}: {first['message']}"
    return problem(
        ErrorKind.INVALID_INPUT, detail, request.url.path, extra={"errors": errors}
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kinds = {404: ErrorKind.NOT_FOUND, 401: ErrorKind.UNAUTHENTICATED, 403: ErrorKind.FORBIDDEN}
    kind = kinds.get(exc.status_code)
    if kind is None:
        body = {
            "type": "about:blank",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "instance": request.url.path,
        }
        return JSONResponse(
            body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers
        )
    detail = "no such resource" if kind is ErrorKind.NOT_FOUND else str(exc.detail)
    return problem(kind, detail, request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {
        "type": "urn:cctv-vault:problem:internal",
        "title": "Internal error",
        "status": 500,
        "detail": "the server failed; the incident is logged",
        "instance": request.url.path,
    }
    return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)


def install(app: FastAPI) -> None:
    app.add_exception_handler(VaultError, _vault_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
