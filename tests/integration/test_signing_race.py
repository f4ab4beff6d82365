"""Processes that create the same signing key at once all end up with the key on disk."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from vault.signing import SigningKey


def _load(path: str, start: Barrier, out: Queue[Any]) -> None:
    start.wait()
    out.put(SigningKey.load_or_create(Path(path)).public_pem())


def test_processes_racing_to_create_a_key_all_use_the_one_on_disk(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(10):
        path = tmp_path / f"attempt-{attempt}" / "token.pem"
        start, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_load, args=(str(path), start, out)) for _ in range(6)]
        for proc in procs:
            proc.start()
        keys = [out.get(timeout=20) for _ in procs]  # a process that failed sends none
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        on_disk = SigningKey.load_or_create(path).public_pem()
        assert keys == [on_disk] * len(procs), f"attempt {attempt}: a process kept another key"
        assert [p.name for p in path.parent.iterdir()] == ["token.pem"]  # no temp file left


def test_a_key_that_cannot_be_written_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        SigningKey.load_or_create(tmp_path / "keys" / "token.pem")
    assert list((tmp_path / "keys").iterdir()) == []
