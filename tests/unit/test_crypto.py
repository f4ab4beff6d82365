"""Sealing: the streamed form and the whole-buffer form are one format, byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from vault.crypto import (
    LocalKeyProvider,
    Seal,
    SealingReader,
    new_seal,
    open_blob,
    seal_blob,
    sealed_size,
    sha256_file,
)
from vault.errors import IntegrityError

AAD = b"cctv-vault/v1|seg-1|cam-a|2026-11-29T01:00:00+00:00|" + b"ab" * 32


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "keys" / "kek.bin")


def _stream(reader: SealingReader, buffer_size: int) -> bytes:
    out = bytearray()
    buffer = bytearray(buffer_size)
    while count := reader.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 65536 + 3])
@pytest.mark.parametrize(("buffer_size", "chunk"), [(1, 1), (7, 16), (17, 5), (31, 4096),
                                                    (4096, 1000), (1 << 20, 1 << 20)])
def test_streamed_seal_is_byte_identical_to_whole_buffer_seal(
    keys: LocalKeyProvider, size: int, buffer_size: int, chunk: int
) -> None:
    # Buffers smaller than the header, than a block, than the tag, and chunks that do not
    # divide the plaintext: every boundary between header, ciphertext and tag is crossed.
    plaintext = os.urandom(size)
    seal = new_seal(keys)
    reader = SealingReader(io.BytesIO(plaintext), size, seal, AAD, keys, chunk=chunk)

    streamed = _stream(reader, buffer_size)

    assert streamed == bytes(seal_blob(plaintext, seal, AAD, keys))
    assert len(streamed) == reader.length == sealed_size(size)
    assert open_blob(streamed, seal.key_id, seal.wrapped_dek, AAD, keys) == plaintext


def test_streamed_blob_authenticates_only_with_its_associated_data(
    keys: LocalKeyProvider,
) -> None:
    plaintext = os.urandom(100_000)
    seal = new_seal(keys)
    streamed = _stream(SealingReader(io.BytesIO(plaintext), len(plaintext), seal, AAD, keys), 4096)

    with pytest.raises(IntegrityError):
        open_blob(streamed, seal.key_id, seal.wrapped_dek, AAD.replace(b"seg-1", b"seg-2"), keys)
    tampered = bytearray(streamed)
    tampered[50_000] ^= 1
    with pytest.raises(IntegrityError):
        open_blob(bytes(tampered), seal.key_id, seal.wrapped_dek, AAD, keys)


def test_a_fresh_seal_gives_other_bytes(keys: LocalKeyProvider) -> None:
    plaintext = b"footage" * 1000
    one, other = new_seal(keys), new_seal(keys)
    assert _stream(SealingReader(io.BytesIO(plaintext), len(plaintext), one, AAD, keys), 512) != (
        _stream(SealingReader(io.BytesIO(plaintext), len(plaintext), other, AAD, keys), 512)
    )


@pytest.mark.parametrize(
    ("actual", "expected", "message"),
    [(999, 1000, "shorter"), (1001, 1000, "longer")],
)
def test_plaintext_that_changed_since_hashing_never_completes_a_blob(
    keys: LocalKeyProvider, actual: int, expected: int, message: str
) -> None:
    reader = SealingReader(io.BytesIO(os.urandom(actual)), expected, new_seal(keys), AAD, keys)
    out = bytearray()
    buffer = bytearray(256)
    with pytest.raises(IntegrityError, match=message):
        while count := reader.readinto(buffer):
            out += buffer[:count]
    assert len(out) < sealed_size(expected)  # the tag was never handed out


def test_sealing_reader_holds_one_chunk_whatever_the_plaintext(keys: LocalKeyProvider) -> None:
    size = 8 << 20
    reader = SealingReader(io.BytesIO(bytes(size)), size, new_seal(keys), AAD, keys, chunk=1 << 16)
    assert len(reader._plain) == 1 << 16


def test_sealing_reader_refuses_a_wrapped_key_of_another_kek(
    keys: LocalKeyProvider, tmp_path: Path
) -> None:
    other = LocalKeyProvider(tmp_path / "other" / "kek.bin")
    seal = new_seal(other)
    with pytest.raises(IntegrityError):
        SealingReader(io.BytesIO(b"x"), 1, seal, AAD, keys)
    forged = Seal(key_id=keys.key_id, wrapped_dek=seal.wrapped_dek, nonce=seal.nonce)
    with pytest.raises(IntegrityError):
        SealingReader(io.BytesIO(b"x"), 1, forged, AAD, keys)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, (1 << 20) + 1, 3 << 20])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "segment.mp4"
    path.write_bytes(data)

    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), size)
