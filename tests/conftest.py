"""Shared fixtures: catalogs on SQLite and PostgreSQL, clocks, key providers.

Real-peer fixtures live in ``tests/support`` and are registered here as plugins.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from vault.crypto import LocalKeyProvider
from vault.db import make_engine, migrate

pytest_plugins = ["tests.support.s3", "tests.support.rtsp"]

IN_CI = os.environ.get("CI") == "true"
PG_URL = os.environ.get("CCTV_TEST_DATABASE_URL", "")


def _postgres_engine() -> Iterator[Engine]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI=true but CCTV_TEST_DATABASE_URL is not set: PostgreSQL tests must run")
        pytest.skip("CCTV_TEST_DATABASE_URL not set")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A freshly migrated catalog, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
        migrate(eng)
        yield eng
        eng.dispose()
    else:
        yield from _postgres_engine()


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "keys" / "kek.bin")


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A freshly migrated PostgreSQL catalog, for what only PostgreSQL has (advisory locks,
    a network between the API and its database)."""
    yield from _postgres_engine()
