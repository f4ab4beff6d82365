"""I7: ``kill -9`` of the recorder at random instants loses no committed segment.

The recorder runs as a real subprocess (``cctv-vault ingest``) on SQLite and the filesystem
store; it is killed with SIGKILL at ten random instants and restarted each time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cctv_vault.runtime import open_vault
from tests.e2e.harness import (
    assert_contiguous_within_runs,
    config_text,
    gaps,
    segments,
    synthetic,
    wait_until,
)
from vault.settings import Settings

pytestmark = pytest.mark.slow

GOP_S = 0.5
KILLS = 10


def _cli() -> list[str]:
    return [sys.executable, "-c", "from cctv_vault.cli import main; main()"]


def test_kill_minus_nine_at_random_instants(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CCTV_TEST_SEED", "0")) or None)
    config = tmp_path / "cams.toml"
    config.write_text(config_text([("cam-k", synthetic(gop=GOP_S))], segment_seconds=2))
    data = tmp_path / "data"
    env = {**os.environ, "CCTV_DATA_DIR": str(data)}
    ctx = open_vault(Settings(data_dir=data))  # also renders nothing: the recorder does that

    committed_before: set[str] = set()
    kill_times: list[datetime] = []
    for i in range(KILLS):
        life_started = datetime.now(UTC)
        proc = subprocess.Popen(
            [*_cli(), "ingest", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Recording has (re)started once a segment recorded in this life is committed
            # (recovery commits the previous life's spool first: those do not count).
            wait_until(
                lambda t=life_started: any(s.start >= t for s in segments(ctx)),
                60,
                f"a segment recorded in life {i}",
            )
            # Fault injection: a random instant within the next two segments.
            time.sleep(rng.uniform(0.0, 4.0))
            proc.send_signal(signal.SIGKILL)
            kill_times.append(datetime.now(UTC))
        finally:
            proc.kill()
            proc.wait(timeout=30)
        now_committed = {s.id for s in segments(ctx)}
        assert committed_before <= now_committed, f"life {i} lost committed segments"
        committed_before = now_committed

    # A final orderly life recovers the spool, records a little and stops.
    done = subprocess.run(
        [*_cli(), "ingest", "--config", str(config), "--duration", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    final = segments(ctx, "cam-k")
    assert committed_before <= {s.id for s in final}
    assert len({s.id for s in final}) == len(final)
    assert_contiguous_within_runs(final)

    check = subprocess.run(
        [*_cli(), "check", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["ok"], report["violations"]
    assert report["pending"] == []
    assert report["decrypted"] == len(final)

    # Each crash is accounted for by a gap, and what was lost is at most the fragment in
    # flight: the footage kept before each kill reaches to within about one GOP of it.
    crash_gaps = [g for g in gaps(ctx, "cam-k") if "interrupted (crash)" in g.reason]
    assert len(crash_gaps) == KILLS, "one gap per kill, whatever the kill interrupted"
    slack = timedelta(seconds=GOP_S + 1.5)
    for killed_at in kill_times:
        kept = [s.end for s in final if s.start < killed_at]
        assert kept, "no footage before a kill"
        assert killed_at - max(kept) <= slack, (
            f"lost {killed_at - max(kept)} before the kill at {killed_at.isoformat()}"
        )
    spool = data / "spool"
    assert not [p for p in spool.iterdir() if p.suffix in (".mp4", ".json")]
