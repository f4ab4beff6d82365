"""Shared pieces of the benchmarks: output directory, measured child processes, reporting."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PYTHON = sys.executable


@dataclass(frozen=True)
class Measured:
    """One child process: CPU from its own rusage (``os.wait4``), wall from the parent."""

    user_s: float
    sys_s: float
    wall_s: float
    returncode: int
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def child_env() -> dict[str, str]:
    """The parent's environment without CCTV_* settings, so children see only what we pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCTV_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_measured(cmd: list[str], workdir: Path, *, env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd`` to completion; its CPU (user+sys, all threads and its waited-for children)
    comes from ``wait4`` on exactly that process, so nothing else on the machine counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env or child_env(), cwd=ROOT)
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    return Measured(
        user_s=ru.ru_utime,
        sys_s=ru.ru_stime,
        wall_s=wall,
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def settle() -> None:
    """Flush dirty pages left by the previous run so its write-back does not land in the next."""
    os.sync()
    time.sleep(0.5)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    import av

    ffmpeg = subprocess.run(
        ["/usr/bin/ffmpeg", "-version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg": ffmpeg,
        "platform": platform.platform(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError("child printed no JSON result")


def pg_reachable(url: str) -> bool:
    """Whether a PostgreSQL server answers at ``url`` (benchmarks skip that backend if not)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()
