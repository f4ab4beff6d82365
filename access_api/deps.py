"""Typed dependencies: the services of this process, and who the caller is.

Every route declares its permission through :func:`requires` (I4). The dependency
authenticates the bearer token, resolves the principal from the catalog on every request (so a
disabled account stops at once), makes the role-level decision, and logs any refusal before
raising it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Connection
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from access_api.audit import Auditor
from access_api.auth.ratelimit import FailureWindow
from access_api.auth.tokens import Identity, TokenService
from access_api.policy import AccessPolicy, Action, PrincipalView, ScopeFacts, decide
from access_api.principals import LoginLimits, resolve
from vault.db import reading, unit_of_work
from vault.errors import Forbidden, Unauthenticated
from vault.lifecycle import VaultContext

__all__ = [
    "PERMISSION_ATTR",
    "ApiServices",
    "Caller",
    "CameraId",
    "ObjectId",
    "ServicesDep",
    "requires",
]

PERMISSION_ATTR = "__permission__"

CameraId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Camera id")]
ObjectId = Annotated[UUID, Path(description="A UUID")]


@dataclass
class ApiServices:
    """What one API process works with; built once by the composition root."""

    ctx: VaultContext
    auditor: Auditor
    tokens: TokenService
    policy: AccessPolicy
    login_limits: LoginLimits
    client_failures: FailureWindow
    user_failures: FailureWindow

    @contextmanager
    def uow(self) -> Iterator[Session]:
        with unit_of_work(self.ctx.engine) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A catalog connection for the reads of a hot path (no ORM session)."""
        with reading(self.ctx.engine) as conn:
            yield conn


async def _services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


ServicesDep = Annotated[ApiServices, Depends(_services)]

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /auth/token or OIDC")


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request and where the request came from."""

    principal: PrincipalView
    client: str


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def requires(action: Action) -> Callable[..., Any]:
    """The dependency a route uses to declare (and enforce) its permission."""
    if action is Action.PUBLIC:

        async def public(request: Request) -> str:
            return client_of(request)

        setattr(public, PERMISSION_ATTR, action)
        return public

    async def authorized(
        request: Request,
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        # Async, so the dependency costs no thread hand-off of its own: the token is checked
        # on the event loop (pure CPU, cached per token), and only the catalog read and any
        # refusal's durable ledger event go to a worker thread, in one hop.
        client = client_of(request)
        route_path = getattr(request.scope.get("route"), "path", request.url.path)
        target = f"route:{request.method} {route_path}"
        try:
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise Unauthenticated("a bearer token is required")
            identity = services.tokens.verify(credentials.credentials)
        except Unauthenticated as exc:
            await services.auditor.arecord(
                "anonymous", "auth.token", target, "refused", reason=exc.message, client=client
            )
            raise
        return await run_in_threadpool(_authorize, services, identity, action, target, client)

    setattr(authorized, PERMISSION_ATTR, action)
    return authorized


def _authorize(
    services: ApiServices, identity: Identity, action: Action, target: str, client: str
) -> Caller:
    """Who the verified identity is now, and the role-level decision (run in a worker thread:
    it reads the catalog and, on refusal, waits for the ledger)."""
    who = identity.name if identity.kind == "local" else f"oidc:{identity.name}"
    try:
        with services.reading() as conn:
            principal = resolve(conn, identity)
    except Unauthenticated as exc:
        services.auditor.record(
            who, "auth.token", target, "refused", reason=exc.message, client=client
        )
        raise
    decision = decide(principal, action, ScopeFacts(), services.ctx.clock.now())
    if not decision.allowed:
        services.auditor.decision(principal, str(action), target, decision, client=client)
        raise Forbidden(decision.reason, decision.rule)
    return Caller(principal=principal, client=client)


def declared_permissions(dependant: Any) -> list[Action]:
    """The permissions a route's dependency tree declares (used by the route-walk test)."""
    found: list[Action] = []
    for dep in dependant.dependencies:
        permission = getattr(dep.call, PERMISSION_ATTR, None)
        if permission is not None:
            found.append(permission)
        found.extend(declared_permissions(dep))
    return found
