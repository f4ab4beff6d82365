"""P3 — audited access decisions over HTTP, against the same endpoint without the ledger.

The real access API (``bench._api_server``: ``open_vault`` + ``build_api``, what ``cctv-vault
api`` serves) runs under uvicorn with 2 worker processes on loopback, over a fresh vault: 2
sites, 8 cameras, ~4,800 one-minute segment rows and ~50 gaps (catalog rows only: the timeline
needs no media), 8 operators, each holding a grant obtained through ``POST /access-requests``
(auto-granted: the last 110 minutes of their own site's 4 cameras). The load is
``GET /cameras/{id}/timeline?from&to&grant`` — each call authenticates (EdDSA JWT + principal
lookup), reads the catalog, decides against the grant and writes the decision to the ledger —
spread over the operators, their grants and cameras, and random 10-minute windows inside the
grants (a pool of 2,000 distinct requests, cycled).

Contenders, same server code, same requests, a fresh server each:

* ``on``: the durable group-commit ``LedgerWriter`` (the product);
* ``off``: ``vault.ledger.NullLedger`` — the anchor (never a deployment);

a reference between the two:

* ``wait``: ``NullLedger(delay_s)`` — writes nothing, but suspends each request on the event
  loop for ``--wait-ms`` (default 10 ms, the group-commit window) before answering: what any
  ledger that makes a request wait for durability costs, before doing any work of its own
  (a suspended request resumes later with its data out of the CPU's caches, and the loop
  runs more, emptier, turns);

and two floors on the ledger-on server, to show where the rest goes: ``auth`` = ``GET /me``
(JWT + principal lookup, no decision, no event) and ``healthz`` = ``GET /healthz`` (no auth,
one ``SELECT 1``).

Load: ``wrk`` (Debian package), one thread, 64 keep-alive connections, a generated Lua script;
it shares the machine's 2 cores with the server. Each run: start the server, wait for both
workers, log the operators in, 3 s warm-up, a measured run; rounds alternate the order of the
contenders. Requests/s and p50/p99 from wrk, the workers' CPU per request from /proc; medians
over rounds; ratio off/on of the medians.

``--server uvicorn`` (default) serves as ``cctv-vault api --workers 2`` does
(``uvicorn.run(..., workers=2)``); ``--server nodelay`` adds TCP_NODELAY to the listening socket
(``bench._api_server.serve`` says why that matters).

Verified every run: the server's own count of responses per status; a ledger-on run has one
``footage.timeline`` event per 200 response (a request that timed out waiting for the ledger,
503, may or may not have its event: L2); an ``off`` run writes nothing; the sequence has no
holes; at the end the whole chain verifies. Non-200 responses are reported, not hidden.
SQLite (the embedded default) and PostgreSQL (a dedicated database, dropped afterwards) when it
answers at ``--pg-url``.

After the HTTP runs, ``bench._api_breakdown`` times the parts of one timeline call in-process,
one call at a time (``--no-breakdown`` skips it). ``--profile``: one more ledger-on run with
``py-spy --gil`` sampling both workers (``bench._api_profile``); prints where their Python work
goes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import create_engine, func, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select

from bench._api_profile import py_spy, start_py_spy, summarize_profile
from bench._api_server import LEDGER_ENV, STATS_ENV, WAIT_ENV
from bench._common import (
    OUT,
    PYTHON,
    ROOT,
    child_env,
    machine,
    median,
    pg_reachable,
    run_measured,
    table,
    write_result,
)
from vault.ledger import verify_chain
from vault.models import AuditEvent

NAME = "p3_access_decisions"
TARGET_RPS = 2000.0
TARGET_OVERHEAD = 1.3
# contender -> (ledger mode of its server, what it requests)
CONTENDERS = {
    "on": ("on", "timeline"),
    "off": ("off", "timeline"),
    "wait": ("wait", "timeline"),
    "auth": ("on", "me"),
    "healthz": ("on", "healthz"),
}
SITES = ("tokyo-1", "osaka-1")
CAMERAS_PER_SITE = 4
OPERATORS_PER_SITE = 4
PASSWORD = "p3 bench operator password"
GRANT_MINUTES = 110  # inside the default automatic-grant span (120 min)
WRK = shutil.which("wrk") or "/usr/bin/wrk"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# -- the vault under test ----------------------------------------------------------------------


def site_cameras() -> list[tuple[str, str]]:
    return [
        (site, f"{site.split('-')[0]}-cam-{n}")
        for site in SITES
        for n in range(1, CAMERAS_PER_SITE + 1)
    ]


def operators() -> list[tuple[str, str]]:
    return [
        (f"operator-{site.split('-')[0]}-{n}", site)
        for site in SITES
        for n in range(1, OPERATORS_PER_SITE + 1)
    ]


def config_toml() -> str:
    parts = ['[[retention_policies]]\nid = "pci"\ndays = 90\nmin_days = 90\nmax_days = 365\n']
    for site in SITES:
        parts.append(f'[[sites]]\nid = "{site}"\nname = "{site}"\ntimezone = "Asia/Tokyo"\n')
    for site, camera in site_cameras():
        parts.append(
            f'[[cameras]]\nid = "{camera}"\nsite = "{site}"\nname = "{camera}"\n'
            f'retention_policy = "pci"\n'
            f'source = {{ kind = "rtsp", url = "rtsp://10.0.0.1/{camera}" }}\n'
        )
    return "\n".join(parts)


@dataclass
class Layout:
    """What the vault holds."""

    footage_start: datetime
    footage_end: datetime
    segments: int
    gaps: int


def populate(data_dir: Path, database_url: str | None, segments_per_camera: int) -> Layout:
    """Catalog rows for the timeline: segments up to a minute ago, a gap every 97 minutes."""
    from access_api.principals import add_user
    from cctv_vault.runtime import open_vault
    from vault.catalog import sync_config
    from vault.config import parse_config
    from vault.db import unit_of_work
    from vault.models import Gap, Segment
    from vault.settings import Settings

    ctx = open_vault(Settings(data_dir=data_dir, database_url=database_url))  # migrates, keys
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    end = now - timedelta(minutes=1)
    start = end - timedelta(minutes=segments_per_camera)
    rng = random.Random(3)
    n_segments = n_gaps = 0
    try:
        with unit_of_work(ctx.engine) as session:
            sync_config(session, parse_config(config_toml()), {})
            for name, site in operators():
                add_user(session, name, ["operator"], [site], now, password=PASSWORD)
            for site, camera in site_cameras():
                run_id = str(uuid.uuid4())
                for i in range(segments_per_camera):
                    seg_start = start + timedelta(minutes=i)
                    seg_end = seg_start + timedelta(minutes=1)
                    if i % 97 == 50:
                        session.add(Gap(id=str(uuid.uuid4()), camera_id=camera, start=seg_start,
                                        end=seg_end, reason="source offline", created_at=seg_end))
                        n_gaps += 1
                        run_id = str(uuid.uuid4())
                        continue
                    segment_id = str(uuid.uuid4())
                    day = f"{seg_start:%Y/%m/%d}"
                    session.add(Segment(
                        id=segment_id, camera_id=camera, run_id=run_id, start=seg_start,
                        end=seg_end, media_duration=60.0, frames=900, codec="h264",
                        width=1920, height=1080, bytes=rng.randint(28_000_000, 32_000_000),
                        sha256=rng.randbytes(32).hex(),
                        object_key=f"segments/{site}/{camera}/{day}/{segment_id}",
                        key_id="local-0123456789abcdef", wrapped_dek=rng.randbytes(40),
                        thumb_key=f"thumbs/{site}/{camera}/{day}/{segment_id}",
                        thumb_sha256=rng.randbytes(32).hex(), thumb_wrapped_dek=rng.randbytes(40),
                        retention_until=seg_end + timedelta(days=90),
                        created_at=seg_end + timedelta(seconds=2),
                    ))
                    n_segments += 1
    finally:
        ctx.engine.dispose()
    return Layout(footage_start=start, footage_end=end, segments=n_segments, gaps=n_gaps)


@contextmanager
def vault_backend(backend: str, pg_url: str) -> Iterator[tuple[Path, str | None]]:
    """A fresh data dir and, for PostgreSQL, a dedicated database; removed afterwards (the data
    dir is kept, with the servers' logs, when the run fails).

    A database of its own, not a schema: the ledger's chain lock is a database-wide advisory
    lock, which tests or other benchmarks using the shared database would contend for.
    """
    data_dir = OUT / f"work-p3-{backend}-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True)
    database = f"bench_p3_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    url = None
    try:
        if backend == "postgresql":
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
            url = make_url(pg_url).set(database=database).render_as_string(False)
        yield data_dir, url
    except BaseException:
        print(f"  (kept {data_dir} with the servers' logs)", flush=True)
        raise
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        if url is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def catalog_url(data_dir: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{(data_dir / 'catalog.db').resolve()}"


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def worker_processes(supervisor: int) -> list[int]:
    """uvicorn's worker processes: the supervisor's spawned children (not its resource
    tracker)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, IndexError, ValueError):
            if int(proc_stat(int(entry.name))[1]) != supervisor:
                continue
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return sorted(found)


SERVERS = {
    # What `cctv-vault api --workers N` runs: uvicorn.run(..., workers=N).
    "uvicorn": [PYTHON, "-m", "uvicorn", "bench._api_server:create", "--factory",
                "--log-level", "warning", "--no-access-log"],
    # The same with TCP_NODELAY on the listening socket (see bench._api_server.serve).
    "nodelay": [PYTHON, "-m", "bench._api_server"],
}


@dataclass
class Server:
    """The API's uvicorn supervisor and its worker processes, in a process group of their own."""

    ledger: str  # "on" | "off" | "wait"
    data_dir: Path
    database_url: str | None
    workers: int
    launcher: str
    name: str
    wait_ms: float = 0.0  # the "wait" server's suspension per request
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_dir(self) -> Path:
        return self.data_dir / f"stats-{self.name}"

    def start(self) -> None:
        shutil.rmtree(self.stats_dir, ignore_errors=True)
        env = child_env()
        env.update({
            "CCTV_DATA_DIR": str(self.data_dir),
            LEDGER_ENV: self.ledger,
            WAIT_ENV: str(self.wait_ms),
            STATS_ENV: str(self.stats_dir),
            # The caller's own additions to the path reach the server too.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })
        if self.database_url:
            env["CCTV_DATABASE_URL"] = self.database_url
        self.log = open(self.data_dir / f"uvicorn-{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [*SERVERS[self.launcher], "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            env=env, stdout=self.log, stderr=self.log, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"uvicorn exited: see {self.log.name}")
            # Each worker writes <pid>.ready once its app has started.
            if len(list(self.stats_dir.glob("*.ready"))) >= self.workers:
                with suppress(httpx.HTTPError):
                    if httpx.get(self.base + "/healthz", timeout=5).status_code == 200:
                        return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"uvicorn did not become ready: see {self.log.name}")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return worker_processes(self.proc.pid)

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds of the workers so far."""
        per_worker = self.worker_cpu_seconds()
        return sum(u for u, _ in per_worker), sum(s for _, s in per_worker)

    def worker_cpu_seconds(self) -> list[tuple[float, float]]:
        """User and system CPU seconds of each worker so far, in pid order."""
        tick = os.sysconf("SC_CLK_TCK")
        stats = [proc_stat(pid) for pid in sorted(self.worker_pids())]
        return [(int(f[11]) / tick, int(f[12]) / tick) for f in stats]

    def stop(self) -> tuple[Counter[str], Counter[str]]:
        """SIGTERM, which is graceful (the lifespan shutdown closes the ledger writer); then
        the workers' counts of responses per status, of 5xx bodies, and (as ``ledger
        batches`` / ``ledger batch events``) of the ledger writers' group commits."""
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        if self.proc is None:
            return counts, errors
        with suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self.log.close()
        for path in self.stats_dir.glob("*.json"):
            stats = json.loads(path.read_text())
            counts.update(stats["counts"])
            errors.update(stats["errors"])
            counts["ledger batches"] += stats["ledger_batches"]
            counts["ledger batch events"] += stats["ledger_batch_events"]
        return counts, errors


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()


# -- the load ----------------------------------------------------------------------------------


def login(base: str) -> dict[str, str]:
    tokens = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, _site in operators():
            resp = client.post("/auth/token", json={"username": name, "password": PASSWORD})
            resp.raise_for_status()
            tokens[name] = resp.json()["access_token"]
    return tokens


@dataclass(frozen=True)
class GrantHeld:
    holder: str
    grant_id: str
    cameras: tuple[str, ...]
    start: datetime
    end: datetime


def file_grants(base: str, tokens: dict[str, str], layout: Layout) -> list[GrantHeld]:
    """Each operator asks for the last GRANT_MINUTES of their site's cameras: granted at once."""
    end = layout.footage_end
    start = end - timedelta(minutes=GRANT_MINUTES)
    held = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, site in operators():
            cameras = [c for s, c in site_cameras() if s == site]
            resp = client.post(
                "/access-requests",
                headers={"Authorization": f"Bearer {tokens[name]}"},
                json={"cameras": cameras, "start": start.isoformat(), "end": end.isoformat(),
                      "purpose": "security_review", "reason": "P3 benchmark: timeline review",
                      "ticket": "BENCH-P3"},
            )
            body = resp.json()
            if resp.status_code != 201 or body["state"] != "granted":
                raise SystemExit(f"access request of {name} not granted: {resp.text}")
            held.append(GrantHeld(name, body["grant"]["id"], tuple(cameras), start, end))
    return held


def timeline_pool(
    grants: list[GrantHeld], window_minutes: int, size: int, seed: int = 7
) -> list[tuple[str, str | None]]:
    """(path, holder): a random grant, one of its cameras, a random window inside the grant."""
    rng = random.Random(seed)
    pool: list[tuple[str, str | None]] = []
    for _ in range(size):
        grant = rng.choice(grants)
        span = int((grant.end - grant.start).total_seconds()) - window_minutes * 60
        start = grant.start + timedelta(seconds=rng.randrange(0, span + 1, 15))
        end = start + timedelta(minutes=window_minutes)
        query = urlencode({"from": start.isoformat(), "to": end.isoformat(),
                           "grant": grant.grant_id})
        pool.append((f"/cameras/{rng.choice(grant.cameras)}/timeline?{query}", grant.holder))
    return pool


def request_pool(
    what: str, timeline: list[tuple[str, str | None]]
) -> list[tuple[str, str | None]]:
    if what == "timeline":
        return timeline
    if what == "me":
        return [("/me", name) for name, _site in operators()]
    return [("/healthz", None)]


LUA = """-- generated by bench/p3_access_decisions.py
local pool = {
%(pool)s
}
local prepared = {}
local n = 0

function init(args)
  for i, r in ipairs(pool) do
    local headers = {}
    if r[2] ~= "" then headers["Authorization"] = "Bearer " .. r[2] end
    prepared[i] = wrk.format("GET", r[1], headers)
  end
  n = math.random(#prepared)
end

function request()
  n = n %% #prepared + 1
  return prepared[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open("%(result)s", "w"))
  f:write(string.format(
    '{"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
  f:close()
end
"""


def write_lua(path: Path, pool: list[tuple[str, str | None]], tokens: dict[str, str]) -> Path:
    lines = ",\n".join(
        f'  {{"{p}", "{tokens[holder] if holder else ""}"}}' for p, holder in pool
    )
    path.write_text(LUA % {"pool": lines, "result": path.with_suffix(".json")})
    return path


def run_wrk(
    base: str, script: Path, seconds: float, connections: int, work: Path
) -> tuple[dict[str, Any], float]:
    """wrk's figures (its Lua ``done`` writes them as JSON) and its own CPU seconds."""
    result = script.with_suffix(".json")
    result.unlink(missing_ok=True)
    m = run_measured(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s",
         str(script), base],
        work,
    )
    if m.returncode != 0 or not result.exists():
        raise SystemExit(f"wrk failed: rc={m.returncode}\n{m.stdout}\n{m.stderr}")
    stats: dict[str, Any] = json.loads(result.read_text())
    errors = {k: stats[k] for k in ("connect", "read", "write", "timeout") if stats[k]}
    if errors:
        raise SystemExit(f"wrk saw socket errors: {errors}\n{m.stdout}")
    return stats, m.cpu_s


def ledger_state(url: str, after_seq: int) -> tuple[int, Counter[str]]:
    """The head seq, and the events after ``after_seq`` by action and decision."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            head = session.exec(select(func.max(AuditEvent.seq))).one() or 0
            rows = session.exec(
                select(AuditEvent.action, AuditEvent.decision, func.count())
                .where(col(AuditEvent.seq) > after_seq)
                .group_by(col(AuditEvent.action), col(AuditEvent.decision))
            ).all()
    finally:
        engine.dispose()
    return int(head), Counter({f"{a} {d}": int(n) for a, d, n in rows})


@dataclass
class Run:
    contender: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non_2xx: int
    server_user_s: float
    server_sys_s: float
    wrk_cpu_s: float
    seconds: float
    served: dict[str, int]
    errors: dict[str, int]
    ledger_events: dict[str, int]
    ledger_commits: int  # the writers' group commits over the server's life
    events_per_commit: float
    load_average: float  # 1-minute load average of the machine at the end of the run
    busiest_worker_share: float  # of the workers' CPU in the measured window (0.5: even)

    @property
    def server_us_per_request(self) -> float:
        return (self.server_user_s + self.server_sys_s) / max(1, self.requests) * 1e6

    @property
    def server_sys_share(self) -> float:
        return self.server_sys_s / max(1e-9, self.server_user_s + self.server_sys_s)


def check_ledger(label: str, served: Counter[str], events: Counter[str], delta_seq: int) -> None:
    """A ledger-on server's responses against what the ledger gained during its life."""
    logins = len(operators())
    if sum(events.values()) != delta_seq:
        raise SystemExit(f"{label}: the sequence has holes: {delta_seq} new seqs, {events}")
    if events.get("auth.login allowed", 0) != logins:
        raise SystemExit(f"{label}: {logins} logins, ledger has {events}")
    ok, failed = served.get("timeline 200", 0), served.get("timeline 503", 0)
    logged = events.get("footage.timeline allowed", 0)
    if not ok <= logged <= ok + failed:
        raise SystemExit(
            f"{label}: {logged} footage.timeline events for {ok} 200 and {failed} 503 responses"
        )
    other = set(events) - {"auth.login allowed", "footage.timeline allowed"}
    if other:
        raise SystemExit(f"{label}: unexpected ledger events {other}")


def one_run(
    contender: str,
    data_dir: Path,
    database_url: str | None,
    timeline: list[tuple[str, str | None]],
    args: argparse.Namespace,
    label: str,
    profile_to: Path | None = None,
) -> Run:
    ledger, what = CONTENDERS[contender]
    url = catalog_url(data_dir, database_url)
    head_before, _ = ledger_state(url, 0)
    server = Server(ledger, data_dir, database_url, args.workers, args.server, contender,
                    wait_ms=args.wait_ms)
    with serving(server):
        tokens = login(server.base)
        script = write_lua(data_dir / f"load-{contender}.lua", request_pool(what, timeline),
                           tokens)
        run_wrk(server.base, script, args.warmup, args.connections, data_dir / "wrk")
        spies = start_py_spy(server.worker_pids(), args.seconds, profile_to) if profile_to else []
        before = server.worker_cpu_seconds()
        stats, wrk_cpu = run_wrk(server.base, script, args.seconds, args.connections,
                                 data_dir / "wrk")
        after = server.worker_cpu_seconds()
        user0, sys0 = sum(u for u, _ in before), sum(s for _, s in before)
        user1, sys1 = sum(u for u, _ in after), sum(s for _, s in after)
        # The kernel hands each of wrk's connections to whichever worker accepts first, and
        # asyncio accepts a burst of them at once: the split is the luck of the draw, and a
        # worker serving most connections alone caps the run at one core.
        worker_cpu = [a[0] + a[1] - b[0] - b[1] for a, b in zip(after, before, strict=True)]
        busiest = max(worker_cpu) / max(1e-9, sum(worker_cpu))
        for spy in spies:
            spy.wait(timeout=args.seconds + 60)
        served, errors = server.stop()
    head_after, events = ledger_state(url, head_before)
    load = os.getloadavg()[0]
    batches = served.pop("ledger batches", 0), served.pop("ledger batch events", 0)
    unexpected = {k: v for k, v in served.items()
                  if not k.endswith(" 200") and k != "timeline 503"}
    if unexpected:
        raise SystemExit(f"{label}: unexpected responses {unexpected}; 5xx: {dict(errors)}")
    if ledger in ("off", "wait"):
        if head_after != head_before:
            raise SystemExit(f"{label}: the ledger-off server wrote {events}")
    else:
        check_ledger(label, served, events, head_after - head_before)
    seconds = stats["duration_us"] / 1e6
    return Run(
        contender=contender,
        rps=stats["requests"] / seconds,
        p50_ms=stats["p50_us"] / 1000,
        p90_ms=stats["p90_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        max_ms=stats["max_us"] / 1000,
        requests=stats["requests"],
        non_2xx=stats["status"],
        server_user_s=user1 - user0,
        server_sys_s=sys1 - sys0,
        wrk_cpu_s=wrk_cpu,
        seconds=seconds,
        served=dict(served),
        errors=dict(errors),
        ledger_events=dict(events),
        ledger_commits=batches[0],
        events_per_commit=batches[1] / batches[0] if batches[0] else 0.0,
        load_average=load,
        busiest_worker_share=busiest,
    )


# -- main --------------------------------------------------------------------------------------


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    contenders = ["on", "off"] + (["wait", "auth", "healthz"] if args.floors else [])
    with vault_backend(backend, args.pg_url) as (data_dir, database_url):
        layout = populate(data_dir, database_url, args.segments_per_camera)
        print(
            f"  {backend}: {layout.segments} segments and {layout.gaps} gaps on "
            f"{len(site_cameras())} cameras ({layout.footage_start:%H:%M}-"
            f"{layout.footage_end:%H:%M} UTC), {len(operators())} operators",
            flush=True,
        )
        setup = Server("on", data_dir, database_url, args.workers, args.server, "setup")
        with serving(setup):
            grants = file_grants(setup.base, login(setup.base), layout)
        timeline = timeline_pool(grants, args.window_minutes, args.pool)
        runs: list[Run] = []
        for r in range(args.rounds):
            order = contenders if r % 2 == 0 else contenders[::-1]
            for contender in order:
                label = f"{backend} round {r + 1}/{args.rounds} {contender}"
                run = one_run(contender, data_dir, database_url, timeline, args, label)
                runs.append(run)
                extra = f"  NON-2xx {run.non_2xx}" if run.non_2xx else ""
                if run.contender == "on" and run.ledger_commits:
                    extra += f"  {run.events_per_commit:.1f} events/commit"
                print(
                    f"  {label:28s}: {run.rps:6.0f} req/s  p50 {run.p50_ms:6.1f} ms  "
                    f"p99 {run.p99_ms:6.1f} ms  server {run.server_us_per_request:5.0f} "
                    f"CPU-µs/req ({100 * run.server_sys_share:2.0f}% sys)  "
                    f"wrk {100 * run.wrk_cpu_s / run.seconds:3.0f}% of a core  "
                    f"busiest worker {100 * run.busiest_worker_share:3.0f}%  "
                    f"load {run.load_average:.1f}{extra}",
                    flush=True,
                )
        profile_lines: list[str] = []
        if args.profile:
            folder = OUT / f"{NAME}-{backend}-py-spy"
            run = one_run("on", data_dir, database_url, timeline, args,
                          f"{backend} profiled", profile_to=folder)
            print(f"  {backend} profiled run (ledger on, py-spy attached): {run.rps:.0f} req/s, "
                  f"{run.server_us_per_request:.0f} CPU-µs/req", flush=True)
            profile_lines = summarize_profile(folder)
        parts: list[tuple[str, float]] = []
        if args.breakdown:
            from bench._api_breakdown import breakdown

            parts = breakdown(data_dir, database_url,
                              [(path, holder) for path, holder in timeline[:200] if holder])
        engine = create_engine(catalog_url(data_dir, database_url))
        try:
            with Session(engine) as session:
                bad_seq = verify_chain(session)
                total = session.exec(select(func.count()).select_from(AuditEvent)).one()
        finally:
            engine.dispose()
        if bad_seq is not None:
            raise SystemExit(f"{backend}: the ledger chain does not verify at seq {bad_seq}")
    by = {c: [r for r in runs if r.contender == c] for c in contenders}
    summary = {
        c: {
            "rps": median([r.rps for r in rs]),
            "p50_ms": median([r.p50_ms for r in rs]),
            "p99_ms": median([r.p99_ms for r in rs]),
            "server_us_per_request": median([r.server_us_per_request for r in rs]),
            "server_sys_share": median([r.server_sys_share for r in rs]),
            "wrk_core_share": median([r.wrk_cpu_s / r.seconds for r in rs]),
            "non_2xx": sum(r.non_2xx for r in rs),
            "events_per_commit": median([r.events_per_commit for r in rs]),
            "load_average": median([r.load_average for r in rs]),
        }
        for c, rs in by.items()
    }
    pairs = list(zip(by["on"], by["off"], strict=True))
    return {
        "layout": {"footage_start": layout.footage_start.isoformat(),
                   "footage_end": layout.footage_end.isoformat(),
                   "segments": layout.segments, "gaps": layout.gaps,
                   "cameras": len(site_cameras()),
                   "operators": len(operators()), "grant_minutes": GRANT_MINUTES},
        "runs": [
            {**asdict(r), "server_us_per_request": r.server_us_per_request,
             "server_sys_share": r.server_sys_share}
            for r in runs
        ],
        "summary": summary,
        "ratio": summary["off"]["rps"] / summary["on"]["rps"],
        "round_ratios": [off.rps / on.rps for on, off in pairs],
        "cpu_ratio": summary["on"]["server_us_per_request"]
        / summary["off"]["server_us_per_request"],
        "ledger_events": int(total),
        "chain_ok": True,
        "profile": profile_lines,
        "breakdown_us": parts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.p3_access_decisions", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="SQLite only, 1 round of 5 s, no floors")
    parser.add_argument("--rounds", type=int, help="rounds of all contenders; default 5")
    parser.add_argument("--seconds", type=float, help="measured wrk run; default 10, quick 5")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk warm-up per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--server", choices=sorted(SERVERS), default="uvicorn",
        help="uvicorn: as `cctv-vault api --workers N` serves (default); nodelay: the same "
        "with TCP_NODELAY on the listening socket",
    )
    parser.add_argument("--no-floors", dest="floors", action="store_false",
                        help="skip the wait reference and the GET /me and GET /healthz floors")
    parser.add_argument("--wait-ms", type=float, default=10.0,
                        help="the wait reference's suspension per request (default: the "
                             "ledger's group-commit window, 10 ms)")
    parser.add_argument("--window-minutes", type=int, default=10,
                        help="timeline window per request (default 10 one-minute segments)")
    parser.add_argument("--segments-per-camera", type=int, default=600)
    parser.add_argument("--pool", type=int, default=2000, help="distinct timeline requests")
    parser.add_argument("--backends", help="sqlite,postgresql (default: both if PG answers)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("CCTV_BENCH_DATABASE_URL")
        or os.environ.get("CCTV_TEST_DATABASE_URL") or DEFAULT_PG_URL,
        help="admin URL of the PostgreSQL server; a database is created and dropped there",
    )
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the in-process CPU breakdown of one timeline call")
    parser.add_argument("--profile", action="store_true",
                        help="one more ledger-on run under py-spy (see docs/ref/bench.md)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    if args.quick:
        args.floors = args.breakdown = False
    if args.backends:
        backends = args.backends.split(",")
    elif args.quick:
        backends = ["sqlite"]
    else:
        backends = ["sqlite"] + (["postgresql"] if pg_reachable(args.pg_url) else [])
    if not Path(WRK).exists():
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    if args.profile and py_spy() is None:
        raise SystemExit(
            f"py-spy is missing: {PYTHON} -m pip install --target {OUT / 'tools'} py-spy"
        )
    started = time.monotonic()
    print(
        f"P3 audited access decisions over HTTP — server {args.server!r} with {args.workers} "
        f"workers, wrk 1 thread x {args.connections} connections, all on the same "
        f"{os.cpu_count()} cores; GET timeline with {args.window_minutes}-minute windows",
        flush=True,
    )
    results = {backend: bench_backend(backend, args) for backend in backends}

    what = {"on": "timeline, ledger on", "off": "timeline, ledger off",
            "wait": f"timeline, off + {args.wait_ms:g} ms wait",
            "auth": "floor: GET /me", "healthz": "floor: GET /healthz"}
    rows = [["backend", "contender", "req/s", "p50 ms", "p99 ms", "server CPU µs/req",
             "of it sys", "wrk % core", "non-2xx", "runs"]]
    for backend, res in results.items():
        for contender, s in res["summary"].items():
            rows.append([
                backend, what[contender], f"{s['rps']:.0f}", f"{s['p50_ms']:.1f}",
                f"{s['p99_ms']:.1f}", f"{s['server_us_per_request']:.0f}",
                f"{100 * s['server_sys_share']:.0f}%", f"{100 * s['wrk_core_share']:.0f}",
                str(s["non_2xx"]), str(args.rounds),
            ])
    print()
    print(table(rows))
    met = True
    for backend, res in results.items():
        on = res["summary"]["on"]
        ok_rps, ok_ratio = on["rps"] >= TARGET_RPS, res["ratio"] <= TARGET_OVERHEAD
        clean = on["non_2xx"] == 0
        met = met and ok_rps and ok_ratio and clean
        print(
            f"\n{backend}: ledger on {on['rps']:.0f} req/s (target >= {TARGET_RPS:.0f}: "
            f"{'OK' if ok_rps else 'BELOW TARGET'}); overhead off/on (median req/s) "
            f"{res['ratio']:.2f}x (target <= {TARGET_OVERHEAD}x: "
            f"{'OK' if ok_ratio else 'ABOVE TARGET'}); per round "
            f"{', '.join(f'{x:.2f}x' for x in res['round_ratios'])}; server CPU per request "
            f"on/off {res['cpu_ratio']:.2f}x; {on['events_per_commit']:.1f} events per group "
            f"commit; load average {on['load_average']:.1f} on {os.cpu_count()} cores"
        )
        if "wait" in res["summary"]:
            off_us = res["summary"]["off"]["server_us_per_request"]
            wait_us = res["summary"]["wait"]["server_us_per_request"]
            print(
                f"  of the {on['server_us_per_request'] - off_us:.0f} CPU-µs a request costs "
                f"more with the ledger, {wait_us - off_us:.0f} come with waiting "
                f"{args.wait_ms:g} ms and nothing else (ledger off + wait: "
                f"{res['summary']['wait']['rps']:.0f} req/s, off/wait "
                f"{res['summary']['off']['rps'] / res['summary']['wait']['rps']:.2f}x), "
                f"{on['server_us_per_request'] - wait_us:.0f} with the ledger's own work"
            )
        failures = on["non_2xx"] + res["summary"]["off"]["non_2xx"]
        print(
            f"  verified: ledger events match the 200 responses of every ledger-on run, "
            f"ledger-off runs wrote nothing, chain of {res['ledger_events']} events verifies"
            + (f"; {failures} non-2xx responses (see the JSON)" if failures else "")
        )
        if res["breakdown_us"]:
            print(f"\nCPU per call, one call at a time, in this process ({backend}):")
            print("\n".join(f"  {us:7.0f} µs  {part}" for part, us in res["breakdown_us"]))
        if res["profile"]:
            print(f"\nwhere the workers' CPU goes ({backend}, ledger on, py-spy):")
            print("\n".join(res["profile"]))
    if "postgresql" not in results:
        print("\n(PostgreSQL skipped: --quick, --backends, or not reachable at --pg-url)")
    result = {
        "name": NAME,
        "quick": args.quick,
        "args": {k: v for k, v in vars(args).items() if k != "pg_url"},
        "results": results,
        "targets": {"rps": TARGET_RPS, "overhead": TARGET_OVERHEAD},
        "meets_targets": met,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine(),
    }
    path = write_result(NAME, result)
    print(f"\nwrote {path.relative_to(OUT.parent.parent)} in {result['elapsed_s']:.0f} s")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
