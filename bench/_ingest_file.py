"""P1 child: ingest one media file through the real IngestService, then report and exit.

``python -m bench._ingest_file IN DATA_DIR`` builds a VaultContext on a fresh SQLite catalog
and filesystem store under DATA_DIR (``cctv_vault.runtime.open_vault``), syncs a one-camera
config whose source is ``kind="file"`` pointing at IN (60 s segments), and runs the real
IngestService — spool -> segmenter -> FragmentWriter -> thumbnail -> hash -> encrypt -> commit
to the store -> catalog row — until the file camera reaches the end of the file and the spool
is drained. The parent measures this whole process's CPU with ``os.wait4``; the JSON line this
prints on stdout adds a breakdown (start-up vs ingest) from ``getrusage(RUSAGE_SELF)``.

The JSON line also splits the ingest CPU by thread: the camera recorder (demux, segmenter,
fMP4 spool writes and fsyncs, thumbnails), the committer (``vault.lifecycle.commit_segment``:
read back, SHA-256, AES-256-GCM, store put, catalog row), the main thread (start, stop and the
final drain) and the rest (libavcodec's worker threads decoding thumbnails). Each thread reads
its own ``time.thread_time()`` as its ``run`` ends; nothing else is changed.

With ``--profile OUT`` every thread is profiled with cProfile (slower; for finding where the
time goes, not for the measurement).

``python -m bench._ingest_file --floor IN WORK_DIR`` runs the floor instead (see ``floor``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_T0 = time.monotonic()
_Thread = TypeVar("_Thread", bound=threading.Thread)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _timed(
    run: Callable[[_Thread], None], into: dict[str, float], role: str
) -> Callable[[_Thread], None]:
    """``run`` that adds its thread's own CPU (user + sys) to ``into[role]`` when it ends."""

    def timed_run(thread: _Thread) -> None:
        try:
            run(thread)
        finally:
            into[role] = into.get(role, 0.0) + time.thread_time()

    return timed_run


def main(argv: list[str]) -> int:
    args = list(argv)
    if args and args[0] == "--floor":
        return floor(Path(args[1]).resolve(), Path(args[2]))
    profile_out: str | None = None
    if "--profile" in args:
        i = args.index("--profile")
        profile_out = args[i + 1]
        del args[i : i + 2]
    src, data_dir = Path(args[0]).resolve(), Path(args[1])
    profilers = []
    if profile_out:
        import cProfile

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
    from ingest.recorder import CameraRecorder, Committer
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
    thread_cpu: dict[str, float] = {}
    CameraRecorder.run = _timed(  # type: ignore[method-assign,assignment]
        CameraRecorder.run, thread_cpu, "recorder"
    )
    Committer.run = _timed(  # type: ignore[method-assign,assignment]
        Committer.run, thread_cpu, "committer"
    )
    cpu_open = _cpu()
    main_start = time.thread_time()
    wall_start = time.monotonic()
    service.start()
    service.wait(None)  # returns when the file camera has ended
    service.stop()  # joins the recorder and the committer, then drains the spool
    wall_ingest = time.monotonic() - wall_start
    cpu_done = _cpu()
    cpu_main = time.thread_time() - main_start
    # The spool's own lock and the orderly-stop mark are not footage left behind.
    left = sorted(
        p.name
        for p in settings.resolved_spool_dir.iterdir()
        if p.name not in (".lock", CLEAN_MARK)
    )
    recorder = service.recorders[0]

    if profile_out:
        import pstats

        threading.setprofile(None)
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
                "cpu_recorder_s": round(thread_cpu.get("recorder", 0.0), 3),
                "cpu_committer_s": round(thread_cpu.get("committer", 0.0), 3),
                "cpu_main_s": round(cpu_main, 3),
                "cpu_other_threads_s": round(
                    cpu_done - cpu_open - cpu_main - sum(thread_cpu.values()), 3
                ),
                "wall_interpreter_s": round(wall_boot, 3),
                "wall_ingest_s": round(wall_ingest, 3),
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    return 0


def floor(src: Path, work: Path) -> int:
    """The design's own work on one file with nothing around it: the floor under P1.

    Ingest's real pure core and media code — ``Segmenter``, ``FragmentWriter`` (fragmented MP4
    in a spool file, fsync per fragment) and ``thumbnail_jpeg`` — then, for each closed segment,
    what the commit protocol cannot skip, done the cheapest way: SHA-256 of the plaintext read
    back from the spool; a fresh data key wrapped by a KEK; AES-256-GCM over the plaintext with
    the hash in the associated data (so a second pass), streamed through one reused 1 MiB
    buffer into the object file (temp, fsync, its pages dropped from the page cache, rename,
    directory fsync), byte for byte the ``CVS1 || nonce || ciphertext || tag`` blob; the
    thumbnail sealed and stored the same way;
    the manifest's three atomic writes (open, closed, sealed); one catalog row in SQLite (WAL,
    synchronous=FULL); the spool files removed. One thread; no service, ORM, object-store
    port, health or ledger. Prints the same JSON keys as ours where they apply.
    """
    import hashlib
    import sqlite3
    import uuid
    from datetime import UTC, datetime
    from fractions import Fraction

    cpu_boot = _cpu()
    import av
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    from ingest.fmp4 import FragmentWriter, fsync_directory
    from ingest.segmenter import (
        CloseSegment,
        OpenSegment,
        PacketMeta,
        Segmenter,
        SegmenterConfig,
        WritePacket,
    )
    from ingest.sources import read_packets
    from ingest.thumbnail import thumbnail_jpeg
    from vault.pending import atomic_write

    cpu_imports = _cpu()
    spool, objects = work / "spool", work / "objects"
    spool.mkdir(parents=True)
    objects.mkdir()
    kek = os.urandom(32)
    db = sqlite3.connect(work / "catalog.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE segment (id TEXT PRIMARY KEY, start TEXT, end TEXT, frames INT,"
        " bytes INT, sha256 TEXT, wrapped_dek BLOB, thumb_sha256 TEXT, thumb_dek BLOB)"
    )
    chunk = bytearray(1 << 20)
    sealed = bytearray(len(chunk) + 15)  # update_into wants room for a block more

    def put(object_id: str, parts: list[bytes]) -> None:
        temp, target = objects / f".{object_id}.tmp", objects / object_id
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for part in parts:
                os.write(fd, part)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        fsync_directory(objects)

    def seal_file(object_id: str, path: Path) -> tuple[str, bytes, int]:
        digest = hashlib.sha256()
        view = memoryview(chunk)
        size = 0
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(chunk):
                digest.update(view[:n])
                size += n
        sha256 = digest.hexdigest()
        dek, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
        encryptor = Cipher(algorithms.AES(dek), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(f"cctv-vault/v1|{object_id}|{sha256}".encode())
        temp, target = objects / f".{object_id}.tmp", objects / object_id
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"CVS1" + nonce)
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(chunk):
                    m = encryptor.update_into(view[:n], sealed)
                    out = memoryview(sealed)[:m]
                    while out:
                        out = out[os.write(fd, out) :]
            encryptor.finalize()
            os.write(fd, encryptor.tag)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as the store's put_stream
        finally:
            os.close(fd)
        os.replace(temp, target)
        fsync_directory(objects)
        return sha256, aes_key_wrap(kek, dek), size

    def seal_bytes(object_id: str, data: bytes) -> tuple[str, bytes]:
        sha256 = hashlib.sha256(data).hexdigest()
        dek, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
        aad = f"cctv-vault/v1|{object_id}|{sha256}".encode()
        put(object_id, [b"CVS1" + nonce, AESGCM(dek).encrypt(nonce, data, aad)])
        return sha256, aes_key_wrap(kek, dek)

    container = av.open(str(src))
    stream = container.streams.video[0]
    time_base = stream.time_base or Fraction(1, 90_000)
    segmenter = Segmenter(time_base, SegmenterConfig(target_seconds=60))
    cpu_open = _cpu()
    wall_start = time.monotonic()
    writer: FragmentWriter | None = None
    segment_id, start, thumb = "", "", b""
    segments = frames = 0
    commit_cpu = 0.0  # what ours' committer thread does, for comparing thread by thread
    main_start = time.thread_time()

    def execute(action: object, packet: av.Packet[Any] | None) -> None:
        nonlocal writer, segment_id, start, thumb, segments, frames, commit_cpu
        if isinstance(action, WritePacket):
            assert writer is not None and packet is not None
            writer.write(packet, action.pts, action.dts)
        elif isinstance(action, OpenSegment):
            assert packet is not None
            segment_id, start = str(uuid.uuid4()), action.wall_start.isoformat()
            atomic_write(spool / f"{segment_id}.json", b'{"state": "open"}')
            writer = FragmentWriter(spool / f"{segment_id}.mp4", stream)
            thumb = thumbnail_jpeg(packet, stream)
            atomic_write(spool / f"{segment_id}.jpg", thumb)
        elif isinstance(action, CloseSegment):
            assert writer is not None
            writer.close()
            writer = None
            manifest = spool / f"{segment_id}.json"
            atomic_write(manifest, b'{"state": "closed"}')
            commit_started = time.thread_time()
            atomic_write(manifest, b'{"state": "closed", "seal": "..."}')
            media = spool / f"{segment_id}.mp4"
            sha256, wrapped, size = seal_file(segment_id, media)
            thumb_sha, thumb_wrapped = seal_bytes(f"thumb-{segment_id}", thumb)
            db.execute(
                "INSERT INTO segment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    segment_id,
                    start,
                    action.wall_end.isoformat(),
                    action.frames,
                    size,
                    sha256,
                    wrapped,
                    thumb_sha,
                    thumb_wrapped,
                ),
            )
            db.commit()
            for path in (media, spool / f"{segment_id}.jpg", manifest):
                path.unlink()
            fsync_directory(spool)
            commit_cpu += time.thread_time() - commit_started
            segments += 1
            frames += action.frames

    for packet in read_packets(container):
        meta = PacketMeta(
            pts=packet.pts,
            dts=packet.dts,
            keyframe=packet.is_keyframe,
            size=packet.size,
            duration=packet.duration,
            received=datetime.now(UTC),
        )
        for action in segmenter.feed(meta):
            execute(action, packet)
    for action in segmenter.finish():
        execute(action, None)
    container.close()
    db.close()
    cpu_done = _cpu()
    cpu_main = time.thread_time() - main_start
    print(
        json.dumps(
            {
                "segments_closed": segments,
                "committed": segments,
                "frames": frames,
                "spool_left": sorted(p.name for p in spool.iterdir()),
                "cpu_interpreter_s": round(cpu_boot, 3),
                "cpu_imports_s": round(cpu_imports - cpu_boot, 3),
                "cpu_open_vault_s": round(cpu_open - cpu_imports, 3),
                "cpu_ingest_s": round(cpu_done - cpu_open, 3),
                "cpu_recorder_s": round(cpu_main - commit_cpu, 3),
                "cpu_committer_s": round(commit_cpu, 3),
                "cpu_other_threads_s": round(cpu_done - cpu_open - cpu_main, 3),
                "wall_ingest_s": round(time.monotonic() - wall_start, 3),
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
