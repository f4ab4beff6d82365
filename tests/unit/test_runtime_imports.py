"""An ingest process must not pay for the access API it never serves (P1 counts start-up)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_runtime_imports_neither_the_access_api_nor_fastapi() -> None:
    probe = (
        "import json, sys\n"
        "import cctv_vault.runtime\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in {'access_api', 'fastapi', 'starlette', 'uvicorn'})))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout
    )
    assert loaded == []

