"""Envelope encryption (DESIGN §6).

Each object is sealed with a fresh random 256-bit data key (DEK) under AES-256-GCM. The
associated data binds the ciphertext to the segment id, camera, start and plaintext SHA-256, so
a ciphertext moved onto another row fails to open. The DEK is wrapped (RFC 3394 AES key wrap)
by a key-encryption key (KEK) from a :class:`KeyProvider`. Destroying the wrapped DEK is the
cryptographic erase of NIST SP 800-88.

Sealed blob layout: ``b"CVS1" || nonce (12 bytes) || ciphertext || tag (16 bytes)``.

Two ways to produce it, byte for byte the same: :func:`seal_blob` over a plaintext in memory
(thumbnails), and :class:`SealingReader`, which streams the blob of a plaintext file through
one reused buffer (segments: tens of MB each, where every whole-object copy shows in P1's CPU
budget). The associated data binds the plaintext hash, and AES-GCM must have all associated
data before the first plaintext byte, so a streamed seal is two passes over the file:
:func:`sha256_file` first, then the :class:`SealingReader`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from vault.errors import ConfigError, IntegrityError

__all__ = [
    "KeyProvider",
    "LocalKeyProvider",
    "STREAM_CHUNK",
    "Seal",
    "SealingReader",
    "associated_data",
    "new_seal",
    "open_blob",
    "seal_blob",
    "sealed_size",
    "sha256_file",
]

MAGIC = b"CVS1"
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = len(MAGIC) + NONCE_BYTES
# Plaintext read per step when streaming: large enough that per-call overhead vanishes, small
# enough to stay in cache and to be the only buffer a commit touches.
STREAM_CHUNK = 1024 * 1024
# update_into() may want this much room past the input in its output buffer (cryptography's
# rule for block ciphers; GCM writes exactly the input's length).
_UPDATE_SLACK = 15


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


def sealed_size(plaintext_bytes: int) -> int:
    """Length of the sealed blob of a plaintext of ``plaintext_bytes``."""
    return _HEADER + plaintext_bytes + TAG_BYTES


def sha256_file(path: Path, chunk: int = STREAM_CHUNK) -> tuple[str, int]:
    """SHA-256 (hex) and length of a file's bytes, read through one reused buffer."""
    digest = hashlib.sha256()
    size = 0
    view = memoryview(bytearray(chunk))
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class SealingReader:
    """The sealed blob of a plaintext stream, read like a file (``readinto``).

    Gives exactly the bytes :func:`seal_blob` returns for the same plaintext, seal and
    associated data, while holding one plaintext chunk in memory: ciphertext is written
    straight into the caller's buffer. ``plaintext_size`` is the length that was hashed; a
    plaintext that turns out shorter or longer raises :class:`IntegrityError` before the tag
    is produced, and so may ``before_tag`` (the caller's proof that the plaintext is still
    what it hashed), so a blob that does not match its hash is never completed.
    """

    def __init__(
        self,
        plaintext: _Readable,
        plaintext_size: int,
        seal: Seal,
        aad: bytes,
        keys: KeyProvider,
        *,
        chunk: int = STREAM_CHUNK,
        before_tag: Callable[[], None] | None = None,
    ) -> None:
        if plaintext_size < 0 or chunk < 1:
            raise ValueError("plaintext_size must be >= 0 and chunk >= 1")
        dek = keys.unwrap(seal.key_id, seal.wrapped_dek)
        self._encryptor = Cipher(algorithms.AES(dek), modes.GCM(seal.nonce)).encryptor()
        self._encryptor.authenticate_additional_data(aad)
        self._source = plaintext
        self.length = sealed_size(plaintext_size)
        self._plain_left = plaintext_size
        self._plain = memoryview(bytearray(min(chunk, max(plaintext_size, 1))))
        # Bytes produced but not yet handed out: the header first, later the tag, and the
        # ciphertext of a piece encrypted aside when the caller's buffer had too little room.
        self._pending = memoryview(MAGIC + seal.nonce)
        self._aside = bytearray(16 + _UPDATE_SLACK)
        self._before_tag = before_tag
        self._finished = False

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` as far as the blob goes; 0 at its end."""
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out):
            if self._pending:
                count = min(len(out) - filled, len(self._pending))
                out[filled : filled + count] = self._pending[:count]
                self._pending = self._pending[count:]
                filled += count
            elif self._plain_left:
                room = len(out) - filled - _UPDATE_SLACK
                if room > 0:
                    got = self._read_plain(min(room, len(self._plain), self._plain_left))
                    self._encryptor.update_into(
                        self._plain[:got], out[filled : filled + got + _UPDATE_SLACK]
                    )
                    filled += got
                else:  # the buffer's last few bytes: encrypt a small piece aside
                    got = self._read_plain(min(16, len(self._plain), self._plain_left))
                    made = self._encryptor.update_into(self._plain[:got], self._aside)
                    self._pending = memoryview(bytes(self._aside[:made]))
            elif not self._finished:
                if self._read_plain_once(1):
                    raise IntegrityError("plaintext is longer than when it was hashed")
                if self._before_tag is not None:
                    self._before_tag()
                self._encryptor.finalize()
                self._pending = memoryview(self._encryptor.tag)
                self._finished = True
            else:
                break
        return filled

    def _read_plain(self, want: int) -> int:
        got = 0
        while got < want:
            count = self._read_plain_once(want - got, offset=got)
            if not count:
                raise IntegrityError("plaintext is shorter than when it was hashed")
            got += count
        self._plain_left -= got
        return got

    def _read_plain_once(self, want: int, *, offset: int = 0) -> int:
        return self._source.readinto(self._plain[offset : offset + want]) or 0
