"""The real thing: users created with the CLI, `cctv-vault api --workers 2` on a loopback port,
a real HTTP client, footage viewed through a grant, and one valid ledger chain across the two
worker processes (checked with `cctv-vault audit verify`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.integration.test_clip import T0, Native, natives  # noqa: F401  (fixture)
from vault.catalog import sync_config
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate, unit_of_work
from vault.lifecycle import VaultContext, commit_segment
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock

# The installed console script, as an operator runs it.
CLI = [str(Path(sys.executable).with_name("cctv-vault"))]
PASSWORD = "a long enough password"
CONFIG = """
[[sites]]
id = "tokyo-1"
name = "Tokyo DC1"
timezone = "Asia/Tokyo"

[[retention_policies]]
id = "pci"
days = 90
min_days = 90
max_days = 365

[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main entrance"
retention_policy = "pci"
source = { kind = "rtsp", url = "rtsp://10.0.0.5/stream1" }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
        check=False,
    )


@pytest.fixture
def served(
    tmp_path: Path, natives: list[Native]  # noqa: F811
) -> Iterator[tuple[str, dict[str, str]]]:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CCTV_DATA_DIR": str(data),
        # The recorded test footage is from T0: let it count as recent for this test.
        "CCTV_AUTO_GRANT_WINDOW_HOURS": str(24 * 90),
    }
    env.pop("CCTV_DATABASE_URL", None)
    engine = make_engine(f"sqlite:///{data / 'catalog.db'}")
    migrate(engine)
    ctx = VaultContext(
        engine=engine, store=FilesystemStore(data / "store"),
        keys=LocalKeyProvider(data / "keys" / "kek.bin"), clock=FixedClock(T0),
    )
    with unit_of_work(engine) as session:
        sync_config(session, parse_config(CONFIG), {})
    spool = tmp_path / "spool"
    spool.mkdir()
    for native in natives:
        native.pending.media_path(spool).write_bytes(native.media)
        native.pending.save(spool)
        commit_segment(ctx, native.pending, spool)
    engine.dispose()
    for args in (
        ("users", "add", "aiko", "--role", "operator", "--site", "tokyo-1", "--password-stdin"),
        ("users", "add", "ken", "--role", "auditor", "--site", "*", "--password-stdin"),
    ):
        result = _cli(env, *args, stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
    port = _free_port()
    server = subprocess.Popen(
        [*CLI, "api", "--port", str(port), "--workers", "2"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness: poll the health endpoint until it answers
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "API did not come up within 60 s"
            time.sleep(0.1)
        yield base, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()


def test_view_footage_through_the_served_api(served: tuple[str, dict[str, str]]) -> None:
    base, env = served
    with httpx.Client(base_url=base, timeout=30) as http:
        token = http.post("/auth/token", json={"username": "aiko", "password": PASSWORD})
        assert token.status_code == 200, token.text
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert [c["id"] for c in http.get("/cameras", headers=auth).json()] == ["cam-a"]
        req = http.post("/access-requests", headers=auth, json={
            "cameras": ["cam-a"], "start": T0.isoformat(),
            "end": (T0 + timedelta(seconds=13)).isoformat(), "purpose": "security_review",
            "reason": "badge reader fault at the main entrance", "ticket": "INC-7",
        })
        assert req.status_code == 201, req.text
        grant = req.json()["grant"]["id"]
        window = {"from": T0.isoformat(), "to": (T0 + timedelta(seconds=5)).isoformat()}
        # Many calls, spread by uvicorn over both workers: each writes to the one chain.
        for _ in range(20):
            clip = http.get("/cameras/cam-a/clip", headers=auth, params={**window, "grant": grant})
            assert clip.status_code == 200 and clip.content[4:8] == b"ftyp"
        refused = http.get("/cameras/cam-a/clip", headers=auth,
                           params={**window, "grant": "00000000-0000-0000-0000-000000000000"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"

        ken = http.post("/auth/token", json={"username": "ken", "password": PASSWORD})
        ken_auth = {"Authorization": f"Bearer {ken.json()['access_token']}"}
        events = http.get("/audit", headers=ken_auth, params={"action": "footage.*"}).json()
        assert [e["decision"] for e in events] == ["allowed"] * 20 + ["refused"]
        csv = http.get("/audit", headers=ken_auth, params={"format": "csv", "actor": "aiko"})
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[0].startswith("seq,at,actor,role,action")
    verify = _cli(env, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
