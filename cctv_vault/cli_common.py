"""What every ``cctv-vault`` subcommand shares: settings, failing cleanly, who ran it."""

from __future__ import annotations

import getpass
import os
from typing import NoReturn

import typer
from pydantic import ValidationError

from vault.settings import Settings

__all__ = ["fail", "load_settings", "operator"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit (2: bad input or configuration)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    """The process settings, or exit 2 naming the first bad ``CCTV_*`` variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"invalid setting CCTV_{where.upper()}: {first['msg']}")


def operator() -> str:
    """Who ran the command, as the ledger attributes it: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"
