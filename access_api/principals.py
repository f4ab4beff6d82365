"""Principals: local users (created by the CLI), external ones (known by their OIDC subject).

A service: plain functions over a session; the unit of work commits. Nothing here logs a
password or a hash (I9).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from access_api.auth.passwords import hash_password, verify_password
from access_api.auth.tokens import Identity
from access_api.policy import ALL_SITES, PrincipalView, Role
from vault.db import Prepared
from vault.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from vault.models import Principal, Site
from vault.timerange import as_utc

__all__ = [
    "LoginLimits",
    "LoginResult",
    "add_user",
    "authenticate",
    "get_user",
    "list_users",
    "resolve",
    "set_disabled",
    "set_password",
    "unlock",
    "view_of",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")


def _roles(values: Sequence[str]) -> list[str]:
    roles = []
    for value in values:
        try:
            roles.append(Role(value).value)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidInput(f"unknown role {value!r}; roles are {known}") from None
    if not roles:
        raise InvalidInput("a user has at least one role")
    return sorted(set(roles))


def _sites(session: Session, values: Sequence[str]) -> list[str]:
    sites = sorted(set(values))
    for site in sites:
        if site != ALL_SITES and session.get(Site, site) is None:
            raise InvalidInput(f"unknown site {site!r}")
    return sites


def view_of(principal: Principal) -> PrincipalView:
    return _view(principal.name, principal.roles, principal.sites)


def get_user(session: Session, name: str) -> Principal:
    user = session.exec(select(Principal).where(Principal.name == name)).first()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


def list_users(session: Session) -> list[Principal]:
    return list(session.exec(select(Principal).order_by(col(Principal.name))))


def add_user(
    session: Session,
    name: str,
    roles: Sequence[str],
    sites: Sequence[str],
    now: datetime,
    password: str | None = None,
    external_subject: str | None = None,
) -> Principal:
    if not _NAME.match(name):
        raise InvalidInput(
            "a user name is 2-64 characters: lower-case letters, digits, '.', '_', '@', '-'"
        )
    if session.exec(select(Principal).where(Principal.name == name)).first() is not None:
        raise Conflict(f"user {name!r} already exists")
    role_list = _roles(roles)
    site_list = _sites(session, sites)
    needs_site = set(role_list) & {Role.OPERATOR, Role.SUPERVISOR}
    if needs_site and not site_list:
        raise InvalidInput("operators and supervisors are bound to at least one --site")
    user = Principal(
        id=str(uuid.uuid4()),
        name=name,
        roles=json.dumps(role_list),
        sites=json.dumps(site_list),
        password_hash=hash_password(password) if password is not None else None,
        external_subject=external_subject,
        created_at=as_utc(now),
        updated_at=as_utc(now),
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, name: str, password: str, now: datetime) -> Principal:
    user = get_user(session, name)
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    user.updated_at = as_utc(now)
    session.add(user)
    return user


def set_disabled(session: Session, name: str, disabled: bool, now: datetime) -> Principal:
    user = get_user(session, name)
    user.disabled = disabled
    user.updated_at = as_utc(now)
    session.add(user)
    return user


def unlock(session: Session, name: str, now: datetime) -> Principal:
    user = get_user(session, name)
    user.failed_logins = 0
    user.locked_until = None
    user.updated_at = as_utc(now)
    session.add(user)
    return user


@dataclass(frozen=True)
class LoginLimits:
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    reason: str  # "ok" | "bad-credentials" | "locked" | "disabled"
    principal: Principal | None = None
    locked_now: bool = False


def authenticate(
    session: Session, name: str, password: str, now: datetime, limits: LoginLimits
) -> LoginResult:
    """Check a password login and keep the per-user failure count and lockout.

    Unknown users, wrong passwords, disabled and locked accounts all cost one password hash
    and answer alike to the caller; only the ledger learns which it was.
    """
    user = session.exec(select(Principal).where(Principal.name == name)).first()
    matches = verify_password(user.password_hash if user else None, password)
    if user is None:
        return LoginResult(False, "bad-credentials")
    if user.disabled:
        return LoginResult(False, "disabled", user)
    if user.locked_until is not None and as_utc(user.locked_until) > now:
        return LoginResult(False, "locked", user)
    if not matches:
        user.failed_logins += 1
        locked_now = user.failed_logins >= limits.max_failures
        if locked_now:
            user.locked_until = now + limits.lockout
            user.failed_logins = 0
        user.updated_at = now
        session.add(user)
        return LoginResult(False, "bad-credentials", user, locked_now)
    if user.failed_logins or user.locked_until is not None:
        user.failed_logins = 0
        user.locked_until = None
        session.add(user)
    return LoginResult(True, "ok", user)


_P = Principal.__table__.c  # type: ignore[attr-defined]
# Read on every authenticated request: plain Core, compiled once, run on the cursor.
_BY_NAME = Prepared(core_select(
    _P.name, _P.roles, _P.sites, _P.disabled, _P.external_subject
).where(_P.name == bindparam("key")))
_BY_SUBJECT = Prepared(core_select(
    _P.name, _P.roles, _P.sites, _P.disabled, _P.external_subject
).where(_P.external_subject == bindparam("key")))


def _view(name: str, roles: str, sites: str) -> PrincipalView:
    return PrincipalView(
        name=name,
        roles=frozenset(Role(r) for r in json.loads(roles)),
        sites=frozenset(json.loads(sites)),
    )


def resolve(conn: Connection, identity: Identity) -> PrincipalView:
    """Turn a verified token identity into who the caller is now (I4: deny by default).

    Local: the catalog row decides roles, sites and whether the account still works.
    External: the issuer's claims decide roles and sites, unless an administrator registered
    the subject here, in which case it can be disabled and its sites pinned.
    """
    if identity.kind == "local":
        user = next(iter(_BY_NAME.rows(conn, {"key": identity.name})), None)
        if user is None or user.external_subject is not None:
            raise Unauthenticated("unknown principal")
        if user.disabled:
            raise Unauthenticated("account disabled")
        return _view(user.name, user.roles, user.sites)
    pinned = next(iter(_BY_SUBJECT.rows(conn, {"key": identity.subject})), None)
    if pinned is not None:
        if pinned.disabled:
            raise Unauthenticated("account disabled")
        return _view(pinned.name, pinned.roles, pinned.sites)
    roles = frozenset(Role(r) for r in identity.roles if r in Role._value2member_map_)
    if not roles:
        raise Unauthenticated("the identity provider grants no cctv-vault role")
    # Prefixed so an external person never shares grants with a local user of the same name.
    return PrincipalView(
        name=f"oidc:{identity.name}", roles=roles, sites=frozenset(identity.sites)
    )
