"""``cctv-vault purge``: purge expired footage now, preview it, verify deletion certificates.

Registered in :mod:`cctv_vault.cli` as ``app.add_typer(purge_app, name="purge")``.

- ``cctv-vault purge [--dry-run] [--now ISO] [--json]``: exit 0 when the run finished and every
  due segment went or was held; 1 when the store refused some (they stay stored and are
  listed); 2 when the purge could not run (settings, catalog or store unavailable, another
  purge running, bad ``--now``).
- ``cctv-vault purge verify-certificate FILE|RUN_ID [--public-key PEM ...] [--json]``: exit 0
  verified, 1 not, 2 could not run. A FILE is checked offline (signature and form); a RUN_ID is
  checked against the catalog, the ledger and the store as well.

Certificates are signed with the ledger key (``CCTV_LEDGER_KEY_FILE``): they live under the
ledger prefix, and auditors already hold its public half (``cctv-vault audit public-key``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from cctv_vault.runtime import open_vault
from vault.errors import ConfigError, IntegrityError, VaultError
from vault.purge import (
    DeletionCertificate,
    PurgeReport,
    parse_certificate,
    run_purge,
    verify_certificate,
    verify_run,
)
from vault.settings import Settings
from vault.signing import SigningKey, load_public_key, public_key_id
from vault.timerange import parse_instant

__all__ = ["purge_app"]

purge_app = typer.Typer(
    help="Purge footage whose retention ended (holds win); verify deletion certificates",
)

PublicKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trusted certificate public key (PEM); repeatable. Default: the local ledger key",
    ),
]


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        _fail(f"invalid setting CCTV_{where.upper()}: {first['msg']}")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _print_report(report: PurgeReport) -> None:
    verb = "would go" if report.dry_run else "purged"
    if report.dry_run:
        typer.echo(f"dry run as of {report.as_of.isoformat()}: nothing is changed")
    else:
        typer.echo(
            f"purge run {report.run_id} {report.state} as of {report.as_of.isoformat()}"
        )
    for recovered in report.recovered_runs:
        typer.echo(f"closed interrupted run {recovered} (certificate written)")
    if report.cameras:
        for camera in report.cameras:
            span = (
                f"{camera.first_start.isoformat()} .. {camera.last_end.isoformat()}"
                if camera.first_start and camera.last_end
                else "-"
            )
            typer.echo(
                f"  {camera.camera_id}: {camera.segments} segment(s), {_size(camera.bytes)},"
                f" {span} {verb}"
            )
    typer.echo(
        f"total: {report.purged} segment(s), {_size(report.purged_bytes)} {verb}"
        + (f" ({report.resumed} left purging by an interrupted run)" if report.resumed else "")
    )
    if report.holds:
        typer.echo(f"kept back by holds: {report.held_back} segment(s)")
        for hold in report.holds:
            cameras = ", ".join(f"{c}: {n}" for c, n in sorted(hold.cameras.items()))
            typer.echo(
                f"  hold {hold.hold_id} ({hold.kind}): {hold.segments} segment(s),"
                f" {_size(hold.bytes)} [{cameras}]"
            )
    else:
        typer.echo("kept back by holds: none")
    for refusal in report.failed:
        typer.echo(f"FAILED {refusal.segment_id} {refusal.key}: {refusal.reason}")
    if report.certificate_key:
        typer.echo(f"certificate: {report.certificate_key} sha256={report.certificate_sha256}")


@purge_app.callback(invoke_without_command=True)
def purge_cmd(
    context: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would go, per camera; change nothing")
    ] = False,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Purge as of this ISO instant with offset (default: now); only a dry run may"
            " look ahead",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
) -> None:
    """Purge everything whose retention ended and no hold covers; write its certificate."""
    if context.invoked_subcommand is not None:
        return
    settings = _settings()
    try:
        as_of = parse_instant(now, field="--now") if now is not None else None
        ctx = open_vault(settings)
        key = SigningKey.load_or_create(settings.resolved_ledger_key_file)
        report = run_purge(ctx, signing_key=key, trigger="cli", as_of=as_of, dry_run=dry_run)
    except VaultError as exc:
        _fail(exc.message)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        _print_report(report)
    raise typer.Exit(1 if report.failed else 0)


def _trusted_keys(settings: Settings, paths: list[Path] | None) -> list[Ed25519PublicKey]:
    """The keys an auditor brings; on the vault host, the public half of the ledger key.
    Verification never creates a key."""
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
        raise ConfigError(f"no ledger key at {key_file}: pass --public-key")
    return [SigningKey.load_or_create(key_file).public]


def _describe(certificate: DeletionCertificate) -> str:
    totals = certificate.totals
    return (
        f"certificate of run {certificate.run_id} ({certificate.state}):"
        f" {totals['purged']} segment(s) purged ({_size(totals['bytes'])}),"
        f" held back {totals['held_back']}, failed {totals['failed']},"
        f" as of {certificate.statement['as_of']}, signed by {certificate.key_id}"
    )


@purge_app.command("verify-certificate")
def verify_certificate_cmd(
    target: Annotated[str, typer.Argument(help="A certificate file, or a purge run id")],
    public_key: PublicKeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable verdict")] = False,
) -> None:
    """Verify a deletion certificate: a FILE offline, a RUN_ID against catalog, ledger, store."""
    settings = _settings()
    problems: list[str] = []
    certificate: DeletionCertificate | None = None
    try:
        keys = _trusted_keys(settings, public_key)
        path = Path(target)
        if path.is_file():
            data = path.read_bytes()
            try:
                named = parse_certificate(data).key_id
                # The key the certificate names, if the verifier trusts it; else any trusted
                # key, which then fails with "names key ..." rather than a guess.
                trusted = next((k for k in keys if public_key_id(k) == named), keys[0])
                pem = trusted.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
                certificate = verify_certificate(data, pem)
            except IntegrityError as exc:
                problems.append(exc.message)
        else:
            verdict = verify_run(open_vault(settings), target, keys)
            certificate, problems = verdict.certificate, list(verdict.problems)
    except (VaultError, OSError) as exc:
        _fail(exc.message if isinstance(exc, VaultError) else str(exc))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": not problems,
                    "run_id": certificate.run_id if certificate else None,
                    "totals": dict(certificate.totals) if certificate else None,
                    "key_id": certificate.key_id if certificate else None,
                    "problems": problems,
                },
                sort_keys=True,
            )
        )
    else:
        if certificate is not None:
            typer.echo(_describe(certificate))
        for problem in problems:
            typer.echo(f"PROBLEM {problem}")
        typer.echo("OK" if not problems else "FAIL")
    raise typer.Exit(0 if not problems else 1)

