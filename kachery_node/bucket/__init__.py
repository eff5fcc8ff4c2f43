"""Channel buckets: the :class:`Bucket` interface, the embedded filesystem backend served by
``kachery hub serve`` and an HTTP client for it. See spec/hub.md ("Bucket")."""

from .base import Bucket, BucketBackend, ObjectInfo
from .embedded import EmbeddedBucketBackend, HttpBucket
from .open import open_bucket

__all__ = ["Bucket", "BucketBackend", "EmbeddedBucketBackend", "HttpBucket", "ObjectInfo", "open_bucket"]
