"""P4 addendum — a flaky camera's gap lookup: bounded (ours) against the unbounded form it replaced.

A gap may last any time, so a lookup by ``(camera_id, start)`` alone — ``start < window end AND
end > window start`` — has no lower bound and reads every earlier outage of the camera. Since
migration 0005 the timeline reads gaps up to ``SHORT_GAP`` (a day) from the window's start minus a
day, and the few longer ones through ``(camera_id, is_long, end)``.

Catalog (per backend, made with the product's migrations): one camera with ``--years`` of outages,
``--per-day`` one-minute gaps a day at random minutes, plus one week-long gap every 100 days.
Lookups: 1-hour windows at random instants of that history (the same list for both contenders,
alternating runs). Contenders: ``ours`` = the timeline's own gap statement
(``vault.catalog._TIMELINE_GAPS``, as ``timeline()`` runs it, sorted); ``unbounded`` = the same
columns with the old condition, ``ORDER BY start``. Both run through ``vault.db.Prepared`` on one
pooled connection; every lookup's rows are compared (they must be equal). Reported: p50/p99 per
contender (medians over rounds) and the p50 ratio.

    python -m bench.p4_gap_history [--years 3] [--per-day 100] [--rounds 3] [--backends ...]
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.engine import Engine

from bench._common import machine, median, pg_reachable, table, write_result
from bench.p3_ledger_appends import catalog
from bench.p4_timeline import Shape, config_toml
from vault.catalog import _TIMELINE_GAPS, _range_params, sync_config
from vault.config import parse_config
from vault.db import Prepared, reading, unit_of_work
from vault.models import Gap
from vault.timerange import TimeRange

T0 = datetime(2023, 12, 1, tzinfo=UTC)
CAMERA = Shape(1, 0, 0).camera(0)
WINDOW = timedelta(hours=1)
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_GAP = Gap.__table__.c  # type: ignore[attr-defined]
# The gap lookup before migration 0005.
UNBOUNDED = Prepared(
    select(_GAP.start, _GAP.end, _GAP.reason)
    .where(_GAP.camera_id == bindparam("camera"))
    .where(_GAP.start < bindparam("upper"))
    .where(_GAP.end > bindparam("begin"))
    .order_by(_GAP.start)
)


def history(years: int, per_day: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for day in range(years * 365):
        for _ in range(per_day):
            start = T0 + timedelta(days=day, minutes=rng.randrange(24 * 60))
            rows.append({"start": start, "end": start + timedelta(minutes=1),
                         "reason": "source offline"})
    for day in range(0, years * 365, 100):
        start = T0 + timedelta(days=day, hours=3)
        rows.append({"start": start, "end": start + timedelta(days=7), "reason": "dark"})
    for row in rows:
        row.update(id=str(uuid.UUID(int=rng.getrandbits(128))), camera_id=CAMERA,
                   created_at=row["end"])  # is_long: derived by the column's default
    return rows


def load(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """The gaps of one camera (``cam-000``, P4's first) into a migrated catalog."""
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(config_toml(Shape(1, 0, 0))), {})
    with engine.begin() as conn:
        conn.execute(insert(Gap.__table__), rows)  # type: ignore[attr-defined]
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE gap"))


def ours(conn: Any, window: TimeRange) -> list[tuple[Any, ...]]:
    rows = _TIMELINE_GAPS.rows(conn, _range_params(CAMERA, window))
    return sorted((tuple(r) for r in rows), key=lambda r: (r[0], r[1]))


def unbounded(conn: Any, window: TimeRange) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in UNBOUNDED.rows(conn, _range_params(CAMERA, window))]


def measure(engine: Engine, windows: list[TimeRange], rounds: int) -> dict[str, Any]:
    contenders = {"ours": ours, "unbounded": unbounded}
    p50s: dict[str, list[float]] = {k: [] for k in contenders}
    p99s: dict[str, list[float]] = {k: [] for k in contenders}
    found = 0
    with reading(engine) as conn:
        for window in windows[:50]:  # warm-up, and the two must agree everywhere
            if ours(conn, window) != unbounded(conn, window):
                raise SystemExit(f"ours and unbounded disagree at {window}")
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                times = []
                for window in windows:
                    t = time.perf_counter()
                    got = contenders[name](conn, window)
                    times.append((time.perf_counter() - t) * 1e6)
                    found += len(got)
                times.sort()
                p50s[name].append(times[len(times) // 2])
                p99s[name].append(times[min(len(times) - 1, int(len(times) * 0.99))])
        for window in windows:
            if ours(conn, window) != unbounded(conn, window):
                raise SystemExit(f"ours and unbounded disagree at {window}")
    return {name: {"p50_us": median(p50s[name]), "p99_us": median(p99s[name]),
                   "p50_rounds_us": p50s[name]} for name in contenders} | {"rows_found": found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.p4_gap_history", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--per-day", type=int, default=100)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", help="sqlite,postgresql (default: both if PG answers)")
    parser.add_argument("--pg-url", default=os.environ.get("CCTV_BENCH_DATABASE_URL")
                        or os.environ.get("CCTV_TEST_DATABASE_URL") or DEFAULT_PG_URL)
    args = parser.parse_args(argv)
    backends = (args.backends.split(",") if args.backends
                else ["sqlite"] + (["postgresql"] if pg_reachable(args.pg_url) else []))
    rows = history(args.years, args.per_day, seed=5)
    span = timedelta(days=args.years * 365) - WINDOW
    rng = random.Random(11)
    windows = [TimeRange(s, s + WINDOW) for s in
               (T0 + span * rng.random() for _ in range(args.lookups))]
    print(f"P4 gap history — one camera, {len(rows):,} gaps over {args.years} years "
          f"({args.per_day} one-minute outages a day, a week-long one every 100 days); "
          f"{args.lookups} one-hour lookups x {args.rounds} rounds; {', '.join(backends)}",
          flush=True)
    results: dict[str, Any] = {}
    lines = [["backend", "contender", "p50 µs", "p99 µs", "p50 per round µs"]]
    for backend in backends:
        with catalog(backend, args.pg_url) as engine:
            load(engine, rows)
            res = measure(engine, windows, args.rounds)
        results[backend] = res
        for name in ("ours", "unbounded"):
            r = res[name]
            lines.append([backend, name, f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}",
                          ", ".join(f"{v:.0f}" for v in r["p50_rounds_us"])])
    print()
    print(table(lines))
    for backend, res in results.items():
        ratio = res["unbounded"]["p50_us"] / res["ours"]["p50_us"]
        print(f"{backend}: unbounded/ours p50 {ratio:.1f}x; every lookup's gaps identical "
              f"({res['rows_found']:,} rows over all runs)")
    write_result("p4_gap_history", {"machine": machine(), "years": args.years,
                                    "per_day": args.per_day, "gaps": len(rows),
                                    "lookups": args.lookups, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
