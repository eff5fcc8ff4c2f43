"""Channel buckets: the :class:`Bucket` interface, the embedded filesystem backend served by
``kachery hub serve`` and an HTTP client for it. See spec/hub.md ("Bucket")."""

from .base import Bucket, BucketBackend, ObjectInfo
from .embedded import EmbeddedBucketBackend, HttpBucket

__all__ = ["Bucket", "BucketBackend", "EmbeddedBucketBackend", "HttpBucket", "ObjectInfo"]
