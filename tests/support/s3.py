"""pytest plugin: moto's S3 server on loopback, and object stores over it and over a temp dir.

``moto_server`` runs once per session; tests that stop it (to fault the store) restart it on the
same port, and moto keeps its buckets in-process, so later tests see no difference.
``store`` runs a test once on each backend, which is how the contract suite covers both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from vault.store.base import ObjectStore
from vault.store.fs import FilesystemStore
from vault.store.s3 import S3Store, http_client

__all__ = ["MotoServer", "fs_store", "moto_server", "s3_client", "s3_store", "store"]

IN_CI = os.environ.get("CI") == "true"
HOST = "127.0.0.1"
# moto checks no signatures; these only have to be non-empty (and recognisable in assertions).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


class MotoServer:
    """One moto S3 server on a fixed loopback port that tests may stop and start again."""

    def __init__(self) -> None:
        self.port = 0  # the first start picks a free port; restarts reuse it
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        from moto.server import ThreadedMotoServer  # imported late: moto is a dev extra

        server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        server.start()  # returns once the socket is bound and serving
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        if self._server is None:
            return
        # Werkzeug closes the listening socket on shutdown, so clients get "connection
        # refused" at once rather than hanging in the backlog.
        self._server.stop()
        self._server = None


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        message = f"moto[server] cannot be imported ({exc}): the S3 contract tests cannot run"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_client(moto_server: MotoServer) -> Minio:
    # A test that stopped the server and failed before restarting it must not sink the rest.
    moto_server.start()
    return Minio(
        moto_server.endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        secure=False,
        region="us-east-1",
        http_client=http_client(),
    )


@pytest.fixture
def s3_store(s3_client: Minio) -> S3Store:
    # A fresh bucket per test: locked objects cannot be cleaned up, so tests never share one.
    return S3Store(s3_client, f"test-{uuid.uuid4().hex[:24]}")


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """The same test once on the filesystem backend and once on S3 (moto)."""
    backend: ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return backend
