"""The access API's hot-path reads on the embedded SQLite catalog: on the event loop's thread,
over one held connection, which a failure or shutdown gives back."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from access_api.deps import ApiServices
from cctv_vault.runtime import build_api, open_vault
from vault.errors import Unavailable
from vault.settings import Settings


def _one(conn: Connection) -> Any:
    # Through SQLAlchemy on purpose: it begins a transaction the read must not leave open.
    return conn.exec_driver_sql("SELECT 1").scalar()


def test_inline_reads_hold_one_connection_and_give_it_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    ctx = open_vault(settings)
    app, writer = build_api(settings, ctx)
    services: ApiServices = app.state.services
    checkouts: list[int] = []
    event.listen(ctx.engine, "checkout", lambda *_: checkouts.append(threading.get_ident()))
    pool = ctx.engine.pool
    try:
        assert services.reads_inline

        async def reads(n: int) -> list[Any]:
            return [await services.read(_one) for _ in range(n)]

        assert asyncio.run(reads(5)) == [1] * 5
        assert len(checkouts) == 1  # one connection for all five reads
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
        assert services._held is not None and not services._held.in_transaction()

        # Another thread (a test client's portal, say) reads over a pooled connection.
        other: list[Any] = []
        thread = threading.Thread(target=lambda: other.extend(asyncio.run(reads(2))))
        thread.start()
        thread.join()
        assert other == [1, 1] and len(checkouts) == 3
        assert pool.checkedout() == 1  # type: ignore[attr-defined]

        # A failed read reports the catalog unavailable and gives its connection back...
        def broken(conn: Connection) -> Any:
            return conn.exec_driver_sql("SELECT * FROM no_such_table").all()

        with pytest.raises(Unavailable, match="catalog unavailable"):
            asyncio.run(services.read(broken))
        assert services._held is None and pool.checkedout() == 0  # type: ignore[attr-defined]
        # ...and the next read takes a fresh one.
        assert asyncio.run(reads(1)) == [1] and len(checkouts) == 4

        services.release()  # what the app's shutdown does
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        if writer is not None:
            writer.close()
        ctx.engine.dispose()
