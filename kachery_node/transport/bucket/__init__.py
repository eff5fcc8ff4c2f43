"""Channel buckets: the :class:`Bucket` interface and its backends (the hub's embedded object store
over HTTP, Google Cloud Storage), chosen by :func:`open_bucket` from what the hub's
``channel_info`` says.
"""
