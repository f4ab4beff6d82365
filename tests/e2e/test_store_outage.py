"""Store-and-forward: the S3 server stops for 30 s; footage waits in the spool, then commits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cctv_vault.runtime import IngestService
from tests.e2e.harness import (
    assert_contiguous_within_runs,
    config_text,
    segments,
    synthetic,
    wait_until,
)
from tests.support.s3 import MotoServer
from vault.check import run_check
from vault.config import parse_config
from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate
from vault.lifecycle import VaultContext
from vault.settings import Settings
from vault.store.s3 import S3Store

pytestmark = [pytest.mark.slow, pytest.mark.s3]

OUTAGE_S = 30


def test_s3_down_for_30_seconds_loses_nothing(
    tmp_path: Path, moto_server: MotoServer, s3_store: S3Store
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    ctx = VaultContext(engine=engine, store=s3_store, keys=LocalKeyProvider(tmp_path / "kek"))
    config = parse_config(config_text([("cam-s3", synthetic())], segment_seconds=2))
    service = IngestService(
        ctx, config, Settings(data_dir=tmp_path / "data"), commit_retry_max_s=2.0
    )
    service.start()
    try:
        wait_until(lambda: len(segments(ctx)) >= 2, 60, "two commits before the outage")
        moto_server.stop()
        try:
            wait_until(lambda: not service.committer.store_ok, 30, "the committer to see it")
            # The outage itself: the duration is the fault being injected, not a sync point.
            time.sleep(OUTAGE_S)
            waiting = service.spool.closed()
            assert len(waiting) >= OUTAGE_S / 2 - 3, "segments should wait in the spool"
            assert service.health.get("cam-s3") == ("recording", "")
        finally:
            moto_server.start()
        wait_until(lambda: not service.spool.closed(), 60, "the spool to drain")
    finally:
        service.stop()

    final = segments(ctx, "cam-s3")
    waited_ids = {p.segment_id for p in waiting}
    assert waited_ids <= {s.id for s in final}, "a spooled segment was lost"
    assert len({s.run_id for s in final}) == 1, "recording never broke during the outage"
    assert_contiguous_within_runs(final)
    assert (final[-1].end - final[0].start).total_seconds() >= OUTAGE_S
    report = run_check(ctx)
    assert report.ok, report.violations
    assert report.decrypted == len(final)
