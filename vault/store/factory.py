"""Choose the object store from settings, and refuse to run on one that does not enforce locks.

A vault whose store lets a locked segment be deleted gives no retention guarantee at all, so the
composition root runs :func:`ensure_lock_enforcement` before serving anything.
"""

from __future__ import annotations

import logging

from vault.errors import ConfigError
from vault.settings import Settings
from vault.store.base import ObjectStore
from vault.store.fs import FilesystemStore

__all__ = ["ensure_lock_enforcement", "open_store"]


def open_store(settings: Settings) -> ObjectStore:
    if settings.store == "fs":
        return FilesystemStore(settings.store_root)
    if settings.store == "s3":
        # Imported here: the minio client costs start-up time the embedded default never needs.
        from vault.store.s3 import S3Store

        return S3Store.from_settings(settings)
    raise ConfigError(f"unknown store backend {settings.store!r}")


def ensure_lock_enforcement(
    store: ObjectStore,
    allow_unenforced: bool,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Probe the store; an unenforced lock stops the start unless allowed, and then is logged."""
    if store.probe_lock_enforcement():
        log.info("store=%s lock enforcement verified", store.name)
        return
    if not allow_unenforced:
        raise ConfigError(
            f"store {store.name} accepts deleting a locked object; refusing to start"
            " (set CCTV_S3_ALLOW_UNENFORCED_LOCK=true to override)"
        )
    log.warning(
        "store=%s does NOT enforce object locks: retention and legal holds are not guaranteed"
        " (CCTV_S3_ALLOW_UNENFORCED_LOCK=true)",
        store.name,
    )
