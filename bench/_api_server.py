"""uvicorn factory (and launcher) for P3: the real access API, with or without its ledger.

``uvicorn bench._api_server:create --factory --workers 2`` builds, in each worker, exactly what
``cctv_vault.runtime.api_app_from_env`` builds (``Settings()`` from ``CCTV_*``,
``open_vault``, ``build_api``), except that ``BENCH_P3_LEDGER=off`` hands ``build_api`` a
:class:`vault.ledger.NullLedger`: the comparison run of the benchmark, never a deployment.

The app is wrapped in a counter of response statuses per route kind (and of the ledger
writer's group commits, from its debug line per batch), written as JSON to
``$BENCH_P3_STATS_DIR/<pid>.json`` when the worker shuts down, so the benchmark can match the
ledger's events against the responses the server actually started to send (the load
generator's own count misses the requests in flight when it stops). ``<pid>.ready`` appears
there once the worker's startup is complete.

``python -m bench._api_server --port P --workers 2`` serves the same factory the way
``uvicorn.run(..., workers=2)`` does (which is what ``cctv-vault api --workers 2`` calls), plus
TCP_NODELAY on the listening socket: see :func:`serve`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections import Counter
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

from cctv_vault.runtime import build_api, open_vault, tune_api_process
from vault.ledger import NullLedger
from vault.settings import Settings

__all__ = ["LEDGER_ENV", "STATS_ENV", "WAIT_ENV", "create", "serve"]

LEDGER_ENV = "BENCH_P3_LEDGER"  # "on" (the real LedgerWriter, default), "off" (NullLedger) or
# "wait" (NullLedger that suspends each request for WAIT_ENV milliseconds first)
WAIT_ENV = "BENCH_P3_WAIT_MS"
STATS_ENV = "BENCH_P3_STATS_DIR"


def route_kind(path: str) -> str:
    if path.endswith("/timeline"):
        return "timeline"
    if path in ("/healthz", "/me"):
        return path[1:]
    return "other"


class LedgerBatches(logging.Handler):
    """Counts the writer's group commits and their events (its debug line per batch)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.batches = 0
        self.events = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("ledger batch committed") and record.args:
            self.batches += 1
            self.events += int(record.args[0])  # type: ignore[index]

    @classmethod
    def attach(cls) -> LedgerBatches:
        handler = cls()
        logger = logging.getLogger("vault.ledger")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        return handler


class StatusCounter:
    """Counts ``http.response.start`` statuses per route kind, and the bodies of 5xx answers
    (problem details: why); dumps both at shutdown."""

    def __init__(
        self, app: ASGIApp, mode: str, stats_dir: Path | None, batches: LedgerBatches
    ) -> None:
        self.app = app
        self.mode = mode
        self.stats_dir = stats_dir
        self.batches = batches
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def _write(self, suffix: str, text: str) -> None:
        if self.stats_dir is None:
            return
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        (self.stats_dir / f"{os.getpid()}{suffix}").write_text(text)

    def dump(self) -> None:
        self._write(".json", json.dumps({
            "mode": self.mode, "counts": self.counts, "errors": self.errors,
            "ledger_batches": self.batches.batches, "ledger_batch_events": self.batches.events,
        }))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def send_lifespan(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    self._write(".ready", self.mode)
                elif message["type"] == "lifespan.shutdown.complete":
                    self.dump()  # after the app's own shutdown: the ledger writer is closed
                await send(message)

            await self.app(scope, receive, send_lifespan)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = route_kind(scope["path"])
        status = 0

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.counts[f"{kind} {status}"] += 1
            elif message["type"] == "http.response.body" and status >= 500:
                self.errors[f"{kind} {status} {message.get('body', b'')[:300].decode()}"] += 1
            await send(message)

        await self.app(scope, receive, send_counting)


def create() -> ASGIApp:
    mode = os.environ.get(LEDGER_ENV, "on")
    if mode not in ("on", "off", "wait"):
        raise SystemExit(f"{LEDGER_ENV} must be on, off or wait, not {mode!r}")
    settings = Settings()
    tune_api_process(settings)
    ctx = open_vault(settings)
    sink = None
    if mode == "off":
        sink = NullLedger()
    elif mode == "wait":
        sink = NullLedger(delay_s=float(os.environ[WAIT_ENV]) / 1000)
    app, _writer = build_api(settings, ctx, sink=sink)
    stats = os.environ.get(STATS_ENV)
    return StatusCounter(app, mode, Path(stats) if stats else None, LedgerBatches.attach())


def serve(host: str, port: int, workers: int) -> None:
    """``uvicorn.run(..., workers=N)`` with TCP_NODELAY on the listening socket.

    uvicorn binds the shared socket of its worker processes as ``socket.socket(AF_INET)``,
    whose ``proto`` is 0, so asyncio's transport does not set TCP_NODELAY on the connections
    it accepts (``_set_nodelay`` wants ``proto == IPPROTO_TCP``); h11 writes the headers and
    the body of a response separately, and on a keep-alive connection Nagle's algorithm holds
    the body until the client's delayed ACK (~40 ms). Linux copies TCP_NODELAY from the
    listening socket to the accepted ones, which is what this sets.
    """
    config = uvicorn.Config(
        "bench._api_server:create", factory=True, host=host, port=port, workers=workers,
        log_level="warning", access_log=False,
    )
    sock = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._api_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    serve(args.host, args.port, args.workers)
