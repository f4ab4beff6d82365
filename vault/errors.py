"""Domain errors carry a kind; only the API layer maps kinds to HTTP status codes."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "Conflict",
    "ErrorKind",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "Unavailable",
    "VaultError",
]


class ErrorKind(StrEnum):
    INVALID_INPUT = "invalid-input"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    INTEGRITY = "integrity"
    UNAVAILABLE = "unavailable"
    CONFIG = "config"
    FORBIDDEN = "forbidden"
    UNAUTHENTICATED = "unauthenticated"


class VaultError(Exception):
    kind: ErrorKind = ErrorKind.INVALID_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(VaultError):
    kind = ErrorKind.INVALID_INPUT


class NotFound(VaultError):
    kind = ErrorKind.NOT_FOUND


class Conflict(VaultError):
    kind = ErrorKind.CONFLICT


class IntegrityError(VaultError):
    """Stored bytes do not match what the catalog says they are (tampering, bit rot)."""

    kind = ErrorKind.INTEGRITY


class Unavailable(VaultError):
    """A peer (object store, database, camera) cannot be reached right now; retry later."""

    kind = ErrorKind.UNAVAILABLE


class ConfigError(VaultError):
    kind = ErrorKind.CONFIG
