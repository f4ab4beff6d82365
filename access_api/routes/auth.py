"""Login (password -> short-lived token), who-am-I, and liveness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import literal, select

from access_api.deps import Caller, ServicesDep, requires
from access_api.policy import Action
from access_api.principals import authenticate, view_of
from vault.db import Prepared
from vault.errors import RateLimited, Unauthenticated

router = APIRouter(tags=["auth"])

Public = Annotated[str, Depends(requires(Action.PUBLIC))]
Anyone = Annotated[Caller, Depends(requires(Action.AUTHENTICATED))]


class TokenRequest(BaseModel):
    model_config = {"extra": "forbid"}

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class MeOut(BaseModel):
    name: str
    roles: list[str]
    sites: list[str]


class HealthOut(BaseModel):
    status: str


_PING = Prepared(select(literal(1).label("ok")))


@router.get("/healthz", response_model=HealthOut)
async def healthz(services: ServicesDep, _client: Public) -> HealthOut:
    """Liveness and catalog reachability; says nothing about footage. An unreachable catalog
    answers 503."""
    await services.read(lambda conn: _PING.rows(conn, {}))
    return HealthOut(status="ok")


@router.post("/auth/token", response_model=TokenOut)
def token(body: TokenRequest, services: ServicesDep, client: Public) -> TokenOut:
    """Exchange a local user's password for a 15-minute EdDSA token.

    Failures answer alike (401) whatever the cause; the ledger records the cause. Too many
    failures from one client or for one name answer 429 with ``Retry-After``.
    """
    now = services.ctx.clock.now()
    name = body.username.strip().lower()
    auditor = services.auditor
    for window, key, scope in (
        (services.client_failures, client, "client"),
        (services.user_failures, name, "user"),
    ):
        wait = window.retry_after(key, now)
        if wait:
            auditor.record(
                name, "auth.login", f"user:{name}", "refused",
                reason=f"rate-limited: too many failed logins for this {scope}", client=client,
            )
            raise RateLimited(f"too many failed logins; retry in {wait} s", wait)
    with services.uow() as session:
        result = authenticate(session, name, body.password, now, services.login_limits)
        view = view_of(result.principal) if result.ok and result.principal else None
    if view is None:
        services.client_failures.record_failure(client, now)
        services.user_failures.record_failure(name, now)
        reason = result.reason + ("; account locked" if result.locked_now else "")
        auditor.record(name, "auth.login", f"user:{name}", "refused", reason=reason, client=client)
        raise Unauthenticated("wrong user name or password, or the account cannot log in now")
    auditor.record(view, "auth.login", f"user:{name}", "allowed", reason="password", client=client)
    access_token, expires_in = services.tokens.issue(name)
    return TokenOut(access_token=access_token, expires_in=expires_in)


@router.get("/me", response_model=MeOut)
def me(caller: Anyone) -> MeOut:
    p = caller.principal
    return MeOut(name=p.name, roles=sorted(p.roles), sites=sorted(p.sites))
