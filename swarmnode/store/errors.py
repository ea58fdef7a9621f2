"""The blob store's error family; the HTTP app maps each to a status (API.md, "Blob Service",
errors)."""

from __future__ import annotations

__all__ = [
    "BlobDeleted",
    "BlobNotAvailable",
    "BlobTooLarge",
    "DiskFull",
    "StoreError",
    "UnknownBlob",
]


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class DiskFull(StoreError):
    """ENOSPC/EDQUOT while storing: the upload's temp file is gone and nothing else changed (HTTP
    507)."""


class BlobTooLarge(StoreError):
    """The upload passed the configured maximum blob size (HTTP 413)."""


class BlobNotAvailable(StoreError):
    """The blob is known from its metadata event but its bytes are not on this node (yet)."""


class UnknownBlob(StoreError):
    """No metadata event for this handle has reached this node (HTTP 404)."""


class BlobDeleted(StoreError):
    """The metadata is known but retention removed the bytes (HTTP 410)."""
