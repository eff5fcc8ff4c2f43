"""The node-to-node protocol as pure logic (no I/O): envelopes, bucket layout, feed segments.

The daemon drives these with real transports (pub-sub, bucket, SQLite); the tests drive them
directly. See spec/node-protocol.md and spec/bucket.md.
"""
