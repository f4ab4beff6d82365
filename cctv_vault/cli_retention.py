"""``cctv-vault retention``: the retention report and retention policy changes.

Registered in :mod:`cctv_vault.cli` as ``app.add_typer(retention_app, name="retention")``.

- ``cctv-vault retention report [--json] [--now ISO]``: per camera, oldest and newest footage,
  footage past its deadline and not held, held footage and the holds that keep it. Exit 0 when
  no footage is overdue, 1 when some is (the morning after a purge it must be 0), 2 when the
  report could not be made.
- ``cctv-vault retention set-policy ID --days N --reason TEXT [--json]``: change a policy's
  days, recompute stored footage's deadlines, extend the store's locks; logged to the ledger
  with the reason, attributed to ``cli:<user>``. Exit 0 done, 1 the catalog changed but some
  store locks could not be extended (run it again), 2 refused (bad days, unknown policy) or
  could not run — nothing changed.
- ``cctv-vault retention sync-store [--json]``: bring the store level with the catalog — legal
  holds where active holds cover footage (and off where none does any more), retention locks
  extended to every stored segment's ``retention_until``. For after a crash or a store outage
  cut a hold's or a policy change's store sync short. Exit 0 level, 1 some objects could not
  be changed (listed), 2 could not run.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cctv_vault.cli_common import fail, load_settings, operator
from cctv_vault.runtime import open_vault
from vault.db import unit_of_work
from vault.errors import VaultError
from vault.holds import reconcile_legal_holds
from vault.policies import change_policy, list_policies, sync_retention_locks
from vault.report import RetentionReport, retention_report
from vault.timerange import parse_instant

__all__ = ["retention_app"]

retention_app = typer.Typer(
    no_args_is_help=True, help="Retention: the report, and retention policy changes"
)








def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _print_report(report: RetentionReport) -> None:
    verdict = "OK" if report.ok else f"OVERDUE {report.overdue_segments} segment(s)"
    typer.echo(f"retention report as of {report.as_of.isoformat()}: {verdict}")
    for cam in report.cameras:
        span = (
            f"{cam.oldest_start.isoformat()} .. {cam.newest_end.isoformat()}"
            if cam.oldest_start and cam.newest_end else "no footage"
        )
        typer.echo(
            f"{cam.camera_id} ({cam.site_id}) policy {cam.policy_id} {cam.days} d: {span};"
            f" stored {cam.stored_segments} ({_size(cam.stored_bytes)}),"
            f" overdue {cam.overdue_segments} ({_size(cam.overdue_bytes)}),"
            f" held {cam.held_segments} ({_size(cam.held_bytes)},"
            f" {cam.held_past_deadline} past deadline)"
            + (f", purging {cam.purging_segments}" if cam.purging_segments else "")
        )
        for held in cam.holds:
            ref = f" warrant {held.warrant_ref}," if held.warrant_ref else ""
            until = f", expires {held.expires_at.isoformat()}" if held.expires_at else ""
            typer.echo(
                f"  held by {held.kind} hold {held.hold_id} ({ref} placed by {held.placed_by}"
                f"{until}): {held.segments} segment(s), {_size(held.bytes)} - {held.reason}"
            )
    last = report.last_purge
    if last is None:
        typer.echo("last purge: none")
    else:
        typer.echo(
            f"last purge: {last['id']} {last['state']} started {last['started_at']}"
            f" purged {last['purged']} held back {last['held_back']} failed {last['failed']}"
        )


@retention_app.command("report")
def report_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
    now: Annotated[
        str | None, typer.Option("--now", help="Report as of this instant (ISO 8601, offset)")
    ] = None,
) -> None:
    """Per camera: oldest/newest footage, overdue (past deadline, not held), held and why."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        as_of = parse_instant(now, field="--now") if now else ctx.clock.now()
        with unit_of_work(ctx.engine) as session:
            report = retention_report(session, as_of)
    except VaultError as exc:
        fail(exc.message)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


@retention_app.command("set-policy")
def set_policy_cmd(
    policy_id: Annotated[str, typer.Argument(metavar="ID", help="Retention policy id")],
    days: Annotated[int, typer.Option("--days", help="Days kept after a segment's end")],
    reason: Annotated[str, typer.Option("--reason", help="Why (logged to the ledger)")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result")] = False,
) -> None:
    """Change a policy's days: deadlines recomputed, store locks extended, change logged."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        result = change_policy(
            ctx, policy_id, days, reason, operator(), ctx.clock.now(), role="cli", client="cli"
        )
    except VaultError as exc:
        fail(exc.message)
    locks = result.locks
    complete = locks is not None and locks.complete and not locks.failed
    if as_json:
        typer.echo(json.dumps(result.to_dict(), sort_keys=True))
    else:
        change = result.change
        typer.echo(
            f"policy {change.policy_id}: {change.old_days} -> {change.new_days} days;"
            f" {result.segments} stored segment(s) recomputed"
        )
        if locks is not None:
            typer.echo(
                f"store locks: extended {locks.extended}, kept longer {locks.kept},"
                f" unchanged {locks.unchanged}, missing {locks.missing},"
                f" failed {len(locks.failed)}"
            )
        if not complete:
            typer.echo("some store locks were not extended: run the same command again")
    raise typer.Exit(0 if complete else 1)


@retention_app.command("sync-store")
def sync_store_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result")] = False,
) -> None:
    """Bring the store's legal holds and retention locks level with the catalog."""
    settings = load_settings()
    try:
        ctx = open_vault(settings)
        holds = reconcile_legal_holds(ctx)
        with unit_of_work(ctx.engine) as session:
            cameras = tuple(c.id for _, cams in list_policies(session) for c in cams)
        locks = sync_retention_locks(ctx, cameras)
    except VaultError as exc:
        fail(exc.message)
    level = holds.complete and locks.complete and not holds.failed and not locks.failed
    if as_json:
        typer.echo(json.dumps({"legal_holds": holds.to_dict(), "locks": locks.to_dict()},
                              sort_keys=True))
    else:
        typer.echo(
            f"legal holds: set {holds.held}, removed {holds.released}, kept {holds.kept},"
            f" unchanged {holds.unchanged}, missing {holds.missing}, failed {len(holds.failed)}"
        )
        typer.echo(
            f"retention locks: extended {locks.extended}, kept longer {locks.kept},"
            f" unchanged {locks.unchanged}, missing {locks.missing}, failed {len(locks.failed)}"
        )
        for key in [*holds.failed, *locks.failed][:20]:
            typer.echo(f"FAILED {key}")
    raise typer.Exit(0 if level else 1)
