"""``cctv-vault users``: local principals. Each change is logged to the ledger with the change."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from sqlmodel import Session

from access_api.policy import Role
from access_api.principals import add_user, list_users, set_disabled, set_password, unlock
from cctv_vault.cli_common import fail, load_settings, operator
from cctv_vault.runtime import open_vault
from vault import ledger
from vault.db import unit_of_work
from vault.errors import VaultError
from vault.models import Principal
from vault.timerange import utcnow

__all__ = ["users_app"]

users_app = typer.Typer(no_args_is_help=True, help="Local users (principals) and their roles")

RoleOpt = Annotated[
    list[Role], typer.Option("--role", "-r", help="Role (repeat for several)", show_choices=True)
]
SiteOpt = Annotated[
    list[str] | None, typer.Option("--site", "-s", help="Site id, or '*' for all (repeatable)")
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input")
]






def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        fail("the two passwords differ")
    return first


def _change(
    action: str, name: str, apply: Callable[[Session], Principal], details: dict[str, object]
) -> Principal:
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        with unit_of_work(ctx.engine) as session:
            user = apply(session)
            # Same transaction: the change and its record commit together or not at all.
            ledger.append(
                session,
                at=ctx.clock.now(),
                actor=operator(),
                role="admin",
                action=action,
                target=f"user:{name}",
                decision="done",
                client="cli",
                details=details,
            )
    except VaultError as exc:
        fail(exc.message)
    return user


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name (lower case)")],
    role: RoleOpt,
    site: SiteOpt = None,
    password_stdin: PasswordStdin = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No local password (set one later)")
    ] = False,
) -> None:
    """Create a local user with roles and sites."""
    password = None if no_password else _read_password(password_stdin)
    sites = site or []
    user = _change(
        "users.add",
        name,
        lambda s: add_user(s, name, [r.value for r in role], sites, utcnow(), password=password),
        {"roles": sorted(r.value for r in role), "sites": sorted(sites)},
    )
    typer.echo(f"user {user.name} added: roles {user.roles}, sites {user.sites}")


@users_app.command("disable")
def users_disable(name: str) -> None:
    """Disable a user: their tokens stop working with the next request."""
    _change("users.disable", name, lambda s: set_disabled(s, name, True, utcnow()), {})
    typer.echo(f"user {name} disabled")


@users_app.command("enable")
def users_enable(name: str) -> None:
    _change("users.enable", name, lambda s: set_disabled(s, name, False, utcnow()), {})
    typer.echo(f"user {name} enabled")


@users_app.command("password")
def users_password(name: str, password_stdin: PasswordStdin = False) -> None:
    """Set or reset a user's password (also lifts a lockout)."""
    password = _read_password(password_stdin)
    _change("users.password", name, lambda s: set_password(s, name, password, utcnow()), {})
    typer.echo(f"password of {name} set")


@users_app.command("unlock")
def users_unlock(name: str) -> None:
    """Lift a lockout after repeated failed logins."""
    _change("users.unlock", name, lambda s: unlock(s, name, utcnow()), {})
    typer.echo(f"user {name} unlocked")


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        with unit_of_work(ctx.engine) as session:
            rows = list_users(session)
    except VaultError as exc:
        fail(exc.message)
    for u in rows:
        roles: list[str] = json.loads(u.roles)
        sites: list[str] = json.loads(u.sites)
        locked = u.locked_until.isoformat() if u.locked_until else None
        if as_json:
            record = {
                "name": u.name, "roles": roles, "sites": sites, "disabled": u.disabled,
                "locked_until": locked,
            }
            typer.echo(json.dumps(record))
        else:
            state = "disabled" if u.disabled else ("locked" if locked else "active")
            typer.echo(f"{u.name:24} {','.join(roles):30} {','.join(sites):20} {state}")
