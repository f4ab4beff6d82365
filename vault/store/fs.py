"""Filesystem object store: the embedded default backend.

Layout under ``root``::

    objects/<key>       the object's bytes
    meta/<key>.json     sidecar: {"metadata": {...}, "retain_until": ISO | null, "legal_hold": bool}
    .lock               flock()ed around every mutation, so a retention check and the unlink it
                        allows are one step for every process sharing the root

Invariants:

- F1. An object whose sidecar holds a legal hold, or a ``retain_until`` after "now" (the injected
  clock), is never removed, and never replaced by different bytes, through the public methods.
- F2. The sidecar is written before the object it describes. A crash between the two leaves a
  sidecar without an object (invisible; the next put of that key rewrites it), never an object
  whose lock was lost.
- F3. Every file appears atomically: temp file in the same directory, write, fsync, ``os.replace``,
  fsync of the directory. New directories are fsynced into their parents.
- F4. ``list`` yields keys only: sidecars live under ``meta/``, and temp files start with ``.``,
  which no key segment may (see :func:`validate_key`).

Put, in order: (1) write the bytes to a temp file next to the target (outside the lock: large
writes do not serialise writers); (2) take the lock; (3) read the current sidecar: if the object is
locked and the new bytes differ, refuse (Conflict) and drop the temp file; (4) write the new
sidecar; (5) rename the temp file over the object; (6) fsync the directory; (7) release the lock.

Delete, per key, under the lock: refuse if locked; unlink the object, then its sidecar; fsync both
directories. Deleting a key that does not exist succeeds, as on S3. Empty directories are left in
place: pruning them would race with a concurrent put creating its temp file there.

Crash recovery: leftover ``.*.tmp-*`` files are ignored by every read; an orphan sidecar is
ignored by ``list`` and ``head`` (they start from ``objects/``).

The key, prefix and metadata rules are shared with the S3 backend so both accept exactly the
same inputs.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vault.errors import Conflict, InvalidInput, NotFound, Unavailable, VaultError
from vault.store.base import (
    MAX_DELETE_BATCH,
    ByteSource,
    DeleteFailure,
    ObjectInfo,
    SourceFailed,
    read_source,
)
from vault.timerange import as_utc, parse_instant, utcnow

_WRITE_CHUNK = 1024 * 1024

__all__ = [
    "PROBE_PREFIX",
    "FilesystemStore",
    "retention_instant",
    "validate_key",
    "validate_metadata",
    "validate_prefix",
]

log = logging.getLogger(__name__)

PROBE_PREFIX = "_probe/"
MAX_KEY_LENGTH = 1024  # S3's limit, applied to both backends so a key valid on one is on the other
MAX_SEGMENT_LENGTH = 200  # leaves room for the sidecar's ".json" and temp suffixes under NAME_MAX
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata (names plus values)

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_PARTIAL_SEGMENT = re.compile(r"[A-Za-z0-9._-]*")
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")
_TEMP_MARK = ".tmp-"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative ``/``-separated path of ``[A-Za-z0-9._-]`` segments.

    Segments may not start with ``.``: that refuses ``.`` and ``..`` and keeps the filesystem
    backend's temp files (``.name.tmp-*``) out of the key space.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput("object key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise InvalidInput(f"object key is longer than {MAX_KEY_LENGTH} bytes")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidInput(
                f"object key {key!r} is not a relative path of [A-Za-z0-9._-] segments"
                " (no empty, '.'-leading or over-long segments, no '/' at either end)"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: ``""``, or whole key segments followed by a partial last segment."""
    if not isinstance(prefix, str):
        raise InvalidInput("prefix must be a string")
    if not prefix:
        return prefix
    directory, _, partial = prefix.rpartition("/")
    if directory:
        validate_key(directory)
    elif prefix.startswith("/"):
        raise InvalidInput(f"prefix {prefix!r} must be relative")
    if not _PARTIAL_SEGMENT.fullmatch(partial):
        raise InvalidInput(f"prefix {prefix!r} has characters outside [A-Za-z0-9._-/]")
    return prefix


def validate_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata travels as HTTP headers on S3: lower-case names, printable ASCII values.

    Enforced on both backends so metadata reads back identically from either.
    """
    checked: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise InvalidInput(f"metadata name {name!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
        if (
            not isinstance(value, str)
            or not _METADATA_VALUE.fullmatch(value)
            or value != value.strip()
        ):
            raise InvalidInput(
                f"metadata {name!r} must be printable ASCII without surrounding whitespace"
            )
        total += len(name) + len(value)
        checked[name] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return checked


def retention_instant(value: datetime) -> datetime:
    """UTC, rounded *up* to the millisecond.

    S3 keeps retain-until dates to the millisecond; rounding up (never down) means neither
    backend ever retains for less than asked, and both report the same instant from ``head``.
    """
    value = as_utc(value, field="retain_until")
    spare = value.microsecond % 1000
    if spare:
        value += timedelta(microseconds=1000 - spare)
    return value


def validate_range(offset: int, length: int | None) -> None:
    if offset < 0:
        raise InvalidInput(f"offset must be >= 0 (got {offset})")
    if length is not None and length < 0:
        raise InvalidInput(f"length must be >= 0 (got {length})")


@dataclass(frozen=True, slots=True)
class _Sidecar:
    metadata: dict[str, str] = field(default_factory=dict)
    retain_until: datetime | None = None
    legal_hold: bool = False

    def locked_at(self, now: datetime) -> str | None:
        """Why the object cannot be deleted or replaced at ``now``, or None if it can."""
        if self.legal_hold:
            return "under legal hold"
        if self.retain_until is not None and self.retain_until > now:
            return f"retained until {self.retain_until.isoformat()}"
        return None

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "metadata": self.metadata,
            "retain_until": self.retain_until.isoformat() if self.retain_until else None,
            "legal_hold": self.legal_hold,
        }
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, where: Path) -> _Sidecar:
        try:
            document = json.loads(raw)
            retain = document.get("retain_until")
            return cls(
                metadata={str(k): str(v) for k, v in document.get("metadata", {}).items()},
                retain_until=parse_instant(retain, field="retain_until") if retain else None,
                legal_hold=bool(document.get("legal_hold", False)),
            )
        except (ValueError, TypeError, AttributeError, InvalidInput) as exc:
            # A sidecar we cannot read may be hiding a lock: never treat it as "unlocked".
            raise Unavailable(f"filesystem store: unreadable sidecar {where}: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStore:
    """Objects as files under ``root``; retention and legal hold enforced here (see module doc)."""

    name = "fs"

    def __init__(self, root: Path, clock: Callable[[], datetime] = utcnow) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._lock_path = self.root / ".lock"
        self._clock = clock
        with self._io("create store at", str(self.root)):
            for directory in (self._objects, self._meta):
                self._make_dirs(directory)

    # -- the port -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        validate_key(key)
        sidecar = _Sidecar(
            metadata=validate_metadata(metadata),
            retain_until=retention_instant(retain_until) if retain_until is not None else None,
        )
        target = self._object_path(key)
        with self._io("put", key):
            self._make_dirs(target.parent)
            if target.is_dir():
                raise Conflict(f"key {key} names a directory of other keys on this store")
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    current = self._read_sidecar(key) if target.is_file() else None
                    if current is not None:
                        reason = current.locked_at(self._now())
                        if reason is not None:
                            if not self._same_bytes(target, data):
                                raise Conflict(f"object {key} is {reason}: it cannot be replaced")
                            # Same bytes again (a retried put): the lock may only grow.
                            sidecar = _Sidecar(
                                metadata=sidecar.metadata,
                                retain_until=_later(current.retain_until, sidecar.retain_until),
                                legal_hold=current.legal_hold,
                            )
                    self._write_sidecar(key, sidecar)
                    os.replace(temp, target)
                    _fsync_dir(target.parent)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
                raise

    def put_stream(
        self,
        key: str,
        source: ByteSource,
        length: int,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        """``put`` from a stream: the temp file is filled through one reused 1 MiB buffer.

        The steps are put's (1)-(7); only (1) reads ``source`` instead of a buffer (and drops
        the written pages from the page cache after the fsync), and (3) compares the temp file
        with the locked object instead of bytes in memory.
        """
        validate_key(key)
        if length < 0:
            raise InvalidInput(f"length must be >= 0 (got {length})")
        sidecar = _Sidecar(
            metadata=validate_metadata(metadata),
            retain_until=retention_instant(retain_until) if retain_until is not None else None,
        )
        target = self._object_path(key)
        try:
            with self._io("put", key):
                self._make_dirs(target.parent)
                if target.is_dir():
                    raise Conflict(f"key {key} names a directory of other keys on this store")
                temp = self._write_temp_from(target, source, length, key)
                try:
                    # Keep in step with put(): the same lock rule (F1) and order (F2).
                    with self._locked():
                        current = self._read_sidecar(key) if target.is_file() else None
                        if current is not None:
                            reason = current.locked_at(self._now())
                            if reason is not None:
                                if not _same_files(target, temp):
                                    raise Conflict(
                                        f"object {key} is {reason}: it cannot be replaced"
                                    )
                                sidecar = _Sidecar(
                                    metadata=sidecar.metadata,
                                    retain_until=_later(
                                        current.retain_until, sidecar.retain_until
                                    ),
                                    legal_hold=current.legal_hold,
                                )
                        self._write_sidecar(key, sidecar)
                        os.replace(temp, target)
                        _fsync_dir(target.parent)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        temp.unlink()
                    raise
        except SourceFailed as failed:
            raise failed.error from None  # the source's own error, not the store's

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        validate_range(offset, length)
        if length == 0:
            return b""
        with self._io("get", key):
            try:
                with self._object_path(key).open("rb") as handle:
                    handle.seek(offset)
                    return handle.read() if length is None else handle.read(length)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise NotFound(f"object {key} not found") from exc

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        with self._io("head", key):
            try:
                status = self._object_path(key).stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat.S_ISREG(status.st_mode):
                return None  # a directory of other keys, not an object
            sidecar = self._read_sidecar(key) or _Sidecar()
        return ObjectInfo(
            key=key,
            size=status.st_size,
            metadata=dict(sidecar.metadata),
            retain_until=sidecar.retain_until,
            legal_hold=sidecar.legal_hold,
        )

    def delete_many(self, keys: Sequence[str]) -> list[DeleteFailure]:
        if len(keys) > MAX_DELETE_BATCH:
            raise InvalidInput(f"delete_many takes at most {MAX_DELETE_BATCH} keys ({len(keys)})")
        for key in keys:
            validate_key(key)
        return self._delete(keys, honour_locks=True)

    def list(self, prefix: str) -> Iterator[str]:
        # Not a generator: a bad prefix or an unreadable tree fails here, not at first next().
        validate_prefix(prefix)
        directory, _, _ = prefix.rpartition("/")
        start = self._objects / directory if directory else self._objects
        found: list[str] = []
        with self._io("list", prefix):
            for dirpath, dirnames, filenames in os.walk(start, onerror=_walk_error):
                # Temp files and anything else dot-named are never keys (F4).
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                base = Path(dirpath).relative_to(self._objects).as_posix()
                for filename in filenames:
                    if filename.startswith("."):
                        continue
                    key = filename if base == "." else f"{base}/{filename}"
                    if key.startswith(prefix):
                        found.append(key)
        # Full-key byte order, as S3 lists: a depth-first walk would put "a/b" before "a-c".
        return iter(sorted(found))

    def set_retention(self, key: str, retain_until: datetime) -> None:
        validate_key(key)
        until = retention_instant(retain_until)
        with self._io("set retention on", key), self._locked():
            current = self._existing_sidecar(key)
            if current.retain_until is not None and until < current.retain_until:
                raise Conflict(
                    f"object {key} is retained until {current.retain_until.isoformat()}:"
                    f" retention can only be extended (asked {until.isoformat()})"
                )
            self._write_sidecar(
                key,
                _Sidecar(current.metadata, retain_until=until, legal_hold=current.legal_hold),
            )

    def set_legal_hold(self, key: str, on: bool) -> None:
        validate_key(key)
        with self._io("set legal hold on", key), self._locked():
            current = self._existing_sidecar(key)
            self._write_sidecar(
                key, _Sidecar(current.metadata, retain_until=current.retain_until, legal_hold=on)
            )

    def probe_lock_enforcement(self) -> bool:
        """Prove delete_many refuses a retained object and still deletes an unlocked one.

        The unlocked control object shows a refusal is due to the lock, not to a broken store.
        """
        probe_id = uuid.uuid4().hex
        locked_key = f"{PROBE_PREFIX}{probe_id}"
        control_key = f"{PROBE_PREFIX}{probe_id}-control"
        self.put(locked_key, b"lock probe", {}, retain_until=self._now() + timedelta(days=1))
        self.put(control_key, b"lock probe control", {})
        try:
            refused = {f.key for f in self.delete_many([locked_key, control_key])}
            return locked_key in refused and control_key not in refused
        finally:
            # The probe must not linger for a day: remove it past the lock this backend enforces.
            self._delete([locked_key, control_key], honour_locks=False)

    # -- internals ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return as_utc(self._clock(), field="clock")

    def _object_path(self, key: str) -> Path:
        return self._objects / key

    def _sidecar_path(self, key: str) -> Path:
        return self._meta / f"{key}.json"

    @contextlib.contextmanager
    def _io(self, action: str, key: str) -> Iterator[None]:
        """OS errors (disk gone, EIO, ENOSPC) mean the store cannot serve now: Unavailable."""
        try:
            yield
        except VaultError:
            raise
        except OSError as exc:
            raise Unavailable(
                f"filesystem store at {self.root}: {action} {key} failed: {exc.strerror or exc}"
            ) from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock() locks belong to the open file description, so this excludes other threads of
        # this process as well as other processes sharing the root.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents, fsyncing each new entry into its parent."""
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            if probe.exists():
                raise Conflict(f"{probe} is an object, not a directory: key prefix collides")
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise Conflict(
                        f"{path} is an object, not a directory: key prefix collides"
                    ) from None
                continue  # a concurrent put created it; it fsynced the parent
            _fsync_dir(path.parent)

    def _write_temp(self, target: Path, data: bytes | bytearray) -> Path:
        temp = target.with_name(f".{target.name}{_TEMP_MARK}{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Chunks of 1 MiB: one huge write() costs the kernel several times more here
            # (measured: 30 MB objects, see docs/ref/bench.md).
            view = memoryview(data)
            while view:
                written = os.write(fd, view[:_WRITE_CHUNK])
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        os.close(fd)
        return temp

    def _write_temp_from(self, target: Path, source: ByteSource, length: int, key: str) -> Path:
        """A temp file holding exactly ``length`` bytes of ``source``, fsynced."""
        temp = target.with_name(f".{target.name}{_TEMP_MARK}{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            buffer = memoryview(bytearray(max(1, min(_WRITE_CHUNK, length))))
            left = length
            while left:
                count = read_source(source, buffer[: min(left, len(buffer))])
                if not count:
                    raise InvalidInput(
                        f"stream for {key} ended after {length - left} of {length} bytes"
                    )
                view = buffer[:count]
                while view:
                    view = view[os.write(fd, view) :]
                left -= count
            if read_source(source, buffer[:1]):
                raise InvalidInput(f"stream for {key} is longer than its length {length}")
            os.fsync(fd)
            # A streamed object is large and written once (a segment: ~30 MB a camera-minute)
            # and is not read back by its writer: drop its now clean pages from the page cache
            # so the next one reuses them. Letting the cache grow instead cost ingest ~2.5 CPU s
            # per camera-hour on the benchmark VM (docs/ref/bench.md, P1); the price is that the
            # first read of just-written footage comes from disk.
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        os.close(fd)
        return temp

    def _write_sidecar(self, key: str, sidecar: _Sidecar) -> None:
        target = self._sidecar_path(key)
        self._make_dirs(target.parent)
        temp = self._write_temp(target, sidecar.to_json())
        try:
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        _fsync_dir(target.parent)

    def _read_sidecar(self, key: str) -> _Sidecar | None:
        path = self._sidecar_path(key)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _Sidecar.from_json(raw, where=path)

    def _existing_sidecar(self, key: str) -> _Sidecar:
        if not self._object_path(key).is_file():
            raise NotFound(f"object {key} not found")
        return self._read_sidecar(key) or _Sidecar()

    def _same_bytes(self, path: Path, data: bytes | bytearray) -> bool:
        if path.stat().st_size != len(data):
            return False
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.digest() == hashlib.sha256(data).digest()

    def _delete(
        self, keys: Sequence[str], *, honour_locks: bool
    ) -> builtins.list[DeleteFailure]:  # "list" is a method name in this class body
        failures: list[DeleteFailure] = []
        touched: set[Path] = set()
        with self._io("delete", ", ".join(keys[:3])), self._locked():
            now = self._now()
            for key in keys:
                target = self._object_path(key)
                if honour_locks and target.is_file():
                    reason = (self._read_sidecar(key) or _Sidecar()).locked_at(now)
                    if reason is not None:
                        failures.append(DeleteFailure(key, reason))
                        continue
                # Object first: a crash in between leaves an orphan sidecar, never a bare object
                # that lost its lock (F2).
                for path in (target, self._sidecar_path(key)):
                    try:
                        path.unlink()
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    except IsADirectoryError:
                        break  # "key" names a directory of other keys: there is no object
                    touched.add(path.parent)
            for directory in touched:
                _fsync_dir(directory)
        if failures:
            log.info("store=fs delete refused keys=%d of %d", len(failures), len(keys))
        return failures


def _same_files(first: Path, second: Path) -> bool:
    """Byte-for-byte equality of two files, read a chunk at a time."""
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as one, second.open("rb") as other:
        while True:
            chunk = one.read(_WRITE_CHUNK)
            if chunk != other.read(_WRITE_CHUNK):
                return False
            if not chunk:
                return True


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None:
        return second
    if second is None:
        return first
    return max(first, second)


def _walk_error(exc: OSError) -> None:
    # os.walk skips unreadable directories by default; a silently short listing could make a
    # check or a purge believe objects are gone. Only a missing prefix directory is "no keys".
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return
    raise exc
