"""The object-store port. Backends: filesystem (embedded default) and S3 (via ``minio``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = ["MAX_DELETE_BATCH", "DeleteFailure", "ObjectInfo", "ObjectStore"]

MAX_DELETE_BATCH = 1000


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

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete_many(self, keys: Sequence[str]) -> list[DeleteFailure]:
        """Delete up to 1000 keys (all versions); return the keys that could not be deleted."""

    def list(self, prefix: str) -> Iterator[str]: ...

    def set_retention(self, key: str, retain_until: datetime) -> None: ...

    def set_legal_hold(self, key: str, on: bool) -> None: ...

    def probe_lock_enforcement(self) -> bool:
        """Write a locked probe object and try to delete it: True if the store refused."""
