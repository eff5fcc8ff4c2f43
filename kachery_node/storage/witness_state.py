"""A witness's state: its verified copies of the subfeeds it witnesses and the cosignatures it
made (spec/witness.md §4), in SQLite; the rules are :mod:`kachery_node.protocol.witness`'s. No
network and no clock: callers pass the time.

How it stays consistent: the witness keeps its own verified copy of every subfeed it has
witnessed (a :class:`kachery_feeds.Store`, SQLite), so every checkpoint it ever cosigned is a
prefix of the chain it holds. A request carries the wire lines from (at most) the witness's
count up to the checkpoint's last message; importing them runs the checks of spec/feeds.md §5,
so a request is cosigned only if it *extends* (or repeats a prefix of) what the witness holds.
A conflict is a fork: the store records its proof, and the witness then refuses to cosign any
checkpoint of that subfeed past the fork's position, on either branch.

Unlike C2SP tlog-witness, which keeps only the latest tree head per log and checks Merkle
consistency proofs, a hash chain has no short consistency proof: the proof *is* the messages in
between, so the witness holds them (the same bytes the channel's bucket holds) and the
requester sends only what the witness lacks (a refusal with :attr:`WitnessRefusal.size` tells
it where to start, like tlog-witness's 409 with the witness's size).

Every cosignature made is recorded (``witness.db``: subfeed, size, hash, time, line), which is
what lets a reader later prove *when* a message existed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import nacl.signing

import kachery_feeds as kf
from kachery_feeds.checkpoints import (
    CheckpointError,
    Cosignature,
    checkpoint_from_last,
    cosign,
    parse_cosignature_line,
)

from ..protocol.bucket_layout import SEGMENT_SIZE
from ..protocol.feed_bucket import SegmentImporter
from ..protocol.witness import (
    MAX_BUCKET_SEGMENTS,
    Cosigned,
    RefusalReason,
    WitnessRefusal,
    check_not_forked,
    signing_time,
)

SegmentReader = Callable[[int], bytes | None]  # segment i of the subfeed in the bucket, or None


class Witness:
    """The witness's state in ``directory``: ``witness-feeds.db`` (its copies of the subfeeds)
    and ``witness.db`` (the cosignatures it made). ``signing_key``: the witness's Ed25519 key."""

    def __init__(self, directory: Path | str, signing_key: nacl.signing.SigningKey) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = signing_key
        self.public_hex = signing_key.verify_key.encode().hex()
        self.feeds = kf.open_store(self.dir / "witness-feeds.db")
        self._db = sqlite3.connect(self.dir / "witness.db", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # As the feed store ("normal"): a crash of the process loses nothing; a power loss may lose
        # the last cosignatures' records (the cosignatures themselves are out with their readers).
        # FULL would fsync every cosignature (~5 ms each: 200/s instead of thousands).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cosignatures (feed_id TEXT NOT NULL, subfeed_hash TEXT NOT NULL,"
            " size INTEGER NOT NULL, hash TEXT NOT NULL, time INTEGER NOT NULL, line TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS cosignatures_by_subfeed ON cosignatures"
                         "(feed_id, subfeed_hash, size)")

    def close(self) -> None:
        self._db.close()
        self.feeds.close()

    # ------------------------------------------------------------------ queries
    def latest(self, feed_id: str, subfeed_hash: str) -> tuple[int, int] | None:
        """(size, time) of the largest checkpoint of the subfeed cosigned, if any."""
        row = self._db.execute(
            "SELECT size, time FROM cosignatures WHERE feed_id=? AND subfeed_hash=? "
            "ORDER BY size DESC, time DESC LIMIT 1", (feed_id, subfeed_hash)).fetchone()
        return None if row is None else (row[0], row[1])

    def count(self, feed_id: str, subfeed_hash: str) -> int:
        """Messages of the subfeed the witness holds."""
        return self._subfeed(feed_id, subfeed_hash).get_num_local_messages()

    def history(self, feed_id: str, subfeed_hash: str) -> list[Cosignature]:
        """Every cosignature made for the subfeed, oldest first."""
        rows = self._db.execute("SELECT line FROM cosignatures WHERE feed_id=? AND subfeed_hash=? "
                                "ORDER BY rowid", (feed_id, subfeed_hash)).fetchall()
        return [parse_cosignature_line(r[0]) for r in rows]

    def history_rows(self, feed_id: str, subfeed_hash: str, limit: int) -> list[tuple[int, str]]:
        """(size, cosignature line) of the newest ``limit`` cosignatures, oldest first."""
        rows = self._db.execute("SELECT size, line FROM cosignatures WHERE feed_id=? AND subfeed_hash=? "
                                "ORDER BY rowid DESC LIMIT ?", (feed_id, subfeed_hash, limit)).fetchall()
        return [(size, line) for size, line in reversed(rows)]

    def fork_proofs(self, feed_id: str, subfeed_hash: str) -> list[bytes]:
        return self._subfeed(feed_id, subfeed_hash).get_fork_proofs()

    # ------------------------------------------------------------------ requests
    def cosign(self, feed_id: str, subfeed_hash: str, lines: list[bytes], now_s: int, *,
               segments: SegmentReader | None = None, segments_to: int = 0) -> Cosigned:
        """Cosign the checkpoint ending at the last of ``lines`` (a chain of the subfeed that
        starts at or before the witness's count), at ``now_s`` (POSIX seconds); raises
        :class:`WitnessRefusal`.

        With ``segments`` (a reader of the channel's bucket) and ``segments_to``, the messages
        the witness lacks below ``segments_to`` segments are first read from the bucket's
        segments (at most :data:`MAX_BUCKET_SEGMENTS`, up to the first one missing), with the
        same checks as ``lines``: the bucket is not trusted, only spared the requester's
        sending of the same bytes."""
        if not lines:
            raise WitnessRefusal(RefusalReason.INVALID, "no messages: a checkpoint ends at a signed message")
        try:
            checkpoint = checkpoint_from_last(feed_id, subfeed_hash, lines[-1])
        except CheckpointError as exc:
            raise WitnessRefusal(RefusalReason.INVALID, str(exc)) from None
        subfeed = self._subfeed(feed_id, subfeed_hash)
        check_not_forked(checkpoint, subfeed.get_fork_proofs())
        try:
            if segments is not None and segments_to > 0:
                lines = self._import_segments(subfeed, segments, segments_to) + lines
            subfeed.add_signed_messages(lines)
        except kf.MissingMessagesError:
            held = subfeed.get_num_local_messages()
            raise WitnessRefusal(RefusalReason.MISSING, f"the witness holds {held} messages of this "
                                 f"subfeed: send the messages from {held} on", size=held) from None
        except kf.ForkError as exc:
            raise WitnessRefusal(RefusalReason.FORK, f"subfeed forked at message {exc.position}; the "
                                 "witness cosigns neither branch past it", proof=exc.proof) from None
        except kf.VerificationError as exc:
            raise WitnessRefusal(RefusalReason.INVALID, str(exc)) from None
        timestamp = signing_time(checkpoint, self.latest(feed_id, subfeed_hash), now_s)
        cosignature = cosign(self.key, checkpoint, timestamp)
        self._db.execute("INSERT INTO cosignatures VALUES (?,?,?,?,?,?)",
                         (feed_id, subfeed_hash, checkpoint.size, checkpoint.last_hash.hex(),
                          timestamp, cosignature.line()))
        return Cosigned(checkpoint, lines[-1], cosignature)

    @staticmethod
    def _import_segments(subfeed: kf.Subfeed, segments: SegmentReader, segments_to: int) -> list[bytes]:
        """Import the messages the witness lacks from segments ``held // S .. segments_to - 1``
        in batches that each end at a signed message; returns the unsigned lines after the
        last signed one (they go in with the request's lines), or [] when a segment is missing
        or more than :data:`MAX_BUCKET_SEGMENTS` were wanted (the request's lines then start past
        the witness's count: *missing messages*, and the requester asks again from there)."""
        held = subfeed.get_num_local_messages()
        first = held // SEGMENT_SIZE
        last = min(segments_to, first + MAX_BUCKET_SEGMENTS)
        importer = SegmentImporter(subfeed)
        for index in range(first, last):
            data = segments(index)
            if data is None:
                return []
            importer.add_segment(data)
        return importer.pending if last == segments_to else []

    def report_fork(self, proof: bytes) -> kf.ForkProofInfo:
        """A fork proof found by someone else: verified and recorded; from then on the witness
        cosigns no checkpoint of that subfeed past its position. Raises VerificationError."""
        return self.feeds.record_fork_proof(proof)

    def _subfeed(self, feed_id: str, subfeed_hash: str) -> kf.Subfeed:
        return self.feeds.load_feed(feed_id).load_subfeed("~" + subfeed_hash)

