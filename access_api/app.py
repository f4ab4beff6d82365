"""The FastAPI app factory. Settings and services are built by the caller, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from access_api import problems
from access_api.audit import AuditBarrier
from access_api.deps import BEARER_SCHEME, ApiServices, declared_permissions
from access_api.policy import Action
from access_api.routes import access, audit, auth, footage, retention, users

__all__ = ["create_app"]

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _SecurityHeaders:
    """Adds conservative headers to every response; footage routes add ``no-store`` too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    services: ApiServices, on_shutdown: Sequence[Callable[[], None]] = ()
) -> FastAPI:
    """The API over ``services``; ``on_shutdown`` runs when the server stops (flush the ledger)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for close in on_shutdown:
            close()

    app = FastAPI(
        lifespan=lifespan,
        # No request telemetry: spans and metrics would carry camera ids and principals out of
        # the audited path, and even unconfigured, FastAPI probed its providers per request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        title="cctv-vault access API",
        version="0.1.0",
        description=(
            "Purpose-bound, authorized and audited access to CCTV footage. Every footage "
            "response is preceded by its durable audit event; errors are RFC 9457 problems."
        ),
    )
    app.state.services = services
    problems.install(app)
    # Footage first: the router tries routes in order, and viewing calls are the hot path.
    for module in (footage, auth, access, audit, users, retention):
        app.include_router(module.router)
    # Inside the security headers, so that a 503 it answers instead carries them too.
    app.add_middleware(AuditBarrier, timeout_s=services.auditor.sink.write_timeout_s)
    app.add_middleware(_SecurityHeaders)
    _document_bearer_auth(app)
    return app


def _document_bearer_auth(app: FastAPI) -> None:
    """Every route whose declared permission is not public needs a bearer token: say so in the
    OpenAPI schema (the dependency reads the header itself, so FastAPI does not know it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Access token from POST /auth/token or the configured OIDC issuer",
        }
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            if declared_permissions(route.dependant) in ([], [Action.PUBLIC]):
                continue
            for method in route.methods or ():
                operation = schema["paths"][context.path][method.lower()]
                operation["security"] = [{BEARER_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
