"""The object-store port. Backends: filesystem (embedded default) and S3 (via ``minio``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from vault.errors import Unavailable

__all__ = [
    "MAX_DELETE_BATCH",
    "ByteSource",
    "DeleteFailure",
    "ObjectInfo",
    "ObjectStore",
    "SourceFailed",
    "UnknownLock",
    "read_source",
]

MAX_DELETE_BATCH = 1000


class UnknownLock(Unavailable):
    """An object whose lock cannot be read (e.g. a filesystem store copied without extended
    attributes): it may be hiding a lock, so it is never treated as unlocked. ``delete_many``
    refuses that object alone; other calls on it raise this, and ``check`` reports it."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    retain_until: datetime | None = None
    legal_hold: bool = False


@dataclass(frozen=True, slots=True)
class DeleteFailure:
    key: str
    reason: str


class ByteSource(Protocol):
    """What ``put_stream`` reads from: an open binary file, ``io.BytesIO``, a
    :class:`vault.crypto.SealingReader`."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class SourceFailed(Exception):  # noqa: N818 - internal signal, re-raised as its cause
    """The caller's stream failed while a store read it.

    Stores turn their own I/O errors into :class:`vault.errors.Unavailable`; an error of the
    *source* (the spool file, say) is not the store's, so it travels inside this wrapper past
    that translation and ``put_stream`` re-raises the original.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def read_source(source: ByteSource, buffer: memoryview) -> int:
    """Read once from ``source`` into ``buffer``; its exceptions come out as SourceFailed."""
    try:
        return source.readinto(buffer) or 0
    except Exception as exc:
        raise SourceFailed(exc) from exc


class ObjectStore(Protocol):
    """Keys are ``/``-separated relative paths such as ``segments/site/cam/2026/11/29/<id>``.

    Every method raises :class:`vault.errors.Unavailable` when the store cannot be reached and
    :class:`vault.errors.NotFound` for a missing key (``head`` returns ``None`` instead).
    """

    name: str

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        """Store ``data`` durably; with ``retain_until`` it cannot be deleted before then."""

    def put_stream(
        self,
        key: str,
        source: ByteSource,
        length: int,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        """``put`` of exactly ``length`` bytes read from ``source``, never held whole in memory.

        The same durability, metadata, retention and idempotence as ``put``. A source that
        gives fewer or more than ``length`` bytes is refused (:class:`InvalidInput`) and
        nothing is stored; an exception raised by the source propagates unchanged.
        """

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def present(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that name an object now: what a ``head`` of each would find, which
        a backend may answer more cheaply for many keys at once (one listing a directory)."""

    def delete_many(self, keys: Sequence[str]) -> list[DeleteFailure]:
        """Delete up to 1000 keys (all versions); return the keys that could not be deleted."""

    def list(self, prefix: str) -> Iterator[str]: ...

    def set_retention(self, key: str, retain_until: datetime) -> None: ...

    def set_legal_hold(self, key: str, on: bool) -> None: ...

    def probe_lock_enforcement(self) -> bool:
        """Write a locked probe object and try to delete it: True if the store refused."""
