"""Envelope encryption (DESIGN §6).

Each object is sealed with a fresh random 256-bit data key (DEK) under AES-256-GCM. The
associated data binds the ciphertext to the segment id, camera, start and plaintext SHA-256, so
a ciphertext moved onto another row fails to open. The DEK is wrapped (RFC 3394 AES key wrap)
by a key-encryption key (KEK) from a :class:`KeyProvider`. Destroying the wrapped DEK is the
cryptographic erase of NIST SP 800-88.

Sealed blob layout: ``b"CVS1" || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from vault.errors import ConfigError, IntegrityError

__all__ = [
    "KeyProvider",
    "LocalKeyProvider",
    "Seal",
    "associated_data",
    "new_seal",
    "open_blob",
    "seal_blob",
]

MAGIC = b"CVS1"
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = len(MAGIC) + NONCE_BYTES


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a key-encryption key that never leaves the provider."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, dek: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...


class LocalKeyProvider:
    """A KEK kept in a local file, created with mode 0600 on first use."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._kek = self._load_or_create(path)
        self._key_id = "local-" + hashlib.sha256(b"cctv-vault-kek-id" + self._kek).hexdigest()[:16]

    @staticmethod
    def _load_or_create(path: Path) -> bytes:
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(f"key file {path} must not be readable by others (mode {mode:o})")
            kek = path.read_bytes()
            if len(kek) != 32:
                raise ConfigError(f"key file {path} must hold 32 bytes, found {len(kek)}")
            return kek
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        kek = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, kek)
            os.fsync(fd)
        finally:
            os.close(fd)
        return kek

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, dek: bytes) -> bytes:
        return aes_key_wrap(self._kek, dek)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        if key_id != self._key_id:
            raise IntegrityError(f"data key was wrapped by unknown key {key_id!r}")
        try:
            return aes_key_unwrap(self._kek, wrapped)
        except InvalidUnwrap as exc:
            raise IntegrityError("wrapped data key does not unwrap") from exc


@dataclass(frozen=True, slots=True)
class Seal:
    """What is needed to (re)produce one sealed object: kept so that commit is idempotent."""

    key_id: str
    wrapped_dek: bytes
    nonce: bytes


def associated_data(object_id: str, camera_id: str, start_iso: str, sha256_hex: str) -> bytes:
    return f"cctv-vault/v1|{object_id}|{camera_id}|{start_iso}|{sha256_hex}".encode()


def new_seal(keys: KeyProvider) -> Seal:
    dek = AESGCM.generate_key(bit_length=256)
    return Seal(key_id=keys.key_id, wrapped_dek=keys.wrap(dek), nonce=os.urandom(NONCE_BYTES))


def seal_blob(plaintext: bytes, seal: Seal, aad: bytes, keys: KeyProvider) -> bytearray:
    """Encrypt ``plaintext``; the same seal and plaintext always give the same blob."""
    dek = keys.unwrap(seal.key_id, seal.wrapped_dek)
    # One buffer for header and ciphertext: segments are tens of MB, and every extra copy
    # shows in the ingest CPU budget (P1).
    blob = bytearray(_HEADER + len(plaintext) + TAG_BYTES)
    blob[: len(MAGIC)] = MAGIC
    blob[len(MAGIC) : _HEADER] = seal.nonce
    AESGCM(dek).encrypt_into(seal.nonce, plaintext, aad, memoryview(blob)[_HEADER:])
    return blob


def open_blob(blob: bytes, key_id: str, wrapped_dek: bytes, aad: bytes, keys: KeyProvider) -> bytes:
    """Decrypt and authenticate; any changed byte raises :class:`IntegrityError`."""
    if len(blob) < _HEADER + 16 or blob[: len(MAGIC)] != MAGIC:
        raise IntegrityError("stored object is not a sealed cctv-vault blob")
    dek = keys.unwrap(key_id, wrapped_dek)
    nonce = blob[len(MAGIC) : _HEADER]
    try:
        return AESGCM(dek).decrypt(nonce, blob[_HEADER:], aad)
    except InvalidTag as exc:
        raise IntegrityError("stored object failed authentication (altered or misplaced)") from exc
