"""Pub-sub for channels: the :class:`PubSub` interface and its backends (the hub's embedded relay,
NATS, Ably), chosen by :func:`open_pubsub` from the credentials the hub gives.
"""
