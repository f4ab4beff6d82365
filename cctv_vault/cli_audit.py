"""``cctv-vault audit``: verify the ledger and write signed checkpoints (DESIGN §8).

Registered in :mod:`cctv_vault.cli` as ``app.add_typer(audit_app, name="audit")``. Exit codes:
0 verified (or checkpoint written / nothing to do), 1 the ledger does not verify, 2 the command
could not run (bad settings, catalog or store unavailable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cctv_vault.cli_common import fail, load_settings
from cctv_vault.runtime import open_vault
from vault.checkpoints import VerifyReport, verify, write_checkpoint
from vault.errors import ConfigError, VaultError
from vault.settings import Settings
from vault.signing import SigningKey, load_public_key

__all__ = ["audit_app"]

audit_app = typer.Typer(
    no_args_is_help=True, help="Audit ledger: verify the hash chain and its signed checkpoints"
)

PublicKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trusted checkpoint public key (PEM); repeatable. Default: the local ledger key",
    ),
]






def _trusted_keys(settings: Settings, paths: list[Path] | None) -> list[Ed25519PublicKey]:
    """The keys an auditor brings; on the vault host, the public half of the local ledger key.

    Verification never creates a key: with no key file there is nothing to trust, and every
    checkpoint is reported as signed by an unknown key.
    """
    if paths:
        keys = []
        for path in paths:
            try:
                keys.append(load_public_key(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read public key {path}: {exc}") from exc
        return keys
    key_file = settings.resolved_ledger_key_file
    if not key_file.exists():
        return []
    return [SigningKey.load_or_create(key_file).public]


def _print_report(report: VerifyReport) -> None:
    typer.echo(
        f"events: {report.events}, head: {report.head_seq}, checkpoints verified:"
        f" {report.checkpoints}, latest checkpoint: {report.latest_checkpoint_seq},"
        f" events after it: {report.unanchored}"
    )
    if report.ok:
        typer.echo("OK")
        return
    first = report.first_bad_seq
    lead = next((p for p in report.problems if p.seq == first), report.problems[0])
    if first is not None:
        typer.echo(f"FAIL first bad sequence number: {first} ({lead.kind}: {lead.detail})")
    else:
        typer.echo(f"FAIL {lead.kind}: {lead.detail}")
    for problem in report.problems:
        where = "-" if problem.seq is None else str(problem.seq)
        typer.echo(f"PROBLEM seq={where} {problem.kind}: {problem.detail}")


@audit_app.command("verify")
def verify_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
    public_key: PublicKeyOpt = None,
) -> None:
    """Recompute the chain, check every checkpoint; exit 1 naming the first bad sequence number."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        report = verify(ctx.engine, ctx.store, _trusted_keys(settings, public_key))
    except VaultError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("checkpoint")
def checkpoint_cmd() -> None:
    """Sign the chain head now and put the checkpoint, locked, in the object store."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
        row = write_checkpoint(ctx.engine, ctx.store, key, ctx.clock)
    except VaultError as exc:
        fail(exc.message)
    if row is None:
        typer.echo("nothing to checkpoint: the ledger is empty or its head is already signed")
    else:
        typer.echo(f"checkpoint seq={row.seq} hash={row.hash} key={row.key_id} {row.object_key}")


@audit_app.command("public-key")
def public_key_cmd() -> None:
    """Print the checkpoint public key (PEM) to hand to auditors for offline verification."""
    settings = load_settings()
    try:
        key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
    except VaultError as exc:
        fail(exc.message)
    typer.echo(key.public_pem().decode(), nl=False)
