"""P1 child: ingest one media file through the real IngestService, then report and exit.

``python -m bench._ingest_file IN DATA_DIR`` builds a VaultContext on a fresh SQLite catalog
and filesystem store under DATA_DIR (``cctv_vault.runtime.open_vault``), syncs a one-camera
config whose source is ``kind="file"`` pointing at IN (60 s segments), and runs the real
IngestService — spool -> segmenter -> FragmentWriter -> thumbnail -> hash -> encrypt -> commit
to the store -> catalog row — until the file camera reaches the end of the file and the spool
is drained. The parent measures this whole process's CPU with ``os.wait4``; the JSON line this
prints on stdout adds a breakdown (start-up vs ingest) from ``getrusage(RUSAGE_SELF)``.

With ``--profile OUT`` every thread is profiled with cProfile (slower; for finding where the
time goes, not for the measurement).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time

_T0 = time.monotonic()


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str]) -> int:
    from pathlib import Path

    args = list(argv)
    profile_out: str | None = None
    if "--profile" in args:
        i = args.index("--profile")
        profile_out = args[i + 1]
        del args[i : i + 2]
    src, data_dir = Path(args[0]).resolve(), Path(args[1])
    profilers = []
    if profile_out:
        import cProfile
        import threading

        # thread_time: each thread's own CPU time, so the profile attributes CPU, not waits.
        def _enable(*_: object) -> None:
            prof = cProfile.Profile(time.thread_time)
            profilers.append(prof)
            prof.enable()

        threading.setprofile(_enable)  # each new thread starts its own profiler
        main_prof = cProfile.Profile(time.thread_time)
        profilers.append(main_prof)
        main_prof.enable()

    cpu_boot = _cpu()
    wall_boot = time.monotonic() - _T0
    from cctv_vault.runtime import IngestService, open_vault
    from ingest.spool import CLEAN_MARK
    from vault.config import (
        CameraConfig,
        RetentionPolicyConfig,
        SiteConfig,
        SourceConfig,
        VaultConfig,
    )
    from vault.settings import Settings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("libav").setLevel(logging.ERROR)
    cpu_imports = _cpu()

    settings = Settings(data_dir=data_dir, spool_max_bytes=16 * 1024**3)
    ctx = open_vault(settings)
    config = VaultConfig(
        sites=[SiteConfig(id="bench", name="Bench DC")],
        retention_policies=[RetentionPolicyConfig(id="p90", days=90)],
        cameras=[
            CameraConfig(
                id="cam-file",
                site="bench",
                name="Bench file camera",
                retention_policy="p90",
                segment_seconds=60,
                source=SourceConfig(kind="file", url=str(src)),
            )
        ],
    )
    service = IngestService(ctx, config, settings)
    cpu_open = _cpu()
    wall_start = time.monotonic()
    service.start()
    service.wait(None)  # returns when the file camera has ended
    service.stop()  # joins the recorder and the committer, then drains the spool
    wall_ingest = time.monotonic() - wall_start
    cpu_done = _cpu()
    # The spool's own lock and the orderly-stop mark are not footage left behind.
    left = sorted(
        p.name
        for p in settings.resolved_spool_dir.iterdir()
        if p.name not in (".lock", CLEAN_MARK)
    )
    recorder = service.recorders[0]

    if profile_out:
        import pstats

        threading.setprofile(None)  # type: ignore[arg-type]
        for prof in profilers:
            prof.disable()
        stats = pstats.Stats(profilers[0])
        for prof in profilers[1:]:
            stats.add(prof)
        stats.dump_stats(profile_out)

    print(
        json.dumps(
            {
                "segments_closed": recorder.segments_closed,
                "committed": service.committer.committed,
                "spool_left": left,
                "cpu_interpreter_s": round(cpu_boot, 3),
                "cpu_imports_s": round(cpu_imports - cpu_boot, 3),
                "cpu_open_vault_s": round(cpu_open - cpu_imports, 3),
                "cpu_ingest_s": round(cpu_done - cpu_open, 3),
                "wall_interpreter_s": round(wall_boot, 3),
                "wall_ingest_s": round(wall_ingest, 3),
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
