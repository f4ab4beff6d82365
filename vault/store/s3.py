"""S3 object store through the ``minio`` client, for any S3 that enforces Object Lock.

The bucket is created with Object Lock (which turns versioning on). Retention is GOVERNANCE mode,
set on the exact version a put wrote; legal hold is per version too. Every version of a key has to
go for the key to be gone, so ``delete_many`` lists and removes all versions (delete markers
included) *without* the governance bypass: the store itself refuses locked versions, and this
backend reports them as failures instead of deciding on its own.

Peculiarities handled here (see FIELD-NOTES "Object storage"):

- Retention is set after the put, not in it: minio-py cannot put with lock headers over plain
  HTTP (no Content-MD5). A crash in between leaves an unlocked version the caller re-puts.
- The lock is read from HEAD's ``x-amz-object-lock-*`` headers, not GetObjectRetention, which
  some S3 implementations (moto) answer wrongly.
- Shortening a retention is refused here, before asking: some stores (moto) accept it, real S3
  refuses it in governance mode without the bypass; both backends must answer Conflict alike.

Errors: connection failures, timeouts and 5xx become :class:`Unavailable`; other refusals the
port has no word for (bad credentials, missing bucket, bucket without Object Lock) become
:class:`ConfigError`. Messages name the endpoint and bucket, never the credentials.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, cast

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, GOVERNANCE, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule
from minio.retention import Retention

from vault.errors import ConfigError, Conflict, InvalidInput, NotFound, Unavailable, VaultError
from vault.store.base import (
    MAX_DELETE_BATCH,
    ByteSource,
    DeleteFailure,
    ObjectInfo,
    SourceFailed,
    read_source,
)
from vault.store.fs import (
    PROBE_PREFIX,
    retention_instant,
    validate_key,
    validate_metadata,
    validate_prefix,
    validate_range,
)
from vault.timerange import parse_instant, utcnow

if TYPE_CHECKING:
    from vault.settings import Settings

__all__ = ["S3Store", "http_client"]

log = logging.getLogger(__name__)

_META_PREFIX = "x-amz-meta-"
_RETAIN_UNTIL_HEADER = "x-amz-object-lock-retain-until-date"
_LEGAL_HOLD_HEADER = "x-amz-object-lock-legal-hold"
_MISSING = frozenset({"NoSuchKey", "NoSuchVersion"})
# delete_many lists a whole "directory" of versions once, rather than each key's, from this
# many of its keys on (a purge batch: up to 1,000 keys under a few camera-day prefixes).
_LIST_FROM = 32
# put_stream sends an object up to this size as one PUT and a larger one in parts of this size:
# one request for a typical segment (1 minute of 1080p at 4 Mbit/s is ~30 MB), memory bounded
# for any. S3 allows 5 MiB to 5 GiB per part and at most 10,000 parts.
STREAM_PART_SIZE = 32 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024
_MAX_PARTS = 10_000
# Days after which the store aborts a multipart upload nobody completed (a bucket we create).
STALE_UPLOAD_DAYS = 1
_ABORT_STALE_UPLOADS = LifecycleConfig([
    Rule(
        ENABLED,
        rule_filter=Filter(prefix=""),
        rule_id="cctv-vault-abort-incomplete-uploads",
        abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(
            days_after_initiation=STALE_UPLOAD_DAYS
        ),
    )
])


def http_client() -> urllib3.PoolManager:
    """A pool that gives up fast: an unreachable store must fail a request in seconds, not the
    minutes minio's default (5 retries, 5-minute timeouts) would spend."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=2, read=10),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        # What minio's own default pool verifies TLS against, since ours replaces it.
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


class S3Store:
    """An :class:`~vault.store.base.ObjectStore` on one Object Lock bucket."""

    name = "s3"

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        create_bucket: bool = True,
        endpoint: str | None = None,
        stream_part_size: int = STREAM_PART_SIZE,
    ) -> None:
        if stream_part_size < _MIN_PART_SIZE:
            raise ConfigError(f"stream_part_size must be at least {_MIN_PART_SIZE} bytes")
        self._client = client
        self.bucket = bucket
        self._part_size = stream_part_size
        # Only for messages; minio keeps the endpoint private, hence the fallback's getattr.
        self.endpoint = endpoint or str(getattr(getattr(client, "_base_url", None), "host", "?"))
        if create_bucket:
            self.ensure_bucket()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """Build the store from validated settings; the credentials go to the client only."""
        if settings.s3_access_key is None or settings.s3_secret_key is None:
            raise ConfigError("store=s3 needs CCTV_S3_ACCESS_KEY and CCTV_S3_SECRET_KEY")
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            # A known region spares a GetBucketLocation round trip before the first request.
            region=settings.s3_region,
            http_client=http_client(),
        )
        return cls(client, settings.s3_bucket, endpoint=settings.s3_endpoint)

    def ensure_bucket(self) -> None:
        """Create the bucket (Object Lock, and a rule that aborts multipart uploads left
        incomplete for a day) if it is missing; warn about an existing one without that rule.
        Only Object Lock is required: a lifecycle the store may not read or write is logged,
        never a reason not to start."""
        created = False
        with self._errors("create bucket", self.bucket):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, object_lock=True)
                    created = True
                except S3Error as exc:
                    # Another process created it between our check and our request (and
                    # sets its rule).
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
                    return
        if not created:
            self._check_stale_upload_rule()
            return
        log.info(
            "store=s3 endpoint=%s bucket=%s created with object lock", self.endpoint, self.bucket
        )
        try:
            # A recorder killed mid-upload leaves its parts behind (ciphertext, but stored and
            # billed, and invisible to the catalog): the store drops them after a day.
            with self._errors("set lifecycle", self.bucket):
                self._client.set_bucket_lifecycle(self.bucket, _ABORT_STALE_UPLOADS)
        except VaultError as exc:
            log.warning(
                "store=s3 bucket=%s: could not add the rule aborting incomplete multipart "
                "uploads: %s", self.bucket, exc.message,
            )
            return
        log.info(
            "store=s3 bucket=%s aborts multipart uploads left incomplete for %d day(s)",
            self.bucket, STALE_UPLOAD_DAYS,
        )

    def aborts_stale_uploads(self) -> bool:
        """Whether an enabled lifecycle rule of the whole bucket aborts incomplete multipart
        uploads (whoever set it)."""
        with self._errors("read lifecycle", self.bucket):
            try:
                config = self._client.get_bucket_lifecycle(self.bucket)
            except S3Error as exc:
                if exc.code == "NoSuchLifecycleConfiguration":
                    return False
                raise
        return config is not None and any(
            rule.status == ENABLED
            and rule.abort_incomplete_multipart_upload is not None
            and not (rule.rule_filter is not None and rule.rule_filter.prefix)
            and not (rule.rule_filter is not None and (rule.rule_filter.tag
                                                       or rule.rule_filter.and_operator))
            for rule in config.rules
        )

    def _check_stale_upload_rule(self) -> None:
        try:
            covered = self.aborts_stale_uploads()
        except VaultError as exc:  # e.g. no permission to read the lifecycle: say so, go on
            log.info("store=s3 bucket=%s lifecycle not checked: %s", self.bucket, exc.message)
            return
        if not covered:
            log.warning(
                "store=s3 bucket=%s has no lifecycle rule aborting incomplete multipart "
                "uploads: parts of uploads a crash cut off stay stored until one is added "
                "(docs/guide/operations.md)",
                self.bucket,
            )

    # -- the port -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        validate_key(key)
        # Prefixed here, so a name like "content-type" stays user metadata and never becomes
        # the object's Content-Type header.
        headers: dict[str, str | list[str] | tuple[str]] = {
            f"{_META_PREFIX}{name}": value for name, value in validate_metadata(metadata).items()
        }
        until = retention_instant(retain_until) if retain_until is not None else None
        with self._errors("put", key):
            written = self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), metadata=headers
            )
            if until is not None:
                # On the version just written, not on whatever is current by now.
                self._client.set_object_retention(
                    self.bucket, key, Retention(GOVERNANCE, until), version_id=written.version_id
                )

    def put_stream(
        self,
        key: str,
        source: ByteSource,
        length: int,
        metadata: Mapping[str, str],
        retain_until: datetime | None = None,
    ) -> None:
        """``put`` from a stream: one PUT up to the part size, a multipart upload beyond.

        Memory is bounded by the part size (minio holds one part as bytes); a failed multipart
        upload is aborted by minio, so no partial object becomes visible.
        """
        validate_key(key)
        if length < 0:
            raise InvalidInput(f"length must be >= 0 (got {length})")
        headers: dict[str, str | list[str] | tuple[str]] = {
            f"{_META_PREFIX}{name}": value for name, value in validate_metadata(metadata).items()
        }
        until = retention_instant(retain_until) if retain_until is not None else None
        part_size = max(self._part_size, -(-length // _MAX_PARTS))
        try:
            if length == 0 and read_source(source, memoryview(bytearray(1))):
                # minio reads nothing for an empty object: check here that it is empty.
                raise InvalidInput(f"stream for {key} is longer than its length 0")
            with self._errors("put", key):
                written = self._client.put_object(
                    self.bucket,
                    key,
                    # minio calls only read() on it (read_part_data).
                    cast(BinaryIO, _ExactReader(source, length, key)),
                    length,
                    metadata=headers,
                    part_size=part_size,
                )
                if until is not None:
                    self._client.set_object_retention(
                        self.bucket,
                        key,
                        Retention(GOVERNANCE, until),
                        version_id=written.version_id,
                    )
        except SourceFailed as failed:
            raise failed.error from None  # the source's own error, not the store's

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_key(key)
        validate_range(offset, length)
        if length == 0:
            return b""  # HTTP ranges cannot ask for zero bytes
        with self._errors("get", key):
            try:
                response = self._client.get_object(
                    self.bucket, key, offset=offset, length=length or 0
                )
            except S3Error as exc:
                if exc.code == "InvalidRange":
                    return b""  # offset at or past the end: empty, as a file read would be
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        with self._errors("head", key):
            try:
                stat = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
        headers = {name.lower(): value for name, value in (stat.metadata or {}).items()}
        retain = headers.get(_RETAIN_UNTIL_HEADER)
        return ObjectInfo(
            key=key,
            size=stat.size or 0,
            metadata={
                name[len(_META_PREFIX) :]: str(value)
                for name, value in headers.items()
                if name.startswith(_META_PREFIX)
            },
            retain_until=parse_instant(str(retain), field="retain_until") if retain else None,
            legal_hold=str(headers.get(_LEGAL_HOLD_HEADER, "")).upper() == "ON",
        )

    def present(self, keys: Sequence[str]) -> set[str]:
        """A HEAD of each key (callers overlap several calls for many keys)."""
        return {key for key in keys if self.head(key) is not None}

    def delete_many(self, keys: Sequence[str]) -> builtins.list[DeleteFailure]:
        if len(keys) > MAX_DELETE_BATCH:
            raise InvalidInput(f"delete_many takes at most {MAX_DELETE_BATCH} keys ({len(keys)})")
        for key in keys:
            validate_key(key)
        failures = self._delete_versions(list(dict.fromkeys(keys)), bypass_governance=False)
        if failures:
            log.info("store=s3 delete refused keys=%d of %d", len(failures), len(keys))
        return failures

    def list(self, prefix: str) -> Iterator[str]:
        """Current keys under ``prefix`` in byte order; errors surface while iterating."""
        validate_prefix(prefix)
        return self._keys(prefix)

    def set_retention(self, key: str, retain_until: datetime) -> None:
        validate_key(key)
        until = retention_instant(retain_until)
        current = self.head(key)
        if current is None:
            raise NotFound(f"object {key} not found")
        if current.retain_until is not None and until < current.retain_until:
            raise Conflict(
                f"object {key} is retained until {current.retain_until.isoformat()}:"
                f" retention can only be extended (asked {until.isoformat()})"
            )
        with self._errors("set retention on", key):
            try:
                self._client.set_object_retention(self.bucket, key, Retention(GOVERNANCE, until))
            except S3Error as exc:
                if exc.code == "AccessDenied":
                    raise Conflict(f"store refused retention {until.isoformat()} on {key}") from exc
                raise

    def set_legal_hold(self, key: str, on: bool) -> None:
        validate_key(key)
        # Asked first because some stores (moto) answer a hold on a missing key with a 500,
        # which would read as "unavailable"; holds change rarely, the extra HEAD is cheap.
        if self.head(key) is None:
            raise NotFound(f"object {key} not found")
        with self._errors("set legal hold on", key):
            if on:
                self._client.enable_object_legal_hold(self.bucket, key)
            else:
                self._client.disable_object_legal_hold(self.bucket, key)

    def probe_lock_enforcement(self) -> bool:
        """Put a retained probe and an unlocked control; True if only the probe was refused.

        The control shows a refusal comes from the lock, not from, say, missing delete rights.
        """
        probe_id = uuid.uuid4().hex
        locked_key = f"{PROBE_PREFIX}{probe_id}"
        control_key = f"{PROBE_PREFIX}{probe_id}-control"
        try:
            # A bucket without Object Lock fails here (ConfigError): no override can fix that.
            self.put(locked_key, b"lock probe", {}, retain_until=utcnow() + timedelta(days=1))
            self.put(control_key, b"lock probe control", {})
            refused = {f.key for f in self.delete_many([locked_key, control_key])}
            return locked_key in refused and control_key not in refused
        finally:
            try:
                left = self._delete_versions([locked_key, control_key], bypass_governance=True)
            except VaultError as exc:  # the probe's own error, if any, is the one to raise
                left = [DeleteFailure(locked_key, exc.message)]
            for failure in left:
                log.warning(
                    "store=s3 endpoint=%s bucket=%s probe object %s left behind: %s",
                    self.endpoint,
                    self.bucket,
                    failure.key,
                    failure.reason,
                )

    def version_ids(self, key: str) -> builtins.list[str | None]:
        """Every version id of exactly ``key``, delete markers included (for checks and tests:
        a purged key must have none left)."""
        validate_key(key)
        with self._errors("list versions of", key):
            return self._versions(key)

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Translate client and transport errors into the port's error kinds."""
        where = f"S3 store at {self.endpoint} (bucket {self.bucket})"
        try:
            yield
        except VaultError:
            raise
        except S3Error as exc:
            status = exc.response.status if exc.response is not None else 0
            if exc.code in _MISSING:
                raise NotFound(f"object {key} not found") from exc
            if status >= 500:
                raise Unavailable(f"{where}: {action} {key}: {exc.code} (HTTP {status})") from exc
            raise ConfigError(
                f"{where}: {action} {key} refused: {exc.code}: {exc.message} (HTTP {status})"
            ) from exc
        except (urllib3.exceptions.HTTPError, MinioException, OSError) as exc:
            # MaxRetryError names host, port and path; credentials travel in a header, not there.
            reason = getattr(exc, "reason", None) or exc
            raise Unavailable(
                f"{where} is unavailable: {action} {key}: {type(reason).__name__}: {reason}"
            ) from exc

    def _keys(self, prefix: str) -> Iterator[str]:
        with self._errors("list", prefix):
            for entry in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if entry.object_name is not None and not entry.is_dir:
                    yield entry.object_name

    def _versions_of(self, keys: Sequence[str]) -> dict[str, builtins.list[str | None]]:
        """Every version id of each of ``keys`` (delete markers included), by key.

        Keys are grouped by their "directory" (the prefix up to the last ``/``). One listing of
        a directory that holds many of them (:data:`_LIST_FROM`) replaces a listing per key: a
        purge batch's keys share a few camera-day prefixes. The listing is non-recursive, so
        it holds exactly the keys directly in that directory, and only names asked are kept.
        """
        found: dict[str, builtins.list[str | None]] = {key: [] for key in keys}
        by_directory: dict[str, builtins.list[str]] = {}
        for key in keys:
            by_directory.setdefault(key[: key.rfind("/") + 1], []).append(key)
        for directory, members in by_directory.items():
            if len(members) < _LIST_FROM:
                for key in members:
                    found[key] = self._versions(key)
                continue
            for entry in self._client.list_objects(
                self.bucket, prefix=directory, include_version=True, recursive=False
            ):
                versions = found.get(entry.object_name or "")
                if versions is not None and not entry.is_dir:
                    versions.append(entry.version_id)
        return found

    def _versions(self, key: str) -> builtins.list[str | None]:
        """Every version id of exactly ``key``, delete markers included."""
        # Non-recursive: with the "/" delimiter, keys below "key/" fold into one prefix entry.
        entries = self._client.list_objects(
            self.bucket, prefix=key, include_version=True, recursive=False
        )
        return [e.version_id for e in entries if e.object_name == key and not e.is_dir]

    def _delete_versions(
        self, keys: Sequence[str], *, bypass_governance: bool
    ) -> builtins.list[DeleteFailure]:
        refused: dict[str, str] = {}
        with self._errors("delete", ", ".join(keys[:3])):
            targets = [
                DeleteObject(key, version)
                for key, versions in self._versions_of(keys).items()
                for version in versions
            ]
            if targets:
                for error in self._client.remove_objects(
                    self.bucket, targets, bypass_governance_mode=bypass_governance
                ):
                    name = error.name or "?"
                    refused.setdefault(name, f"{error.code}: {error.message or 'refused'}")
            failures = [DeleteFailure(key, refused[key]) for key in keys if key in refused]
            # A version written while we deleted would survive unseen: check, do not assume.
            left = self._versions_of([key for key in keys if key not in refused])
            failures += [
                DeleteFailure(key, "a version remains after the delete")
                for key, versions in left.items()
                if versions
            ]
        return failures


class _ExactReader:
    """``read(n)`` for minio over a :class:`ByteSource` that must hold exactly ``length`` bytes.

    A short or long source raises :class:`InvalidInput` from inside the upload, before its
    last part is sent, so nothing is stored.
    """

    def __init__(self, source: ByteSource, length: int, key: str) -> None:
        self._source = source
        self._left = length
        self._length = length
        self._key = key

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        buffer = bytearray(want)
        view = memoryview(buffer)
        got = 0
        while got < want:
            count = read_source(self._source, view[got:])
            if not count:
                raise InvalidInput(
                    f"stream for {self._key} ended after {self._length - self._left + got}"
                    f" of {self._length} bytes"
                )
            got += count
        self._left -= got
        if not self._left and read_source(self._source, memoryview(bytearray(1))):
            raise InvalidInput(f"stream for {self._key} is longer than its length {self._length}")
        return bytes(buffer)
