"""Clients of what carries bytes between nodes: pub-sub services (:mod:`.pubsub`), buckets
(:mod:`.bucket`) and the hub's API (:mod:`.hub_client`). The protocol never imports them
directly: the daemon hands it what they deliver.
"""
