"""Ed25519 signing keys kept in local files (0600, created on first use).

Used for ledger checkpoints, deletion certificates and the API's own access tokens. Each key has
a short ``key_id`` derived from its public key, so a verifier can tell which key signed what and
needs only the public half.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vault.errors import ConfigError

__all__ = ["SigningKey", "load_public_key", "public_key_id", "verify_signature"]


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the PEM key at ``path``; create it (mode 0600, atomically) if it does not exist."""
        if path.exists():
            if path.stat().st_mode & 0o077:
                raise ConfigError(f"signing key {path} must not be readable by group or others")
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"signing key {path} is not an Ed25519 key")
            return cls(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # A temp file of this process's own: with one shared name, two processes starting
        # together (API workers on a fresh data dir) could each link the file the other had
        # just rewritten and go on signing with a key that is not the one on disk.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:  # the temp file goes whatever happens: a failed write leaves no stray key
            try:
                view = memoryview(pem)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # Two processes starting together: the first link wins, the other loads it.
            os.link(tmp, path)
        except FileExistsError:
            return cls.load_or_create(path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(key)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return public_key_id(self.public)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> str:
        """Return the signature of ``message``, base64url without padding."""
        return base64.urlsafe_b64encode(self.private.sign(message)).rstrip(b"=").decode()


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("not an Ed25519 public key")
    return key


def verify_signature(public: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        public.verify(raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True
