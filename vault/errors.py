"""Domain errors carry a kind; only the API layer maps kinds to HTTP status codes."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "Conflict",
    "ErrorKind",
    "Forbidden",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "RateLimited",
    "Unauthenticated",
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
    RATE_LIMITED = "rate-limited"


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


class Forbidden(VaultError):
    """A policy refusal. ``rule`` names the rule that refused (stable, countable by auditors)."""

    kind = ErrorKind.FORBIDDEN

    def __init__(self, message: str, rule: str = "forbidden") -> None:
        super().__init__(message)
        self.rule = rule


class Unauthenticated(VaultError):
    """No valid identity: missing, malformed, expired, forged or disabled credentials."""

    kind = ErrorKind.UNAUTHENTICATED


class RateLimited(VaultError):
    """Too many attempts; ``retry_after`` seconds until the next one may succeed."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
