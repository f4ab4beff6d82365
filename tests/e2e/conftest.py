"""End-to-end fixtures: a vault on SQLite and the filesystem store under the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate
from vault.lifecycle import VaultContext
from vault.store.fs import FilesystemStore


@pytest.fixture
def ctx(tmp_path: Path) -> VaultContext:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    return VaultContext(
        engine=engine,
        store=FilesystemStore(tmp_path / "store"),
        keys=LocalKeyProvider(tmp_path / "kek"),
    )
