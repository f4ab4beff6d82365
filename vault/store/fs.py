"""Filesystem object store: the embedded default backend.

Layout under ``root``::

    objects/<key>       the object's bytes; its lock metadata in the extended attribute
                        ``user.cctv-vault.lock`` of the same file:
                        {"legal_hold": bool, "metadata": {...}, "retain_until": ISO | null}
    .lock               flock()ed around every mutation, so a retention check and the unlink it
                        allows are one step for every process sharing the root

One file per object: a delete is one ``getxattr`` (the lock check) and one ``unlink``. The store
needs a filesystem with user extended attributes (ext4, XFS, btrfs, tmpfs, ...); it probes for
them when it opens and refuses to start without them (:class:`ConfigError`) rather than run with
no lock emulation. Copies of a store must keep extended attributes (``cp -a``, ``rsync -X``,
``tar --xattrs``): an object found without its attribute is an error, never "unlocked".

Invariants:

- F1. An object whose attribute holds a legal hold, or a ``retain_until`` after "now" (the
  injected clock), is never removed, and never replaced by different bytes, through the public
  methods.
- F2. An object never exists without its lock metadata: the attribute is set on the temp file,
  and fsynced with it, before the rename gives the object its name. An object found without the
  attribute (copied without xattrs) or with an unreadable one makes every method that needs its
  lock raise :class:`Unavailable`; nothing treats it as unlocked.
- F3. Every file appears atomically: temp file in the same directory, write, set the attribute,
  fsync, ``os.replace``, fsync of the directory. New directories are fsynced into their parents.
  Lock changes (retention, legal hold) replace the attribute (atomic) and fsync the file.
- F4. ``list`` yields keys only: temp files start with ``.``, which no key segment may (see
  :func:`validate_key`).

Put, in order: (1) write the bytes and the attribute to a temp file next to the target, fsync
(outside the lock: large writes do not serialise writers); (2) take the lock; (3) read the
current object's attribute: if it is locked and the new bytes differ, refuse (Conflict) and drop
the temp file; the same bytes again may only extend the lock (the merged attribute goes on the
temp file, fsynced); (4) rename the temp file over the object; (5) fsync the directory;
(6) release the lock.

Delete, under the lock, for up to 1000 keys: per key read the attribute, refuse if locked, else
unlink the object — on up to :data:`DELETE_WORKERS` threads, since unlinks wait on the disk and
overlap; then fsync each directory that lost an entry, once. Every key is attempted; an error on
one (e.g. an object without its attribute) is raised after the others went. Deleting a key that
does not exist succeeds, as on S3. Empty directories are left in place: pruning them would race
with a concurrent put creating its temp file there.

Crash recovery: leftover ``.*.tmp-*`` files are ignored by every read.

Stores written before the attribute existed kept the lock in a sidecar file
``meta/<key>.json``; opening such a store migrates it once, under the lock (see
:meth:`FilesystemStore._migrate_sidecars`).

The key, prefix and metadata rules are shared with the S3 backend so both accept exactly the
same inputs.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vault.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
    VaultError,
)
from vault.store.base import (
    MAX_DELETE_BATCH,
    ByteSource,
    DeleteFailure,
    ObjectInfo,
    SourceFailed,
    UnknownLock,
    read_source,
)
from vault.timerange import as_utc, parse_instant, utcnow

_WRITE_CHUNK = 1024 * 1024

__all__ = [
    "DELETE_WORKERS",
    "LOCK_ATTRIBUTE",
    "PROBE_PREFIX",
    "FilesystemStore",
    "retention_instant",
    "validate_key",
    "validate_metadata",
    "validate_prefix",
]

log = logging.getLogger(__name__)

PROBE_PREFIX = "_probe/"
LOCK_ATTRIBUTE = "user.cctv-vault.lock"  # the extended attribute holding an object's lock
# Threads unlinking for one delete_many: an unlink of a synced file waits on the journal, and
# several overlap (measured on ext4: ~2.8x with 8); fewer keys than _PARALLEL_FROM go serially.
DELETE_WORKERS = 8
_PARALLEL_FROM = 32
# ``present`` lists a directory instead of a lookup per key from this many keys in it on (a
# listing of a day's directory, ~1,440 names a camera, costs about as much as 30 lookups).
_LIST_FROM = 32
MAX_KEY_LENGTH = 1024  # S3's limit, applied to both backends so a key valid on one is on the other
MAX_SEGMENT_LENGTH = 200  # leaves room for the temp files' suffixes under NAME_MAX
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata (names plus values)

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_PARTIAL_SEGMENT = re.compile(r"[A-Za-z0-9._-]*")
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")
_TEMP_MARK = ".tmp-"
# The whole key in one match (the per-segment rule below, repeated): delete_many checks 1000
# keys a call, and one regex per key costs a fraction of one per segment.
_KEY = re.compile(
    rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_SEGMENT_LENGTH - 1}}}"
    rf"(?:/[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_SEGMENT_LENGTH - 1}}})*"
)


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative ``/``-separated path of ``[A-Za-z0-9._-]`` segments.

    Segments may not start with ``.``: that refuses ``.`` and ``..`` and keeps the filesystem
    backend's temp files (``.name.tmp-*``) out of the key space.
    """
    if isinstance(key, str) and len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key):
        return key  # the common case; the checks below only explain a refusal
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
class _Lock:
    """An object's lock metadata, as kept in its :data:`LOCK_ATTRIBUTE`."""

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

    def encode(self) -> bytes:
        document: dict[str, Any] = {
            "metadata": self.metadata,
            "retain_until": self.retain_until.isoformat() if self.retain_until else None,
            "legal_hold": self.legal_hold,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, *, where: str) -> _Lock:
        try:
            document = json.loads(raw)
            retain = document.get("retain_until")
            return cls(
                metadata={str(k): str(v) for k, v in document.get("metadata", {}).items()},
                retain_until=parse_instant(retain, field="retain_until") if retain else None,
                legal_hold=bool(document.get("legal_hold", False)),
            )
        except (ValueError, TypeError, AttributeError, InvalidInput) as exc:
            # Lock metadata we cannot read may be hiding a lock: never treat it as "unlocked".
            raise UnknownLock(
                f"filesystem store: unreadable lock metadata on {where}: {exc}"
            ) from exc


_LOCK_DECODER = json.JSONDecoder()


def _unlocked(raw: bytes, now: datetime) -> bool:
    """True if the lock attribute ``raw`` plainly allows deleting at ``now``.

    The fast path of ``delete_many`` (one call per key): the same decision as
    ``_Lock.decode(raw).locked_at(now) is None`` for a well-formed attribute, without building
    the lock. False means "not plainly unlocked": a lock, or anything unusual (not JSON, a
    naive or odd ``retain_until``, odd metadata), which the full decoder then decides or
    refuses as unreadable (F2), so nothing unusual is ever taken for "unlocked" here.
    """
    try:
        text = raw.decode()
        document, end = _LOCK_DECODER.raw_decode(text)  # json.loads without its wrappers
    except ValueError:
        return False
    if end != len(text) or type(document) is not dict:
        return False
    if document.get("legal_hold", False) is not False:
        return False
    if type(document.get("metadata", {})) is not dict:
        return False
    retain = document.get("retain_until")
    if retain is None:
        return True
    if type(retain) is not str or not retain:
        return False
    try:
        until = datetime.fromisoformat(retain)
    except ValueError:
        return False
    return until.tzinfo is not None and until.utcoffset() is not None and until <= now


def _temp_file(
    target: Path, lock: bytes, fill: Callable[[int], None], *, drop_cache: bool = False
) -> Path:
    """A new temp file beside ``target``, filled by ``fill(fd)``, with its lock attribute set
    before the name exists (F2), fsynced; removed again if any of it fails."""
    temp = target.with_name(f".{target.name}{_TEMP_MARK}{uuid.uuid4().hex}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fill(fd)
        os.setxattr(fd, LOCK_ATTRIBUTE, lock)
        os.fsync(fd)
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    os.close(fd)
    return temp


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_lock_metadata(where: str) -> UnknownLock:
    return UnknownLock(
        f"filesystem store: {where} has no lock metadata (extended attribute {LOCK_ATTRIBUTE});"
        " was the store copied without extended attributes (use cp -a, rsync -X, tar --xattrs)?"
        " Refusing to treat it as unlocked"
    )


class FilesystemStore:
    """Objects as files under ``root``; retention and legal hold enforced here (see module doc)."""

    name = "fs"

    def __init__(self, root: Path, clock: Callable[[], datetime] = utcnow) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._prefix = f"{self._objects}{os.sep}"  # string paths: pathlib costs per key
        self._lock_path = self.root / ".lock"
        self._clock = clock
        with self._io("create store at", str(self.root)):
            self._make_dirs(self._objects)
            self._probe_attributes()
            if (self.root / _LEGACY_META).is_dir():
                self._migrate_sidecars()

    # -- the port -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        validate_key(key)
        lock = _Lock(
            metadata=validate_metadata(metadata),
            retain_until=retention_instant(retain_until) if retain_until is not None else None,
        )
        target = self._objects / key
        with self._io("put", key):
            self._make_dirs(target.parent)
            if target.is_dir():
                raise Conflict(f"key {key} names a directory of other keys on this store")
            temp = self._write_temp(target, data, lock.encode())
            self._install(key, target, temp, lock, lambda: self._same_bytes(target, data))

    def _install(
        self, key: str, target: Path, temp: Path, lock: _Lock, same_bytes: Callable[[], bool]
    ) -> None:
        """Rename a fsynced temp file (with its lock attribute) over ``key``, unless a locked
        object is there: then only the same bytes again may land (a retried put), and the lock
        may only grow. The temp file is removed on any failure."""
        try:
            with self._locked():
                current = self._read_lock(str(target), key)
                if current is not None:
                    reason = current.locked_at(self._now())
                    if reason is not None:
                        if not same_bytes():
                            raise Conflict(f"object {key} is {reason}: it cannot be replaced")
                        merged = _Lock(
                            metadata=lock.metadata,
                            retain_until=_later(current.retain_until, lock.retain_until),
                            legal_hold=current.legal_hold,
                        )
                        _set_lock(temp, merged)
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

        The steps are put's; only the temp file is filled from ``source`` instead of a buffer
        (and its written pages are dropped from the page cache after the fsync), and a locked
        object is compared with the temp file instead of bytes in memory.
        """
        validate_key(key)
        if length < 0:
            raise InvalidInput(f"length must be >= 0 (got {length})")
        lock = _Lock(
            metadata=validate_metadata(metadata),
            retain_until=retention_instant(retain_until) if retain_until is not None else None,
        )
        target = self._objects / key
        try:
            with self._io("put", key):
                self._make_dirs(target.parent)
                if target.is_dir():
                    raise Conflict(f"key {key} names a directory of other keys on this store")
                temp = self._write_temp_from(target, source, length, key, lock.encode())
                self._install(key, target, temp, lock, lambda: _same_files(target, temp))
        except SourceFailed as failed:
            raise failed.error from None  # the source's own error, not the store's

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        validate_range(offset, length)
        if length == 0:
            return b""
        with self._io("get", key):
            try:
                with (self._objects / key).open("rb") as handle:
                    handle.seek(offset)
                    return handle.read() if length is None else handle.read(length)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise NotFound(f"object {key} not found") from exc

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        path = self._prefix + key
        with self._io("head", key):
            try:
                status = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat.S_ISREG(status.st_mode):
                return None  # a directory of other keys, not an object
            lock = self._read_lock(path, key)
            if lock is None:  # removed between the stat and the read
                return None
        return ObjectInfo(
            key=key,
            size=status.st_size,
            metadata=dict(lock.metadata),
            retain_until=lock.retain_until,
            legal_hold=lock.legal_hold,
        )

    def present(self, keys: Sequence[str]) -> set[str]:
        """The keys that name an object now (what ``head`` would find), for many keys at once.

        Keys are grouped by directory. A directory holding many of them is listed once (after
        a purge's delete, its listing no longer has their names: one ``getdents`` pass instead
        of a failed lookup per key); a name still listed, and a key from a directory with few
        of them, gets the ``stat`` that ``head`` makes (a regular file is an object, a
        directory of other keys is not).
        """
        for key in keys:
            validate_key(key)
        by_directory: dict[str, builtins.list[str]] = {}
        for key in keys:
            by_directory.setdefault(key.rpartition("/")[0], []).append(key)
        found: set[str] = set()
        prefix = self._prefix
        with self._io("head", ", ".join(keys[:3])):
            for directory, members in by_directory.items():
                if len(members) >= _LIST_FROM:
                    try:
                        listed = set(os.listdir(prefix + directory if directory else prefix))
                    except (FileNotFoundError, NotADirectoryError):
                        continue  # no directory: none of them exists
                    members = [k for k in members if k.rpartition("/")[2] in listed]
                for key in members:
                    try:
                        status = os.stat(prefix + key)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    if stat.S_ISREG(status.st_mode):
                        found.add(key)
        return found

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
            current = self._existing_lock(key)
            if current.retain_until is not None and until < current.retain_until:
                raise Conflict(
                    f"object {key} is retained until {current.retain_until.isoformat()}:"
                    f" retention can only be extended (asked {until.isoformat()})"
                )
            _set_lock(
                self._objects / key,
                _Lock(current.metadata, retain_until=until, legal_hold=current.legal_hold),
            )

    def set_legal_hold(self, key: str, on: bool) -> None:
        validate_key(key)
        with self._io("set legal hold on", key), self._locked():
            current = self._existing_lock(key)
            _set_lock(
                self._objects / key,
                _Lock(current.metadata, retain_until=current.retain_until, legal_hold=on),
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

    def _probe_attributes(self) -> None:
        """Refuse to open on a filesystem without user extended attributes (F2): without them
        this store could keep no lock at all."""
        probe = self.root / f".xattr-probe{_TEMP_MARK}{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.setxattr(fd, LOCK_ATTRIBUTE, b"probe")
            if os.getxattr(fd, LOCK_ATTRIBUTE) != b"probe":
                raise ConfigError(f"filesystem store at {self.root}: extended attribute read back"
                                  " differs from what was written")
        except OSError as exc:
            if exc.errno not in _NO_XATTR_SUPPORT:
                raise
            raise ConfigError(
                f"filesystem store at {self.root}: this filesystem does not support user"
                f" extended attributes ({exc.strerror}), where the store keeps each object's"
                " retention and legal hold; put the store on ext4, XFS, btrfs or tmpfs (ext4:"
                " mounted with user_xattr, the default)"
            ) from exc
        finally:
            os.close(fd)
            os.unlink(probe)

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

    def _write_temp(self, target: Path, data: bytes | bytearray, lock: bytes) -> Path:
        """A temp file holding ``data`` and its lock, fsynced."""

        def fill(fd: int) -> None:
            # Chunks of 1 MiB: one huge write() costs the kernel several times more here
            # (measured: 30 MB objects, see docs/ref/bench.md).
            view = memoryview(data)
            while view:
                written = os.write(fd, view[:_WRITE_CHUNK])
                view = view[written:]

        return _temp_file(target, lock, fill)

    def _write_temp_from(
        self, target: Path, source: ByteSource, length: int, key: str, lock: bytes
    ) -> Path:
        """A temp file holding exactly ``length`` bytes of ``source`` and its lock, fsynced.

        A streamed object is large and written once (a segment: ~30 MB a camera-minute) and
        is not read back by its writer: its now clean pages are dropped from the page cache so
        the next one reuses them. Letting the cache grow instead cost ingest ~2.5 CPU s per
        camera-hour on the benchmark VM (docs/ref/bench.md, P1); the price is that the first
        read of just-written footage comes from disk.
        """

        def fill(fd: int) -> None:
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

        return _temp_file(target, lock, fill, drop_cache=True)

    def _read_lock(self, path: str, key: str) -> _Lock | None:
        """The lock of the object at ``path``; None if there is no such file.

        A regular file without the attribute raises (F2); a directory is no object: None.
        """
        try:
            raw = os.getxattr(path, LOCK_ATTRIBUTE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
            if os.path.isdir(path) or not os.path.lexists(path):
                return None
            raise _no_lock_metadata(f"object {key}") from None
        return _Lock.decode(raw, where=f"object {key}")

    def _existing_lock(self, key: str) -> _Lock:
        path = self._prefix + key
        lock = self._read_lock(path, key) if os.path.isfile(path) else None
        if lock is None:
            raise NotFound(f"object {key} not found")
        return lock

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
        refusals: dict[str, str] = {}
        touched: set[str] = set()
        errors: dict[str, Exception] = {}

        def delete_some(part: Sequence[str], now: datetime) -> None:
            prefix = self._prefix
            getxattr, unlink = os.getxattr, os.unlink
            for key in part:
                path = prefix + key
                try:
                    if honour_locks:
                        try:
                            raw = getxattr(path, LOCK_ATTRIBUTE)
                        except (FileNotFoundError, NotADirectoryError):
                            continue  # already gone
                        except OSError as exc:
                            if exc.errno != errno.ENODATA:
                                raise
                            raw = None  # a directory, or no attribute (F2): decided below
                        if raw is None or not _unlocked(raw, now):
                            # The rare cases, decided (or refused) by the full decoder. An
                            # object whose lock is unknown is refused, like a locked one: the
                            # other keys (a purge's whole batch) are not held up by it.
                            try:
                                lock = self._read_lock(path, key)
                            except UnknownLock as exc:
                                refusals[key] = exc.message
                                continue
                            if lock is None:
                                continue  # gone meanwhile (or a directory of other keys)
                            reason = lock.locked_at(now)
                            if reason is not None:
                                refusals[key] = reason
                                continue
                    unlink(path)
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue  # gone already, or "key" names a directory of other keys
                except (VaultError, OSError) as exc:
                    errors[key] = exc  # the other keys are still attempted; raised below
                    continue
                touched.add(path.rpartition(os.sep)[0])

        with self._io("delete", ", ".join(keys[:3])), self._locked():
            now = self._now()
            if len(keys) < _PARALLEL_FROM:
                delete_some(keys, now)
            else:
                # One contiguous slice per thread (keys come sorted, so a thread stays in few
                # directories); a future per key would cost more than the unlink.
                size = -(-len(keys) // DELETE_WORKERS)
                parts = [keys[i : i + size] for i in range(0, len(keys), size)]
                with ThreadPoolExecutor(len(parts), thread_name_prefix="fs-delete") as pool:
                    for outcome in [pool.submit(delete_some, part, now) for part in parts]:
                        outcome.result()
            # Each directory that lost an entry is fsynced once, after all its unlinks.
            for directory in sorted(touched):
                _fsync_dir(directory)
            if errors:  # the first key's error, whichever thread met it
                raise next(errors[key] for key in keys if key in errors)
        failures = [DeleteFailure(key, refusals[key]) for key in keys if key in refusals]
        if failures:
            log.info("store=fs delete refused keys=%d of %d", len(failures), len(keys))
        return failures

    # -- stores from before the lock attribute --------------------------------------------------

    def _migrate_sidecars(self) -> None:
        """Move the lock of every object from its legacy sidecar ``meta/<key>.json`` into its
        attribute, once, under the lock; then remove ``meta/``.

        Crash-safe and idempotent: every attribute is written and fsynced before any sidecar
        goes, and an object that already has its attribute keeps it (written from the same
        sidecar by an interrupted migration). An object the old store kept without a sidecar was
        unlocked there, and gets an unlocked attribute. An unreadable sidecar stops the
        migration (Unavailable): its lock is not guessed.
        """
        meta = self.root / _LEGACY_META
        migrated = 0
        with self._locked():
            if not meta.is_dir():
                return  # another process migrated it while we waited for the lock
            written: builtins.list[str] = []
            for directory, dirnames, filenames in os.walk(self._objects, onerror=_walk_error):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for filename in filenames:
                    if filename.startswith("."):
                        continue
                    path = os.path.join(directory, filename)
                    key = os.path.relpath(path, self._objects)
                    try:
                        os.getxattr(path, LOCK_ATTRIBUTE)
                        continue  # migrated before a crash
                    except OSError as exc:
                        if exc.errno != errno.ENODATA:
                            raise
                    sidecar = meta / f"{key}.json"
                    try:
                        lock = _Lock.decode(sidecar.read_bytes(), where=f"sidecar {sidecar}")
                    except FileNotFoundError:
                        lock = _Lock()
                    os.setxattr(path, LOCK_ATTRIBUTE, lock.encode())
                    written.append(path)
            with ThreadPoolExecutor(DELETE_WORKERS, thread_name_prefix="fs-migrate") as pool:
                list(pool.map(_fsync_file, written))
            migrated = len(written)
            shutil.rmtree(meta)
            _fsync_dir(self.root)
        log.info("store=fs migrated lock sidecars to extended attributes objects=%d", migrated)


_LEGACY_META = "meta"
_NO_XATTR_SUPPORT = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})


def _set_lock(path: Path, lock: _Lock) -> None:
    """Replace the lock attribute of ``path`` (atomic) and make it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.setxattr(fd, LOCK_ATTRIBUTE, lock.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
