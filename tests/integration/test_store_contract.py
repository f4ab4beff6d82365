"""The ObjectStore contract, run against the filesystem backend and S3 (moto's server) alike.

Tests taking ``store`` run once per backend; the ``fs``/``s3`` sections at the end cover what only
one backend can show (an injected clock, temp files on disk, the S3 server going away).
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import logging
import mmap
import os
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import urllib3
from minio import Minio
from minio.commonconfig import Filter
from minio.error import S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule
from pydantic import SecretStr

from tests.support.s3 import ACCESS_KEY, SECRET_KEY, MotoServer
from vault.errors import ConfigError, Conflict, InvalidInput, NotFound, Unavailable
from vault.settings import Settings
from vault.store.base import MAX_DELETE_BATCH, DeleteFailure, ObjectInfo, ObjectStore
from vault.store.factory import ensure_lock_enforcement, open_store
from vault.store.fs import LOCK_ATTRIBUTE, FilesystemStore
from vault.store.s3 import S3Store
from vault.timerange import FixedClock, utcnow

SEGMENT = "segments/site1/cam1/2026/11/29/seg-0001"
FOOTAGE = bytes(range(256)) * 40  # 10 KiB with distinct bytes at every offset
METADATA = {"camera": "cam1", "sha256": "ab" * 32, "segment-id": "seg-0001"}

BAD_KEYS = [
    "",
    "/segments/a",
    "segments//a",
    "segments/a/",
    "segments/../a",
    "..",
    ".",
    "segments/./a",
    "segments/.hidden",
    "segments\\a",
    "segments/sp ace",
    "segments/caf\u00e9",
    "segments/a\x00b",
]


_TOKYO = timezone(timedelta(hours=9))


def _later(hours: float = 1) -> datetime:
    # Whole milliseconds: S3 keeps retain-until dates to the millisecond.
    return (utcnow() + timedelta(hours=hours)).replace(microsecond=0)


def _versions_left(store: ObjectStore, key: str) -> int:
    return len(store.version_ids(key)) if isinstance(store, S3Store) else 0


# -- put / get / head -------------------------------------------------------------------------


def test_put_get_roundtrip_with_metadata(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)

    assert store.get(SEGMENT) == FOOTAGE
    info = store.head(SEGMENT)
    assert info == ObjectInfo(key=SEGMENT, size=len(FOOTAGE), metadata=METADATA)


def test_empty_object_and_empty_metadata(store: ObjectStore) -> None:
    store.put("exports/empty", b"", {})

    assert store.get("exports/empty") == b""
    assert store.head("exports/empty") == ObjectInfo(key="exports/empty", size=0)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, FOOTAGE),
        (100, 50, FOOTAGE[100:150]),
        (1000, None, FOOTAGE[1000:]),
        (0, 1, FOOTAGE[:1]),
        (len(FOOTAGE) - 10, 100, FOOTAGE[-10:]),  # length past the end: what there is
        (len(FOOTAGE), None, b""),  # offset at the end: nothing, not an error
        (len(FOOTAGE) + 5, 3, b""),
        (10, 0, b""),
    ],
)
def test_ranged_get(store: ObjectStore, offset: int, length: int | None, expected: bytes) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)

    assert store.get(SEGMENT, offset=offset, length=length) == expected


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, -1)])
def test_negative_range_is_invalid(store: ObjectStore, offset: int, length: int | None) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)

    with pytest.raises(InvalidInput):
        store.get(SEGMENT, offset=offset, length=length)


def test_head_of_missing_key_is_none(store: ObjectStore) -> None:
    assert store.head("segments/none/here") is None


def test_get_of_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("segments/none/here")
    with pytest.raises(NotFound):
        store.get("segments/none/here", offset=5, length=5)


def test_put_overwrites_an_unlocked_object(store: ObjectStore) -> None:
    store.put(SEGMENT, b"first", {"camera": "cam1"})
    store.put(SEGMENT, b"second take", {"camera": "cam2"})

    assert store.get(SEGMENT) == b"second take"
    info = store.head(SEGMENT)
    assert info is not None
    assert (info.size, dict(info.metadata)) == (11, {"camera": "cam2"})


def test_identical_put_is_idempotent_even_when_locked(store: ObjectStore) -> None:
    # A retried put (the first answer was lost) must succeed, not trip over its own lock.
    until = _later()
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)

    assert store.get(SEGMENT) == FOOTAGE
    info = store.head(SEGMENT)
    assert info is not None
    assert info.retain_until == until


# -- put_stream -------------------------------------------------------------------------------


class ChunkedSource:
    """A ByteSource that gives at most ``step`` bytes a call (as a pipe or a sealer may) and
    counts how much was read; ``fail_after`` makes it raise once that much has been read."""

    def __init__(self, data: bytes, step: int = 1000, fail_after: int | None = None) -> None:
        self.data = data
        self.step = step
        self.fail_after = fail_after
        self.position = 0

    def readinto(self, buffer: memoryview) -> int:
        if self.fail_after is not None and self.position >= self.fail_after:
            raise OSError(5, "Input/output error (simulated spool disk)")
        count = min(len(buffer), self.step, len(self.data) - self.position)
        buffer[:count] = self.data[self.position : self.position + count]
        self.position += count
        return count


def test_put_stream_roundtrip_with_metadata_and_retention(store: ObjectStore) -> None:
    until = _later()
    source = ChunkedSource(FOOTAGE, step=777)
    store.put_stream(SEGMENT, source, len(FOOTAGE), METADATA, retain_until=until)

    assert source.position == len(FOOTAGE)
    assert store.get(SEGMENT) == FOOTAGE
    assert store.head(SEGMENT) == ObjectInfo(
        key=SEGMENT, size=len(FOOTAGE), metadata=METADATA, retain_until=until
    )
    assert [f.key for f in store.delete_many([SEGMENT])] == [SEGMENT]  # the lock holds


def test_put_stream_of_nothing(store: ObjectStore) -> None:
    store.put_stream("exports/empty", io.BytesIO(b""), 0, {})

    assert store.get("exports/empty") == b""
    assert store.head("exports/empty") == ObjectInfo(key="exports/empty", size=0)


def test_put_stream_retried_onto_its_locked_object_is_a_no_op(store: ObjectStore) -> None:
    # The commit protocol's retry: the same sealed bytes again, after put or put_stream.
    until = _later()
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)
    store.put_stream(SEGMENT, io.BytesIO(FOOTAGE), len(FOOTAGE), METADATA, retain_until=until)
    store.put_stream(SEGMENT, ChunkedSource(FOOTAGE), len(FOOTAGE), METADATA, retain_until=until)

    assert store.get(SEGMENT) == FOOTAGE
    info = store.head(SEGMENT)
    assert info is not None
    assert (info.size, info.retain_until) == (len(FOOTAGE), until)


@pytest.mark.parametrize(
    ("given", "length"),
    [(FOOTAGE[:-1], len(FOOTAGE)), (FOOTAGE + b"!", len(FOOTAGE)), (FOOTAGE, 0)],
    ids=["short", "long", "nonempty-for-zero"],
)
def test_put_stream_refuses_a_source_of_the_wrong_length(
    store: ObjectStore, given: bytes, length: int
) -> None:
    with pytest.raises(InvalidInput, match="stream for"):
        store.put_stream(SEGMENT, io.BytesIO(given), length, METADATA)

    assert store.head(SEGMENT) is None
    assert _versions_left(store, SEGMENT) == 0


def test_put_stream_passes_the_source_error_through(store: ObjectStore) -> None:
    # A failing source (the spool's disk) is not the store being unavailable: the caller must
    # see its own error, and nothing is stored.
    source = ChunkedSource(FOOTAGE, step=1024, fail_after=4096)
    with pytest.raises(OSError, match="simulated spool disk") as raised:
        store.put_stream(SEGMENT, source, len(FOOTAGE), METADATA)

    assert not isinstance(raised.value, Unavailable)
    assert store.head(SEGMENT) is None
    assert _versions_left(store, SEGMENT) == 0


def test_put_stream_refuses_a_negative_length(store: ObjectStore) -> None:
    with pytest.raises(InvalidInput):
        store.put_stream(SEGMENT, io.BytesIO(b""), -1, METADATA)


# -- list -------------------------------------------------------------------------------------


def test_list_by_prefix(store: ObjectStore) -> None:
    keys = [
        "segments/site1/cam1/2026/11/29/b",
        "segments/site1/cam1/2026/11/29/a",
        "segments/site1/cam1/2026/11/30/a",
        "segments/site1/cam1-x/2026/11/29/a",
        "segments/site1/cam10/2026/11/29/a",
        "segments/site2/cam1/2026/11/29/a",
        "thumbs/site1/cam1/a",
    ]
    for key in keys:
        store.put(key, key.encode(), {})

    assert list(store.list("segments/site1/cam1/")) == [
        "segments/site1/cam1/2026/11/29/a",
        "segments/site1/cam1/2026/11/29/b",
        "segments/site1/cam1/2026/11/30/a",
    ]
    # A prefix is a string prefix, not a directory: "cam1" also matches "cam1-x" and "cam10",
    # and the order is byte order over whole keys ("-" sorts before "/", "/" before "0").
    assert list(store.list("segments/site1/cam1")) == [
        "segments/site1/cam1-x/2026/11/29/a",
        "segments/site1/cam1/2026/11/29/a",
        "segments/site1/cam1/2026/11/29/b",
        "segments/site1/cam1/2026/11/30/a",
        "segments/site1/cam10/2026/11/29/a",
    ]
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("exports/")) == []
    assert list(store.list("segments/site1/cam1/2026/11/29/a")) == [
        "segments/site1/cam1/2026/11/29/a"
    ]


@pytest.mark.parametrize("prefix", ["/segments", "../", "segments/../x", "a//b", "a\\b", "é"])
def test_list_refuses_bad_prefixes(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        store.list(prefix)  # refused at the call, before any iteration


# -- delete -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [5, 40])  # S3 lists a directory's versions once from 32
def test_delete_many_removes_every_version(store: ObjectStore, count: int) -> None:
    keys = [f"segments/site1/cam1/2026/11/29/seg-{n}" for n in range(count)]
    for key in keys:
        store.put(key, b"v1", {})
    store.put(keys[0], b"v2", {})  # a second version on S3
    store.put(keys[-1], b"v2", {})
    store.put("segments/site1/cam1/2026/11/29/seg-0-kept", b"neighbour", {})

    assert store.delete_many(keys) == []

    for key in keys:
        assert store.head(key) is None
        assert _versions_left(store, key) == 0
    assert list(store.list("segments/")) == ["segments/site1/cam1/2026/11/29/seg-0-kept"]


@pytest.mark.parametrize("count", [3, 40])  # the filesystem store lists a directory from 32
def test_present_finds_exactly_the_objects_head_finds(store: ObjectStore, count: int) -> None:
    keys = [f"segments/site1/cam1/2026/11/29/seg-{n:03d}" for n in range(count)]
    for key in keys:
        store.put(key, b"v", {})
    store.put("segments/site1/cam1/2026/11/29/seg-dir/below", b"v", {})  # no object seg-dir
    asked = [*keys, "segments/site1/cam1/2026/11/29/never", "segments/site1/cam1/2026/11/29",
             "segments/site1/cam1/2026/11/29/seg-dir",
             "segments/site1/cam9/2026/11/29/no-such-directory"]

    assert store.present(asked) == {k for k in asked if store.head(k) is not None}
    assert store.present(asked) == set(keys)
    assert store.delete_many(keys[1:]) == []
    assert store.present(asked) == {keys[0]}
    assert store.present([]) == set()


def test_delete_many_of_missing_keys_succeeds(store: ObjectStore) -> None:
    assert store.delete_many(["segments/gone", "segments/never"]) == []
    assert store.delete_many([]) == []


def test_delete_many_refuses_more_than_a_batch(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)

    with pytest.raises(InvalidInput):
        store.delete_many([SEGMENT] + [f"x/{n}" for n in range(MAX_DELETE_BATCH)])
    assert store.head(SEGMENT) is not None  # refused as a whole, nothing deleted


def test_many_keys_of_one_directory_locks_still_win(store: ObjectStore) -> None:
    keys = [f"segments/site1/cam1/2026/11/29/seg-{n:02d}" for n in range(40)]
    for key in keys:
        store.put(key, b"v1", {}, retain_until=_later() if key == keys[7] else None)
    store.put(keys[3], b"v2", {})
    store.set_legal_hold(keys[20], True)
    store.put("segments/site1/cam1/2026/11/29/seg-99", b"neighbour", {})

    failures = store.delete_many(keys)

    assert [f.key for f in failures] == [keys[7], keys[20]]
    assert list(store.list("segments/")) == [keys[7], keys[20],
                                             "segments/site1/cam1/2026/11/29/seg-99"]
    assert store.get(keys[7]) == store.get(keys[20]) == b"v1"


def test_retained_object_cannot_be_deleted(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=_later())
    store.put("segments/free", b"free", {})

    failures = store.delete_many([SEGMENT, "segments/free"])

    assert [f.key for f in failures] == [SEGMENT]
    assert all(isinstance(f, DeleteFailure) and f.reason for f in failures)
    assert store.get(SEGMENT) == FOOTAGE
    assert store.head("segments/free") is None


def test_legal_hold_blocks_deletion_until_released(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)
    store.set_legal_hold(SEGMENT, True)

    assert [f.key for f in store.delete_many([SEGMENT])] == [SEGMENT]
    assert store.get(SEGMENT) == FOOTAGE

    store.set_legal_hold(SEGMENT, False)
    assert store.delete_many([SEGMENT]) == []
    assert store.head(SEGMENT) is None
    assert _versions_left(store, SEGMENT) == 0


# -- retention and holds as head reports them -------------------------------------------------


def test_head_reports_retention_and_legal_hold(store: ObjectStore) -> None:
    until = _later()
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)
    store.set_legal_hold(SEGMENT, True)

    info = store.head(SEGMENT)

    assert info is not None
    assert info.retain_until == until
    assert info.retain_until.tzinfo is not None
    assert info.legal_hold is True
    assert dict(info.metadata) == METADATA


def test_retain_until_rounds_up_to_the_millisecond(store: ObjectStore) -> None:
    asked = _later().replace(microsecond=123_456)
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=asked)

    info = store.head(SEGMENT)

    assert info is not None
    assert info.retain_until == asked.replace(microsecond=124_000)


def test_retention_can_be_extended_but_not_shortened(store: ObjectStore) -> None:
    until = _later(hours=2)
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)

    store.set_retention(SEGMENT, until + timedelta(days=1))
    with pytest.raises(Conflict):
        store.set_retention(SEGMENT, until)

    info = store.head(SEGMENT)
    assert info is not None
    assert info.retain_until == until + timedelta(days=1)


def test_retention_on_an_unretained_object(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, METADATA)
    store.set_retention(SEGMENT, _later())

    assert [f.key for f in store.delete_many([SEGMENT])] == [SEGMENT]


def test_lock_calls_on_missing_key_are_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.set_retention("segments/none", _later())
    with pytest.raises(NotFound):
        store.set_legal_hold("segments/none", True)


def test_naive_datetimes_are_refused(store: ObjectStore) -> None:
    naive = datetime(2030, 1, 1)
    with pytest.raises(InvalidInput):
        store.put(SEGMENT, FOOTAGE, METADATA, retain_until=naive)
    store.put(SEGMENT, FOOTAGE, METADATA)
    with pytest.raises(InvalidInput):
        store.set_retention(SEGMENT, naive)


def test_non_utc_retention_is_reported_in_utc(store: ObjectStore) -> None:
    until = _later()
    store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until.astimezone(_TOKYO))

    info = store.head(SEGMENT)

    assert info is not None and info.retain_until == until
    assert info.retain_until.utcoffset() == timedelta(0)


# -- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_everywhere(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        store.put(key, b"x", {})
    with pytest.raises(InvalidInput):
        store.get(key)
    with pytest.raises(InvalidInput):
        store.head(key)
    with pytest.raises(InvalidInput):
        store.delete_many(["segments/fine", key])
    with pytest.raises(InvalidInput):
        store.set_legal_hold(key, True)
    with pytest.raises(InvalidInput):
        store.set_retention(key, _later())


@pytest.mark.parametrize(
    "metadata",
    [
        {"Camera": "cam1"},  # S3 lower-cases names: refuse rather than change them
        {"camera id": "x"},
        {"x_y": "1"},
        {"camera": "caf\u00e9"},
        {"camera": " padded"},
        {"camera": "line\nbreak"},
        {"big": "x" * 3000},
    ],
)
def test_bad_metadata_is_refused(store: ObjectStore, metadata: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        store.put(SEGMENT, FOOTAGE, metadata)
    assert store.head(SEGMENT) is None


def test_metadata_named_like_a_header_stays_metadata(store: ObjectStore) -> None:
    store.put(SEGMENT, FOOTAGE, {"content-type": "video/mp4", "cache-control": "no"})

    info = store.head(SEGMENT)

    assert info is not None
    assert dict(info.metadata) == {"content-type": "video/mp4", "cache-control": "no"}


# -- the startup probe --------------------------------------------------------------------------


def test_probe_finds_locks_enforced_and_cleans_up(store: ObjectStore) -> None:
    assert store.probe_lock_enforcement() is True

    assert list(store.list("")) == []
    assert list(store.list("_probe/")) == []


def test_ensure_lock_enforcement_passes_on_real_stores(
    store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ensure_lock_enforcement(store, allow_unenforced=False, log=logging.getLogger("test.startup"))
    assert "lock enforcement verified" in caplog.text


class _UnenforcedStore(FilesystemStore):
    """A store that lets locked objects go: what the probe exists to catch."""

    name = "lax"

    def delete_many(self, keys: Sequence[str]) -> list[DeleteFailure]:
        return self._delete(keys, honour_locks=False)


def test_unenforced_store_refuses_to_start(tmp_path: Path) -> None:
    lax = _UnenforcedStore(tmp_path / "store")
    assert lax.probe_lock_enforcement() is False

    with pytest.raises(ConfigError, match="CCTV_S3_ALLOW_UNENFORCED_LOCK"):
        ensure_lock_enforcement(lax, allow_unenforced=False, log=logging.getLogger("t"))


def test_unenforced_store_starts_loudly_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lax = _UnenforcedStore(tmp_path / "store")

    ensure_lock_enforcement(lax, allow_unenforced=True, log=logging.getLogger("t"))

    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "does NOT enforce object locks" in caplog.records[0].getMessage()


# -- factory ------------------------------------------------------------------------------------


def test_open_store_fs(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path, store="fs"))

    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "store"


@pytest.mark.s3
def test_open_store_s3_from_settings(moto_server: MotoServer) -> None:
    moto_server.start()
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    settings = Settings(
        store="s3",
        s3_endpoint=moto_server.endpoint,
        s3_secure=False,
        s3_bucket=bucket,
        s3_access_key=SecretStr(ACCESS_KEY),
        s3_secret_key=SecretStr(SECRET_KEY),
    )

    store = open_store(settings)

    assert isinstance(store, S3Store)
    assert store.bucket == bucket
    store.put(SEGMENT, FOOTAGE, METADATA)
    assert store.get(SEGMENT, offset=1, length=2) == FOOTAGE[1:3]
    assert store.probe_lock_enforcement() is True


# -- S3 only --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_unreachable_s3_is_unavailable_quickly(s3_store: S3Store, moto_server: MotoServer) -> None:
    s3_store.put(SEGMENT, FOOTAGE, METADATA)
    moto_server.stop()
    try:
        calls: list[Callable[[], object]] = [
            lambda: s3_store.head(SEGMENT),
            lambda: s3_store.get(SEGMENT),
            lambda: s3_store.put("segments/new", b"x", {}),
            lambda: s3_store.delete_many([SEGMENT]),
            lambda: list(s3_store.list("segments/")),
            lambda: s3_store.set_legal_hold(SEGMENT, True),
            lambda: s3_store.probe_lock_enforcement(),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                call()
            assert time.monotonic() - started < 5, "an unreachable store must fail fast"
            assert moto_server.endpoint in raised.value.message
            assert ACCESS_KEY not in raised.value.message
            assert SECRET_KEY not in raised.value.message
    finally:
        moto_server.start()

    assert s3_store.get(SEGMENT) == FOOTAGE  # the same server state after the restart


@pytest.mark.s3
def test_overwriting_a_locked_s3_object_keeps_the_locked_version(s3_store: S3Store) -> None:
    # S3 keeps versions: a new put is allowed, but the locked version still blocks the delete.
    s3_store.put(SEGMENT, b"original", {}, retain_until=_later())
    s3_store.put(SEGMENT, b"replacement", {})

    assert s3_store.get(SEGMENT) == b"replacement"
    assert [f.key for f in s3_store.delete_many([SEGMENT])] == [SEGMENT]
    assert len(s3_store.version_ids(SEGMENT)) == 1  # the unlocked version went, the locked stays


@pytest.mark.s3
def test_s3_put_stream_uploads_a_large_object_in_parts(s3_client: Minio) -> None:
    # Beyond the part size the upload is multipart: the lock must land on the version it
    # wrote, and minio never holds more than one part.
    store = S3Store(s3_client, f"test-{uuid.uuid4().hex[:24]}", stream_part_size=5 << 20)
    data = os.urandom(12 << 20)
    until = _later()
    store.put_stream(SEGMENT, ChunkedSource(data, step=1 << 20), len(data), METADATA, until)

    assert store.get(SEGMENT) == data
    info = store.head(SEGMENT)
    assert info is not None
    assert (info.size, info.retain_until, dict(info.metadata)) == (len(data), until, METADATA)
    assert [f.key for f in store.delete_many([SEGMENT])] == [SEGMENT]
    assert len(store.version_ids(SEGMENT)) == 1


@pytest.mark.s3
def test_s3_failed_multipart_put_stream_leaves_nothing(s3_client: Minio) -> None:
    store = S3Store(s3_client, f"test-{uuid.uuid4().hex[:24]}", stream_part_size=5 << 20)
    data = os.urandom(12 << 20)
    source = ChunkedSource(data, step=1 << 20, fail_after=7 << 20)  # in the second part
    with pytest.raises(OSError, match="simulated spool disk"):
        store.put_stream(SEGMENT, source, len(data), METADATA)

    assert store.head(SEGMENT) is None
    assert store.version_ids(SEGMENT) == []
    uploads = s3_client._list_multipart_uploads(store.bucket)
    assert list(uploads.uploads) == []  # aborted, not left to accumulate parts


@pytest.mark.s3
def test_s3_part_size_below_the_minimum_is_refused(s3_client: Minio) -> None:
    with pytest.raises(ConfigError):
        S3Store(s3_client, f"test-{uuid.uuid4().hex[:24]}", stream_part_size=1 << 20)


@pytest.mark.s3
def test_s3_bucket_is_created_with_object_lock(s3_store: S3Store) -> None:
    config = s3_store._client.get_bucket_versioning(s3_store.bucket)
    assert config.status == "Enabled"
    # Opening the same bucket again (a restart) must not fail.
    S3Store(s3_store._client, s3_store.bucket)


@pytest.mark.s3
def test_s3_bucket_we_create_aborts_incomplete_uploads_after_a_day(s3_store: S3Store) -> None:
    config = s3_store._client.get_bucket_lifecycle(s3_store.bucket)
    assert config is not None
    (rule,) = config.rules
    assert rule.status == "Enabled" and rule.rule_filter is not None
    assert rule.rule_filter.prefix == ""  # the whole bucket
    assert rule.abort_incomplete_multipart_upload is not None
    assert rule.abort_incomplete_multipart_upload.days_after_initiation == 1
    assert s3_store.aborts_stale_uploads()


@pytest.mark.s3
def test_s3_existing_bucket_without_the_rule_is_opened_with_a_warning(
    s3_client: Minio, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's bucket is never reconfigured (a lifecycle write replaces every rule):
    its missing rule is named at start, and a rule of the operator's own is recognised."""
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    s3_client.make_bucket(bucket, object_lock=True)
    with caplog.at_level(logging.WARNING, logger="vault.store.s3"):
        store = S3Store(s3_client, bucket)
    assert not store.aborts_stale_uploads()
    assert s3_client.get_bucket_lifecycle(bucket) is None  # left as it was
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and bucket in warned[0] and "incomplete multipart" in warned[0]

    only_logs = LifecycleConfig([Rule(
        "Enabled", rule_filter=Filter(prefix="logs/"), rule_id="logs",
        abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=3),
    )])
    s3_client.set_bucket_lifecycle(bucket, only_logs)
    assert not store.aborts_stale_uploads()  # a rule for part of the bucket does not count
    whole = LifecycleConfig([Rule(
        "Enabled", rule_filter=Filter(prefix=""), rule_id="ops",
        abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=7),
    )])
    s3_client.set_bucket_lifecycle(bucket, whole)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vault.store.s3"):
        S3Store(s3_client, bucket)
    assert store.aborts_stale_uploads()
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


def _access_denied(*_args: object, **_kwargs: object) -> None:
    """What S3 answers credentials without the lifecycle permissions."""
    response = urllib3.response.HTTPResponse(body=b"", status=403)
    raise S3Error(response, "AccessDenied", "Access Denied", None, None, None)


@pytest.mark.s3
@pytest.mark.parametrize("refused", ["get_bucket_lifecycle", "set_bucket_lifecycle"])
def test_s3_store_starts_when_it_may_not_read_or_write_the_lifecycle(
    s3_client: Minio, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    refused: str,
) -> None:
    """Least-privilege credentials (no lifecycle permissions) cost a log line, not a start."""
    monkeypatch.setattr(s3_client, refused, _access_denied)
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    if refused == "get_bucket_lifecycle":
        s3_client.make_bucket(bucket, object_lock=True)  # an existing bucket: the rule is read
    with caplog.at_level(logging.INFO, logger="vault.store.s3"):
        store = S3Store(s3_client, bucket)
    store.put(SEGMENT, FOOTAGE, METADATA)  # a working store
    assert store.get(SEGMENT) == FOOTAGE
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "AccessDenied" in logged and bucket in logged


@pytest.mark.s3
def test_s3_bucket_without_object_lock_cannot_start(s3_client: Minio) -> None:
    # The override is for stores that accept locks but do not enforce them; a bucket that
    # cannot lock at all fails even with it, and the probe leaves nothing behind.
    bucket = f"test-{uuid.uuid4().hex[:24]}"
    s3_client.make_bucket(bucket)  # no Object Lock
    store = S3Store(s3_client, bucket)

    with pytest.raises(ConfigError, match="ObjectLockConfiguration"):
        ensure_lock_enforcement(store, allow_unenforced=True, log=logging.getLogger("t"))
    assert list(s3_client.list_objects(bucket, recursive=True, include_version=True)) == []


# -- filesystem only ------------------------------------------------------------------------------


def test_fs_retention_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    fs = FilesystemStore(tmp_path / "store", clock=clock.now)
    fs.put(SEGMENT, FOOTAGE, METADATA, retain_until=datetime(2026, 11, 29, 13, 0, tzinfo=UTC))

    assert [f.key for f in fs.delete_many([SEGMENT])] == [SEGMENT]
    clock.advance(timedelta(minutes=59, seconds=59))
    assert [f.key for f in fs.delete_many([SEGMENT])] == [SEGMENT]
    clock.advance(timedelta(seconds=1))  # retain_until itself is the first deletable instant
    assert fs.delete_many([SEGMENT]) == []
    assert fs.head(SEGMENT) is None


def test_fs_legal_hold_outlives_retention(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    fs = FilesystemStore(tmp_path / "store", clock=clock.now)
    fs.put(SEGMENT, FOOTAGE, METADATA, retain_until=datetime(2026, 11, 29, 13, 0, tzinfo=UTC))
    fs.set_legal_hold(SEGMENT, True)
    clock.advance(timedelta(days=30))

    assert [f.key for f in fs.delete_many([SEGMENT])] == [SEGMENT]


def _stray_files(root: Path) -> list[str]:
    return [
        str(Path(d, f).relative_to(root))
        for d, _, files in os.walk(root)
        for f in files
        if ".tmp-" in f
    ]


def test_fs_put_leaves_no_temp_files(fs_store: FilesystemStore) -> None:
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=_later())
    fs_store.put("thumbs/a", b"t", {})
    fs_store.set_legal_hold("thumbs/a", True)
    with pytest.raises(Conflict):
        fs_store.put(SEGMENT, b"different bytes", METADATA)  # refused after its temp was written

    assert _stray_files(fs_store.root) == []
    assert fs_store.get(SEGMENT) == FOOTAGE


def test_fs_put_stream_leaves_no_temp_files(fs_store: FilesystemStore) -> None:
    fs_store.put_stream(SEGMENT, io.BytesIO(FOOTAGE), len(FOOTAGE), METADATA, _later())
    with pytest.raises(Conflict):  # refused after its temp was written
        fs_store.put_stream(SEGMENT, io.BytesIO(FOOTAGE[::-1]), len(FOOTAGE), METADATA)
    with pytest.raises(InvalidInput):
        fs_store.put_stream("thumbs/a", io.BytesIO(b"short"), 6, {})
    with pytest.raises(OSError, match="simulated"):
        fs_store.put_stream("thumbs/b", ChunkedSource(FOOTAGE, fail_after=1), len(FOOTAGE), {})

    assert _stray_files(fs_store.root) == []
    assert fs_store.get(SEGMENT) == FOOTAGE


def _resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore(2) over a private, untouched mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    residency = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            start = ctypes.c_char.from_buffer(mapped)
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), size, residency)
            del start
        finally:
            mapped.close()
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(page & 1 for page in residency)


def test_fs_put_stream_leaves_the_object_out_of_the_page_cache(
    fs_store: FilesystemStore,
) -> None:
    # Sealed segments are written once and not read back by ingest: caching them only grows
    # the page cache (P1). put() of small objects is unchanged.
    data = os.urandom(4 << 20)
    fs_store.put_stream(SEGMENT, io.BytesIO(data), len(data), METADATA)
    fs_store.put("exports/small", data, {})

    assert _resident_pages(fs_store.root / "objects" / SEGMENT) == 0
    assert _resident_pages(fs_store.root / "objects" / "exports/small") > 0
    assert fs_store.get(SEGMENT) == data


def test_fs_refuses_to_replace_a_locked_object(fs_store: FilesystemStore) -> None:
    # One file per key: replacing a locked object would destroy the locked bytes.
    fs_store.put(SEGMENT, FOOTAGE, METADATA)
    fs_store.set_legal_hold(SEGMENT, True)

    with pytest.raises(Conflict):
        fs_store.put(SEGMENT, b"other", METADATA)
    assert fs_store.get(SEGMENT) == FOOTAGE


def test_fs_lists_no_temp_files(fs_store: FilesystemStore) -> None:
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=_later())
    # What a crash mid-put leaves behind: a temp file next to the object.
    objects_dir = fs_store.root / "objects" / Path(SEGMENT).parent
    (objects_dir / ".seg-0002.tmp-deadbeef").write_bytes(b"partial")

    assert list(fs_store.list("")) == [SEGMENT]
    assert fs_store.head("segments/site1/cam1/2026/11/29/seg-0002") is None


def test_fs_keeps_one_file_per_object_with_its_lock_attribute(fs_store: FilesystemStore) -> None:
    until = _later()
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)
    fs_store.set_legal_hold(SEGMENT, True)

    files = [
        str(Path(d, f).relative_to(fs_store.root))
        for d, _, names in os.walk(fs_store.root)
        for f in names
    ]
    assert sorted(files) == [".lock", f"objects/{SEGMENT}"]
    lock = json.loads(os.getxattr(fs_store.root / "objects" / SEGMENT, LOCK_ATTRIBUTE))
    assert lock == {"metadata": METADATA, "retain_until": until.isoformat(), "legal_hold": True}


def test_fs_locks_hold_after_reopening_the_store(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    until = datetime(2026, 11, 29, 13, 0, tzinfo=UTC)
    first = FilesystemStore(tmp_path / "store", clock=clock.now)
    first.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)
    first.put("thumbs/held", b"t", {})
    first.set_legal_hold("thumbs/held", True)

    again = FilesystemStore(tmp_path / "store", clock=clock.now)
    refused = again.delete_many([SEGMENT, "thumbs/held"])
    assert refused == [
        DeleteFailure(SEGMENT, f"retained until {until.isoformat()}"),
        DeleteFailure("thumbs/held", "under legal hold"),
    ]
    with pytest.raises(Conflict):
        again.set_retention(SEGMENT, until - timedelta(seconds=1))  # never shortened
    again.set_retention(SEGMENT, until + timedelta(hours=1))
    assert again.head(SEGMENT) == ObjectInfo(
        key=SEGMENT, size=len(FOOTAGE), metadata=METADATA,
        retain_until=until + timedelta(hours=1),
    )
    clock.advance(timedelta(hours=1, minutes=59))
    assert [f.key for f in FilesystemStore(tmp_path / "store", clock=clock.now)
            .delete_many([SEGMENT])] == [SEGMENT]
    clock.advance(timedelta(minutes=1))
    assert FilesystemStore(tmp_path / "store", clock=clock.now).delete_many([SEGMENT]) == []
    assert again.head(SEGMENT) is None
    assert again.head("thumbs/held") is not None


def test_fs_object_exists_only_with_its_lock(
    fs_store: FilesystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # F2: the rename that gives the object its name finds the lock already on the temp file.
    seen: list[dict[str, object]] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(json.loads(os.getxattr(src, LOCK_ATTRIBUTE)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    until = _later()
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=until)

    assert seen == [{"metadata": METADATA, "retain_until": until.isoformat(), "legal_hold": False}]


def test_fs_object_without_lock_metadata_is_an_error(fs_store: FilesystemStore) -> None:
    # E.g. a store copied without extended attributes: its locks are unknown, not absent.
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=_later())
    os.removexattr(fs_store.root / "objects" / SEGMENT, LOCK_ATTRIBUTE)

    # A delete refuses that object, as it would a locked one.
    (refused,) = fs_store.delete_many([SEGMENT])
    assert refused.key == SEGMENT and "no lock metadata" in refused.reason
    with pytest.raises(Unavailable, match="no lock metadata"):
        fs_store.head(SEGMENT)
    with pytest.raises(Unavailable, match="no lock metadata"):
        fs_store.put(SEGMENT, b"other bytes", METADATA)
    with pytest.raises(Unavailable, match="no lock metadata"):
        fs_store.set_legal_hold(SEGMENT, False)
    assert fs_store.get(SEGMENT) == FOOTAGE
    assert _stray_files(fs_store.root) == []


def test_fs_unreadable_lock_metadata_never_unlocks(fs_store: FilesystemStore) -> None:
    fs_store.put(SEGMENT, FOOTAGE, METADATA, retain_until=_later())
    os.setxattr(fs_store.root / "objects" / SEGMENT, LOCK_ATTRIBUTE, b"{not json")

    (refused,) = fs_store.delete_many([SEGMENT])
    assert refused.key == SEGMENT and "unreadable lock metadata" in refused.reason
    with pytest.raises(Unavailable, match="unreadable lock metadata"):
        fs_store.head(SEGMENT)
    assert fs_store.get(SEGMENT) == FOOTAGE


@pytest.mark.parametrize(
    ("attribute", "deleted"),
    [
        ({"legal_hold": False, "metadata": {}, "retain_until": None}, True),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-01-01T00:00:00+00:00"}, True),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-01-01T00:00:00Z"}, True),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-12-01T00:00:00+00:00"}, False),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-11-30T08:00:00+09:00"}, True),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-11-30T09:00:00+09:00"}, False),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-11-29T23:00:00-01:00"}, False),
        ({"legal_hold": True, "metadata": {}, "retain_until": None}, False),
        ({"legal_hold": 1, "metadata": {}, "retain_until": None}, False),
        ({"legal_hold": 0, "retain_until": ""}, True),
        ({}, True),
        ({"legal_hold": False, "metadata": None, "retain_until": None}, None),
        ({"legal_hold": False, "metadata": {}, "retain_until": "2026-01-01T00:00:00"}, None),
        ({"legal_hold": False, "metadata": {}, "retain_until": 5}, None),
        ([], None),
    ],
)
def test_fs_delete_decides_every_lock_attribute_as_the_decoder_does(
    tmp_path: Path, attribute: object, deleted: bool | None
) -> None:
    # delete_many reads plain attributes on a fast path; anything unusual goes to the full
    # decoder, which refuses what it cannot read (None: refused as unreadable, and head()
    # raises). Now: 2026-11-29T23:30Z.
    now = FixedClock(datetime(2026, 11, 29, 23, 30, tzinfo=UTC))
    store = FilesystemStore(tmp_path, clock=now.now)
    store.put(SEGMENT, FOOTAGE, METADATA)
    os.setxattr(tmp_path / "objects" / SEGMENT, LOCK_ATTRIBUTE, json.dumps(attribute).encode())

    if deleted is None:
        (refused,) = store.delete_many([SEGMENT])
        assert "unreadable lock metadata" in refused.reason
        with pytest.raises(Unavailable, match="unreadable lock metadata"):
            store.head(SEGMENT)
        assert store.get(SEGMENT) == FOOTAGE
        return
    failures = store.delete_many([SEGMENT])
    assert (failures == []) is deleted
    assert (store.present([SEGMENT]) == set()) is deleted


def test_fs_many_keys_are_deleted_in_parallel_and_locks_still_win(
    fs_store: FilesystemStore,
) -> None:
    keys = [
        f"segments/site1/cam{n % 3}/2026/11/29/seg-{n:04d}" for n in range(MAX_DELETE_BATCH - 1)
    ]
    retained = set(keys[::7])
    held = set(keys[3::11]) - retained
    for key in keys:
        fs_store.put(key, key.encode(), {}, retain_until=_later() if key in retained else None)
    for key in held:
        fs_store.set_legal_hold(key, True)
    missing = "segments/site1/cam9/2026/11/29/never-stored"

    failures = fs_store.delete_many([*keys[:500], missing, *keys[500:]])

    assert [f.key for f in failures] == [k for k in keys if k in retained or k in held]
    assert {f.reason for f in failures if f.key in held} == {"under legal hold"}
    assert list(fs_store.list("segments/")) == sorted(retained | held)
    assert all(fs_store.get(k) == k.encode() for k in retained | held)


def test_fs_parallel_delete_reports_an_object_without_lock_and_keeps_it(
    fs_store: FilesystemStore,
) -> None:
    keys = [f"segments/site1/cam1/2026/11/29/seg-{n:04d}" for n in range(100)]
    for key in keys:
        fs_store.put(key, b"x", {})
    os.removexattr(fs_store.root / "objects" / keys[40], LOCK_ATTRIBUTE)

    failures = fs_store.delete_many(keys)
    assert [f.key for f in failures] == [keys[40]]
    assert "no lock metadata" in failures[0].reason
    assert fs_store.get(keys[40]) == b"x"
    # Every other key is gone: one object of unknown lock holds up no other.
    assert list(fs_store.list("segments/")) == [keys[40]]


def test_fs_refuses_a_filesystem_without_user_xattrs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    with pytest.raises(ConfigError, match="extended attributes"):
        FilesystemStore(tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == [tmp_path / "store" / "objects"]


def _legacy_store(root: Path, objects: dict[str, bytes], sidecars: dict[str, str]) -> None:
    """A store as written before the lock attribute: objects and ``meta/<key>.json`` files."""
    for key, data in objects.items():
        (root / "objects" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "objects" / key).write_bytes(data)
    for key, text in sidecars.items():
        (root / "meta" / f"{key}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "meta" / f"{key}.json").write_text(text)


def test_fs_migrates_a_store_with_lock_sidecars(tmp_path: Path) -> None:
    root = tmp_path / "store"
    until = _later()
    migrated_before_a_crash = "segments/site1/cam1/2026/11/29/seg-0004"
    _legacy_store(
        root,
        {SEGMENT: FOOTAGE, "thumbs/held": b"t", "thumbs/free": b"f", "exports/bare": b"e",
         migrated_before_a_crash: b"m"},
        {
            SEGMENT: json.dumps({"metadata": METADATA, "retain_until": until.isoformat(),
                                 "legal_hold": False}),
            "thumbs/held": '{"metadata": {}, "retain_until": null, "legal_hold": true}',
            "thumbs/free": '{"metadata": {"kind": "t"}, "retain_until": null, "legal_hold": false}',
            "segments/orphan": '{"metadata": {}, "retain_until": null, "legal_hold": true}',
            migrated_before_a_crash: '{"metadata": {}, "retain_until": null, "legal_hold": true}',
        },
    )
    os.setxattr(root / "objects" / migrated_before_a_crash, LOCK_ATTRIBUTE,
                b'{"legal_hold":true,"metadata":{},"retain_until":null}')

    store = FilesystemStore(root)

    assert not (root / "meta").exists()
    assert store.head(SEGMENT) == ObjectInfo(
        key=SEGMENT, size=len(FOOTAGE), metadata=METADATA, retain_until=until
    )
    assert store.head("thumbs/free") == ObjectInfo(
        key="thumbs/free", size=1, metadata={"kind": "t"}
    )
    assert store.head("exports/bare") == ObjectInfo(key="exports/bare", size=1)  # was unlocked
    assert store.head("segments/orphan") is None
    assert [f.key for f in store.delete_many(
        [SEGMENT, "thumbs/held", "thumbs/free", "exports/bare", migrated_before_a_crash]
    )] == [SEGMENT, "thumbs/held", migrated_before_a_crash]
    assert list(store.list("")) == sorted([SEGMENT, "thumbs/held", migrated_before_a_crash])


def test_fs_migration_stops_at_an_unreadable_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _legacy_store(root, {SEGMENT: FOOTAGE}, {SEGMENT: "{not json"})

    with pytest.raises(Unavailable, match="unreadable lock metadata"):
        FilesystemStore(root)
    assert (root / "meta" / f"{SEGMENT}.json").read_text() == "{not json"
    (root / "meta" / f"{SEGMENT}.json").write_text(
        '{"metadata": {}, "retain_until": null, "legal_hold": true}'
    )
    store = FilesystemStore(root)  # repaired: the migration runs again and completes
    assert store.delete_many([SEGMENT]) == [DeleteFailure(SEGMENT, "under legal hold")]


def test_fs_key_colliding_with_a_directory_is_a_conflict(fs_store: FilesystemStore) -> None:
    fs_store.put("segments/a/b", b"x", {})

    with pytest.raises(Conflict):
        fs_store.put("segments/a", b"y", {})
    with pytest.raises(Conflict):
        fs_store.put("segments/a/b/c", b"z", {})
    assert fs_store.head("segments/a") is None
    with pytest.raises(NotFound):
        fs_store.get("segments/a")
