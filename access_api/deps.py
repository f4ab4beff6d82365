"""Typed dependencies: the services of this process, and who the caller is.

Every route declares its permission through :func:`requires` (I4). The dependency
authenticates the bearer token, resolves the principal from the catalog on every request (so a
disabled account stops at once), makes the role-level decision, and logs any refusal before
raising it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import Depends, Path, Request
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from access_api.audit import Auditor
from access_api.auth.ratelimit import FailureWindow
from access_api.auth.tokens import TokenService
from access_api.policy import AccessPolicy, Action, PrincipalView, ScopeFacts, decide
from access_api.principals import LoginLimits, resolve
from vault.db import reading, unit_of_work
from vault.errors import Forbidden, Unauthenticated, Unavailable
from vault.lifecycle import VaultContext

__all__ = [
    "BEARER_SCHEME",
    "PERMISSION_ATTR",
    "ApiServices",
    "Caller",
    "CameraId",
    "ObjectId",
    "ServicesDep",
    "requires",
]

PERMISSION_ATTR = "__permission__"
T = TypeVar("T")

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
    # The inline reads' own connection, held by the one thread (the event loop's) that uses it.
    _held: Connection | None = field(default=None, init=False, repr=False)
    _held_by: int | None = field(default=None, init=False, repr=False)

    @contextmanager
    def uow(self) -> Iterator[Session]:
        with unit_of_work(self.ctx.engine) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A catalog connection for the reads of a hot path (no ORM session)."""
        with reading(self.ctx.engine) as conn:
            yield conn

    @property
    def reads_inline(self) -> bool:
        return self.ctx.engine.dialect.name == "sqlite"

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` over a :meth:`reading` connection, for a request's few indexed lookups.

        On the embedded SQLite catalog the read runs on the event loop itself: it is CPU work
        in this process (tens of µs per statement), and handing it to a worker thread and back
        cost more than the read (two hand-offs were a quarter of a timeline call's CPU). On a
        database across a network the read waits for round trips, which must not stall the
        loop, so it goes to the thread pool.
        """
        if self.reads_inline:
            return self._read_inline(fn)
        return await run_in_threadpool(self._read, fn)

    def _read_inline(self, fn: Callable[[Connection], T]) -> T:
        # The loop's reads are sequential (nothing awaits inside ``fn``), so one connection held
        # by the loop's thread serves them all: no pool checkout and return per read (two per
        # timeline call). Another thread (a test client's portal) takes the pooled path. The
        # reads run no transaction (SQLite's driver begins none for a SELECT), so holding the
        # connection pins no snapshot; any transaction ``fn`` did begin is rolled back.
        thread = threading.get_ident()
        if self._held_by is None:
            self._held_by = thread
        if self._held_by != thread:
            with self.reading() as pooled:
                return fn(pooled)
        try:
            held = self._held
            if held is None or held.invalidated:
                held = self._held = self.ctx.engine.connect()
            try:
                return fn(held)
            finally:
                if held.in_transaction():
                    held.rollback()
        except OperationalError as exc:
            self.release()
            raise Unavailable(f"catalog unavailable: {type(exc.orig).__name__}") from exc

    def release(self) -> None:
        """Give the held connection back (on shutdown, or after it failed)."""
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(DBAPIError):
                held.close()

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self.reading() as conn:
            return fn(conn)


async def _services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


ServicesDep = Annotated[ApiServices, Depends(_services)]

BEARER_SCHEME = "bearer"  # documented in the OpenAPI schema by create_app, per declared permission


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


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

    async def authorized(request: Request) -> Caller:
        # Async, so the dependency costs no thread hand-off of its own: the token is checked
        # on the event loop (pure CPU, cached per token), the principal is read through
        # ApiServices.read, and a refusal's durable ledger event is awaited, not waited for.
        # One dependency with no sub-dependencies: on the hot path each one FastAPI resolves
        # per request is measurable (the bearer scheme is documented by create_app instead).
        services: ApiServices = request.app.state.services
        client = client_of(request)
        try:
            token = bearer_token(request)
            if token is None:
                raise Unauthenticated("a bearer token is required")
            identity = services.tokens.verify(token)
        except Unauthenticated as exc:
            await services.auditor.arecord(
                "anonymous", "auth.token", _target(request), "refused", reason=exc.message,
                client=client,
            )
            raise
        who = identity.name if identity.kind == "local" else f"oidc:{identity.name}"
        try:
            principal = await services.read(partial(resolve, identity=identity))
        except Unauthenticated as exc:
            await services.auditor.arecord(
                who, "auth.token", _target(request), "refused", reason=exc.message,
                client=client,
            )
            raise
        decision = decide(principal, action, ScopeFacts(), services.ctx.clock.now())
        if not decision.allowed:
            await services.auditor.adecision(
                principal, str(action), _target(request), decision, client=client
            )
            raise Forbidden(decision.reason, decision.rule)
        return Caller(principal=principal, client=client)

    setattr(authorized, PERMISSION_ATTR, action)
    return authorized


def _target(request: Request) -> str:
    """What a refused request asked for, as the ledger names it."""
    route_path = getattr(request.scope.get("route"), "path", request.url.path)
    return f"route:{request.method} {route_path}"


def declared_permissions(dependant: Any) -> list[Action]:
    """The permissions a route's dependency tree declares (used by the route-walk test)."""
    found: list[Action] = []
    for dep in dependant.dependencies:
        permission = getattr(dep.call, PERMISSION_ATTR, None)
        if permission is not None:
            found.append(permission)
        found.extend(declared_permissions(dep))
    return found
