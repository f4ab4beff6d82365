"""Administration of principals: list, disable, enable, unlock. Creation is by the CLI."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from access_api.deps import Caller, ServicesDep, requires
from access_api.policy import Action
from access_api.principals import get_user, list_users, set_disabled, unlock
from vault.models import Principal

router = APIRouter(tags=["users"])

Admin = Annotated[Caller, Depends(requires(Action.USERS_MANAGE))]
UserName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._@-]{1,63}$")]


class UserOut(BaseModel):
    name: str
    roles: list[str]
    sites: list[str]
    kind: str
    disabled: bool
    locked_until: datetime | None
    created_at: datetime


def _out(user: Principal) -> UserOut:
    return UserOut(
        name=user.name,
        roles=json.loads(user.roles),
        sites=json.loads(user.sites),
        kind="external" if user.external_subject else "local",
        disabled=user.disabled,
        locked_until=user.locked_until,
        created_at=user.created_at,
    )


@router.get("/users", response_model=list[UserOut])
def users(caller: Admin, services: ServicesDep) -> list[UserOut]:
    with services.uow() as session:
        rows = list_users(session)
    services.auditor.record(
        caller.principal, "users.list", "users", "allowed", reason="role: admin",
        client=caller.client,
    )
    return [_out(u) for u in rows]


def _change(name: str, caller: Caller, services: ServicesDep, change: str) -> UserOut:
    now = services.ctx.clock.now()
    with services.uow() as session:
        get_user(session, name)  # 404 before anything is logged as done
        services.auditor.record(
            caller.principal, f"users.{change}", f"user:{name}", "allowed",
            reason="role: admin", client=caller.client,
        )
        if change == "unlock":
            user = unlock(session, name, now)
        else:
            user = set_disabled(session, name, change == "disable", now)
    return _out(user)


@router.post("/users/{name}/disable", response_model=UserOut)
def disable(name: UserName, caller: Admin, services: ServicesDep) -> UserOut:
    """Disable an account: its tokens stop working with the next request."""
    return _change(name, caller, services, "disable")


@router.post("/users/{name}/enable", response_model=UserOut)
def enable(name: UserName, caller: Admin, services: ServicesDep) -> UserOut:
    return _change(name, caller, services, "enable")


@router.post("/users/{name}/unlock", response_model=UserOut)
def unlock_user(name: UserName, caller: Admin, services: ServicesDep) -> UserOut:
    """Lift a lockout caused by repeated failed logins."""
    return _change(name, caller, services, "unlock")
