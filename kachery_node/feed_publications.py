"""Which of this node's feeds are *published*: kept current in a channel's bucket whether or not
anyone follows them (spec/node-protocol.md §Feeds, "Publishing").

A publication is a row of ``<storage>/published-feeds.json``::

    [{"feed_id": "<64 hex>", "subfeed_hash": "<40 hex>" | null, "channel": "lab"}, ...]

``subfeed_hash`` null publishes the whole feed: every subfeed it has now and every one it gets
later. The API and the CLI write the file (``kn.publish``, ``kachery feed publish``); the daemon
reads it when it starts and whenever the file changes, and treats each published subfeed as if
a reader were always subscribed to it on that channel (its bucket copy, segments and head, is
brought up to date after every append).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kachery_feeds as kf

from .errors import ConfigError

PUBLISHED_FILE = "published-feeds.json"


@dataclass(frozen=True)
class Publication:
    """A feed (``subfeed_hash`` None) or one subfeed of it, published to ``channel``."""

    feed_id: str
    subfeed_hash: str | None
    channel: str

    @property
    def uri(self) -> str:
        if self.subfeed_hash is None:
            return f"feed://{self.feed_id}"
        return kf.subfeed_uri(self.feed_id, "~" + self.subfeed_hash)

    def covers(self, feed_id: str, subfeed_hash: str) -> bool:
        return self.feed_id == feed_id and self.subfeed_hash in (None, subfeed_hash)

    def to_json(self) -> dict:
        return {"feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash, "channel": self.channel}


def publications_path(storage_dir: str | os.PathLike) -> Path:
    return Path(storage_dir) / PUBLISHED_FILE


def load_publications(storage_dir: str | os.PathLike) -> list[Publication]:
    """The node's publications (none if the file does not exist); raises ConfigError if the
    file is unreadable."""
    path = publications_path(storage_dir)
    try:
        rows = json.loads(path.read_text())
        pubs = [Publication(r["feed_id"], r.get("subfeed_hash"), r["channel"]) for r in rows]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for p in pubs:
        if not (isinstance(p.feed_id, str) and isinstance(p.channel, str)
                and (p.subfeed_hash is None or isinstance(p.subfeed_hash, str))):
            raise ConfigError(f"cannot read {path}: malformed row {p.to_json()!r}")
    return pubs


def save_publications(storage_dir: str | os.PathLike, pubs: list[Publication]) -> None:
    """Write the publications atomically (a daemon reading meanwhile sees old or new, whole)."""
    path = publications_path(storage_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([p.to_json() for p in dict.fromkeys(pubs)], indent=1))
    os.replace(tmp, path)


def update_publications(storage_dir: str | os.PathLike,
                        change: Callable[[list[Publication]], list[Publication]]) -> list[Publication]:
    """Read, change and write the publications under a lock, so that two processes publishing
    at once do not lose one's change; returns what was read (before the change)."""
    with _locked(publications_path(storage_dir).with_suffix(".lock")):
        before = load_publications(storage_dir)
        after = change(list(before))
        if after != before:
            save_publications(storage_dir, after)
        return before


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def parse_publication(uri: str, channel: str) -> Publication:
    """The publication of a ``feed://<id>`` (whole feed) or ``feed://<id>/<subfeed>`` URI on
    ``channel``; raises kachery_feeds.InvalidUriError for a malformed URI."""
    parsed = kf.parse_feed_uri(uri)
    return Publication(parsed.feed_id, parsed.subfeed_hash, channel)
