"""Object stores behind one protocol."""

from vault.store.base import MAX_DELETE_BATCH, DeleteFailure, ObjectInfo, ObjectStore

__all__ = ["MAX_DELETE_BATCH", "DeleteFailure", "ObjectInfo", "ObjectStore"]
