"""P3 profiling: ``py-spy`` on the API's worker processes, and where their samples fall."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

from bench._common import OUT, ROOT

__all__ = ["py_spy", "start_py_spy", "summarize_profile"]


def py_spy() -> str | None:
    for candidate in (OUT / "tools" / "bin" / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def start_py_spy(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    exe = py_spy()
    assert exe is not None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return [
        subprocess.Popen(
            # --gil: only the thread holding the GIL, i.e. the Python work of a process that
            # is CPU-bound on it; a thread inside SQLite or waiting for the GIL does not count.
            [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
             "--format", "raw", "--threads", "--gil", "--nonblocking",
             "-o", str(out / f"{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


# A sample whose innermost frame is one of these is a thread waiting, not working.
IDLE_LEAVES = frozenset({
    "Condition.wait (threading.py)", "EpollSelector.select (selectors.py)",
    "Connection._recv (multiprocessing/connection.py)",
})
# Where a busy sample belongs: the first rule any of its frames matches, in this order.
BUCKETS = (
    ("ledger writer thread (hash chain, INSERT, COMMIT)", ("LedgerWriter._run",)),
    ("request: ledger hand-off and wait (draft, write_async, settle)",
     ("Auditor.arecord", "Auditor.record", "_settle (vault/ledger.py")),
    ("request: JWT verify (EdDSA, claims)", ("TokenService.verify",)),
    ("request: principal lookup", ("resolve (access_api/principals.py",)),
    ("request: catalog reads (timeline, camera + grant)", ("Prepared.rows",)),
    ("request: decide", ("decide (access_api/policy.py",)),
    ("request: timeline response (JSON)", ("TypeAdapter.dump_json",)),
    ("request: route and gate, other", ("timeline (access_api/routes/footage.py",
                                        "_gate (access_api/routes/footage.py")),
    ("FastAPI/Starlette/pydantic (routing, params, dependencies, serialization)",
     ("fastapi/", "starlette/", "pydantic")),
    ("anyio thread-pool hand-offs", ("anyio/",)),
    ("uvicorn + h11 (HTTP parsing, transport)", ("uvicorn/", "h11/")),
    ("asyncio event loop", ("asyncio/",)),
)


def summarize_profile(folder: Path, limit: int = 25) -> list[str]:
    """Busy samples of both workers, by bucket, and the top functions by own samples."""
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for path in folder.glob("*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            frames = stack.split(";")[1:]  # [0] is the thread
            if not frames:
                continue
            count = int(count_text)
            leaf = short_frame(frames[-1])
            if leaf in IDLE_LEAVES:
                idle += count
                continue
            busy += count
            own[leaf] += count
            bucket = next(
                (name for name, needles in BUCKETS
                 if any(n in f for f in frames for n in needles)),
                "other",
            )
            buckets[bucket] += count
    if not busy:
        return ["no busy samples"]
    lines = [f"{busy} busy samples over both workers ({idle} idle-thread samples left out)",
             "by where in the request:"]
    lines += [f"  {n / busy:6.1%}  {name}" for name, n in buckets.most_common()]
    lines.append(f"top {limit} functions by own samples:")
    lines += [f"  {n / busy:6.1%}  {name}" for name, n in own.most_common(limit)]
    return lines


def short_frame(frame: str) -> str:
    """``function (/…/site-packages/pkg/module.py:line)`` -> ``function (pkg/module.py)``;
    standard-library modules keep their bare name (``threading.py``)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif where.startswith(str(ROOT)):
        parts = where[len(str(ROOT)) + 1 :].split("/")
    elif len(parts) > 1 and parts[-2].startswith("python3"):
        parts = parts[-1:]
    return f"{name} ({'/'.join(parts[-2:])})"
