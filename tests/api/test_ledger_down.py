"""I3 fails closed: when the ledger cannot be written, footage calls answer 503 with no bytes.

The catalog is made unavailable for writing the way it happens in production: SQLite's write
lock held by another process's transaction, PostgreSQL's audit table locked by another
session, and PostgreSQL itself unreachable (its connection cut by a proxy that we stop).
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.api.conftest import Api, S, make_api, problem
from tests.integration.test_clip import T0, Native
from vault.crypto import LocalKeyProvider
from vault.db import make_engine

OP = "operator-tokyo"


@pytest.fixture
def api(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native]
) -> Iterator[Api]:
    # Long enough for the unlocked calls around the lock on a loaded CI machine; a locked
    # call still fails after this, not after the 30 s busy timeout.
    yield from make_api(engine, tmp_path, keys, natives, ledger_write_timeout_s=2.0)


@contextmanager
def ledger_locked(engine: Engine) -> Iterator[None]:
    """Another session holds the lock that every ledger write needs."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        assert path
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        with engine.connect() as conn:
            trans = conn.begin()
            conn.execute(text("LOCK TABLE audit_event IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                trans.rollback()


FOOTAGE = [
    ("/segments/{segment}/media", {}),
    ("/segments/{segment}/thumbnail", {}),
    ("/cameras/cam-a/clip", {"from": T0.isoformat(), "to": (T0 + 5 * S).isoformat()}),
    ("/cameras/cam-a/timeline", {"from": T0.isoformat(), "to": (T0 + 5 * S).isoformat()}),
]


@pytest.mark.parametrize(("path", "params"), FOOTAGE)
def test_locked_ledger_means_503_and_no_bytes(
    api: Api, engine: Engine, path: str, params: dict[str, str]
) -> None:
    grant = api.grant(OP)
    api.token(OP)
    url = path.format(segment=api.segments[0])
    head = api.head()
    api.order.entries.clear()
    with ledger_locked(engine):
        resp = api.get(url, OP, params={**params, "grant": grant})
    body = problem(resp, 503)
    assert "audit ledger unavailable" in body["detail"]
    assert resp.headers["x-content-type-options"] == "nosniff"  # a full answer, headers and all
    # Not one byte of footage was even read from the store, let alone sent.
    assert [e for e in api.order.entries if e.startswith("get ")] == []
    # Once the lock is gone the same call works, and is logged.
    resp = api.get(url, OP, params={**params, "grant": grant})
    assert resp.status_code == 200, resp.text
    assert api.order.entries[0].startswith("audit footage.")
    assert api.head() > head


class Proxy:
    """A TCP forwarder to PostgreSQL that can be cut: the database "goes away"."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.up = threading.Event()
        self.up.set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            self.conns.append(client)
            upstream = socket.create_connection(self.target)
            self.conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_database_gone_means_503_and_no_bytes(
    pg_engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native]
) -> None:
    """PostgreSQL cut off by the network (SQLite is a local file: its failure is the lock)."""
    engine = pg_engine
    url = engine.url
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        # The same per-test schema, reached through the proxy.
        proxied = make_engine(
            url.set(port=proxy.port).render_as_string(hide_password=False),
            connect_args={"options": _search_path(engine)},
            pool_pre_ping=True,
        )
        gen = make_api(proxied, tmp_path, keys, natives, ledger_write_timeout_s=3.0)
        api = next(gen)
        try:
            grant = api.grant(OP)
            api.token(OP)
            api.order.entries.clear()
            proxy.cut()
            resp = api.get(f"/segments/{api.segments[0]}/media", OP, params={"grant": grant})
            assert resp.status_code == 503, resp.text
            assert [e for e in api.order.entries if e.startswith("get ")] == []
            # The liveness probe says the catalog is unreachable too.
            assert "catalog unavailable" in problem(api.client.get("/healthz"), 503)["detail"]
            proxy.restore()
            resp = api.get(f"/segments/{api.segments[0]}/media", OP, params={"grant": grant})
            assert resp.status_code == 200, resp.text
            assert api.client.get("/healthz").json() == {"status": "ok"}
        finally:
            gen.close()
            proxied.dispose()
    finally:
        proxy.close()


def _search_path(engine: Engine) -> str:
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return f"-csearch_path={schema}"
