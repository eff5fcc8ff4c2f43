"""How ``kn.load_subfeed`` reaches another node's subfeed: the read order, and no silent empties.

For a subfeed whose feed this node does not own (spec/node-protocol.md §Feeds, "Read order"):

1. **The local store.** What earlier reads (or the daemon) stored is there, verified.
2. **The daemon, if one runs for this storage.** It is asked to follow the subfeed on the
   channels (``channel=``, or every joined one): it catches up from the buckets and subscribes,
   so the providers (the owner first) push new messages into the store as they are appended.
   If the store still has nothing, the first messages are awaited for
   :data:`FIRST_MESSAGES_WAIT_SECONDS`, then the buckets are asked directly (step 3), to say
   why nothing came.
3. **Each channel's bucket, directly** (no daemon, :mod:`kachery_node.bucket_subfeeds`): head,
   then the segments beyond the local end, then the tail, all verified. With no daemon the
   subfeed is given a poller, so ``follow()`` keeps polling the buckets' heads with backoff.

If none of these gives a message (the store stays empty), or a bucket's data fails verification
and no bucket delivered, a typed error says what was tried (:class:`SubfeedNotFoundError`,
:class:`BucketDataRejectedError`), unless the caller asked for a live wait (``live=True``:
``follow()`` then waits for the messages).
"""

from __future__ import annotations

import logging

import kachery_feeds as kf

from . import remote_reads
from .bucket_subfeeds import BucketPoller, buckets_for, catch_up
from .errors import BucketDataRejectedError, SubfeedNotFoundError
from .storage.node_storage import Storage

log = logging.getLogger("kachery.feeds")

#: With a daemon, how long load_subfeed waits for the first messages of a subfeed it has none of.
FIRST_MESSAGES_WAIT_SECONDS = 5.0


def reach(storage: Storage, subfeed: kf.Subfeed, channel: str | None, *, live: bool) -> None:
    """Bring ``subfeed`` (of another node) up to date by the read order above; raise if that
    gives nothing and ``live`` is False."""
    local = subfeed.get_num_local_messages()
    attempts = [f"local store: {local} messages" if local else "local store: no messages"]
    daemon = remote_reads.daemon_for(storage.directory)
    if daemon is not None:
        channels = remote_reads.follow_subfeed(storage.directory, subfeed.uri, channel)
        asked = f"the providers on {', '.join(channels)}" if channels else "no channel (none joined)"
        subfeed.set_poller(DaemonKeepalive(storage, channel))
        if local or live or _first_messages(storage, subfeed, FIRST_MESSAGES_WAIT_SECONDS):
            return  # the daemon keeps the store current from now on
        attempts.append(f"daemon: following it, asked {asked}: nothing within "
                        f"{FIRST_MESSAGES_WAIT_SECONDS:g} s")
    else:
        attempts.append(f"daemon: none running for {storage.directory}")
    buckets = buckets_for(storage.directory, channel)
    result = catch_up(subfeed, buckets)
    attempts += result.attempts or ["channels: this node joined none (`kachery node join`)"]
    if daemon is None:
        subfeed.set_poller(BucketPoller(buckets))
    if live or result.reached or (subfeed.get_num_local_messages() and not result.rejected):
        return
    tried = "; ".join(attempts)
    if result.rejected:
        raise BucketDataRejectedError(
            f"cannot read {subfeed.uri}: what the bucket holds failed verification, nothing of it "
            f"was stored. Tried: {tried}", uri=subfeed.uri, attempts=attempts)
    raise SubfeedNotFoundError(
        f"cannot read {subfeed.uri}: no messages anywhere it was looked for. Tried: {tried}. "
        "Its owner may be offline and never have published it (`kachery feed publish`); to wait "
        "for it, use load_subfeed(uri, live=True) or `kachery feed tail --follow`",
        uri=subfeed.uri, attempts=attempts)


class DaemonKeepalive:
    """The poller of a subfeed the daemon follows: the daemon imports its messages, so this
    only tells the daemon, now and then while ``follow()`` waits, that the subfeed is still
    being read (a followed subfeed nobody reads is unfollowed after ``[daemon.feeds]
    unfollow_idle``), and has it follow the subfeed again if it stopped meanwhile."""

    def __init__(self, storage: Storage, channel: str | None) -> None:
        self.storage_dir = storage.directory
        self.channel = channel

    def __call__(self, subfeed: kf.Subfeed) -> int:
        try:
            remote_reads.follow_subfeed(self.storage_dir, subfeed.uri, self.channel)
        except Exception as exc:  # the daemon stopped or restarts: the next poll tries again
            log.debug("could not tell the daemon that %s is read: %s", subfeed.uri, exc)
        return 0


def unfollow(storage: Storage, uri: str) -> bool:
    """Stop following a remote subfeed: through the daemon, or in its table if none runs."""
    parsed = kf.parse_feed_uri(uri)
    if parsed.subfeed_hash is None:
        raise kf.InvalidUriError(f"unfollow needs a subfeed URI (feed://<feedId>/<subfeed>), not {uri}")
    if remote_reads.daemon_for(storage.directory) is not None:
        return remote_reads.unfollow_subfeed(storage.directory, uri)
    from .storage.followed_subfeeds import FollowedSubfeeds

    table = FollowedSubfeeds(storage.directory)  # the daemon's list (node_runtime.py)
    try:
        return table.remove(parsed.feed_id, parsed.subfeed_hash)
    finally:
        table.close()


def _first_messages(storage: Storage, subfeed: kf.Subfeed, seconds: float) -> bool:
    """Wait up to ``seconds`` for the subfeed's first message to arrive in the store."""
    probe = storage.feeds.load_subfeed(subfeed.uri)  # its own cursor, at 0
    return bool(probe.get_next_messages(wait_msec=seconds * 1000, max_num_messages=1,
                                        advance_position=False))
