"""What the original kachery (kachery-daemon 1.2 and kachery-client 1.2) left behind, read by
this node: its storage directories, its signed subfeeds and its JSON spellings.

* :mod:`.original_canonical_json`: the original daemon's deterministic JSON (JavaScript semantics), behind
  its signatures and its mutable keys;
* :mod:`.original_messages`: the original's signed subfeed messages and the rules to verify them;
* :mod:`.link_files`: ``sha1/aa/bb/cc/<sha1>.link`` files (links registered by the original);
* :mod:`.storage_dir`: recognising an original storage directory (``feeds.db``, ``mutables.db``,
  ``private.pem``, ``kachery.yaml``) without changing it;
* :mod:`.feeds_import`: ``kachery feed import-legacy``;
* :mod:`.feed_names`: local feed names given by this node or by kachery-client, one rule.

Pure logic and read-only file access, except :mod:`.feeds_import`, which writes only to this
node's own store. The formats are in ``spec/legacy.md``; the facts about the original come from
spec/legacy.md, written from the original's public documentation and kachery-client 1.2.0's source.
"""
