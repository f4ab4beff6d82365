"""An ingest process must not pay for the access API it never serves (P1 counts start-up)."""

from __future__ import annotations

import json
import subprocess
import sys

WEB = {"fastapi", "starlette", "uvicorn"}


def _loaded_after(module: str) -> list[str]:
    probe = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    return list(json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout
    ))


def test_runtime_imports_neither_the_access_api_nor_fastapi() -> None:
    assert set(_loaded_after("cctv_vault.runtime")) & (WEB | {"access_api"}) == set()


def test_the_command_line_loads_the_web_stack_only_to_serve() -> None:
    """``cctv-vault ingest`` (and every other command) starts without FastAPI and uvicorn;
    ``api`` and ``up`` import them when they serve."""
    assert set(_loaded_after("cctv_vault.cli")) & WEB == set()
