"""Every hole in a camera's footage has a gap: also the time the recorder was not running."""

from __future__ import annotations

from pathlib import Path

import pytest

from cctv_vault.runtime import IngestService
from tests.e2e.harness import config_text, gaps, segments, synthetic, wait_until
from vault.config import parse_config
from vault.lifecycle import VaultContext
from vault.settings import Settings

pytestmark = pytest.mark.slow


def test_orderly_restart_records_the_downtime_as_a_gap(
    ctx: VaultContext, tmp_path: Path
) -> None:
    config = parse_config(config_text([("cam-r", synthetic())], segment_seconds=2))
    settings = Settings(data_dir=tmp_path / "data")

    first = IngestService(ctx, config, settings)
    first.start()
    try:
        wait_until(lambda: len(segments(ctx)) >= 1, 60, "a first segment")
    finally:
        first.stop()
    assert not first.spool.crashed
    stopped_end = segments(ctx)[-1].end

    second = IngestService(ctx, config, settings)
    second.start()
    try:
        assert not second.spool.crashed, "the first process stopped in order"
        wait_until(lambda: len({s.run_id for s in segments(ctx)}) >= 2, 60, "a second run")
    finally:
        second.stop()

    segs = segments(ctx, "cam-r")
    resumed = next(s for s in segs if s.run_id != segs[0].run_id)
    [downtime] = [g for g in gaps(ctx, "cam-r") if g.reason == "recorder not running"]
    assert (downtime.start, downtime.end) == (stopped_end, resumed.start)
    assert not [g for g in gaps(ctx, "cam-r") if "crash" in g.reason]
