"""Witnessed checkpoints and forks on a node's channels (spec/witness.md §4-6).

* **Providing.** After a provider has brought a bucket's head up to date (count ``N``), it asks
  the channel's hub, the default witness, to cosign the checkpoint at ``N``, sending the wire
  lines the witness lacks (first only message ``N - 1``; a refusal says how many the witness
  holds, and the next request starts there; long ranges go in pieces, each ending at a signed
  message). The cosignature goes into the bucket's ``.../checkpoint`` object (merged with other
  witnesses' cosignatures of the same checkpoint) and out on pub-sub as ``subfeedCheckpoint``.
* **Following.** A ``subfeedCheckpoint`` heard is verified and compared with the local copy: if
  the local messages determine a different hash for its last position (or the one before), the
  owner showed two histories: a fork, proven with the local chain and the checkpoint's last
  message.
* **Node witness** (opt-in: ``kachery node witness on``). A node whose owner opted in cosigns
  the checkpoints it hears once its own copy holds them (following the subfeed if needed), with
  its node key and its own witness state (``<storage>/witness/``), and publishes the
  cosignature (``checkpointCosignature``); providers verify it against their copy, merge it into
  the bucket's checkpoint object and publish that again.
* **Forks.** A fork found here (an import, a witness's refusal, a checkpoint) or heard from
  another member (``forkProof``, verified) is recorded in the store, after which the store
  accepts no message of that subfeed at or past the fork; it is reported to the hub's witness
  (which then cosigns neither branch past it), uploaded to the bucket's ``.../fork`` where this
  node may, and published on every feed band this node may publish on. A proof heard for a fork
  already known is not passed on again, so notices do not echo around the channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

import kachery_feeds as kf
from kachery_feeds.checkpoints import (
    CheckpointError,
    WitnessedCheckpoint,
    checkpoint_from_last,
    parse_cosignature_line,
    parse_witnessed_checkpoint,
    witnessed,
)
from kachery_feeds.forks import build_fork_proof

from ..errors import HubRequestError
from ..protocol.bucket_layout import SEGMENT_SIZE, subfeed_checkpoint_path, subfeed_fork_path
from ..protocol.feed_messages import PROVIDE_BAND, REQUEST_BAND, SubfeedOnChannel
from ..protocol.witness import MAX_BUCKET_SEGMENTS, WitnessRefusal
from ..protocol.witness_messages import CheckpointCosignature, ForkProof, SubfeedCheckpoint, inline
from ..storage.witness_state import Witness
from .channel_link import BucketObjectMissing, ChannelLink
from .feed_follower_driver import trusted_witness

log = logging.getLogger("kachery.feeds")

MAX_WITNESS_REQUEST_BYTES = 2_000_000  # the hub's /api/witness takes 4 MiB; JSON may escape lines
MAX_WITNESS_ROUNDS = 4  # refusals answered (missing messages) before giving up until next time
#: A range of at least this many messages in the bucket's segments is read by the hub from its
#: bucket rather than sent (spec/witness.md §4.1): two segments, about 1 MB of JSON not sent.
BUCKET_WITNESS_MESSAGES = 2 * SEGMENT_SIZE
BUCKET_READ_ATTEMPTS = 3  # reading the checkpoint object, which other providers rewrite
NODE_WITNESS_CATCH_UP_SECONDS = 30.0  # a node witness waits this long for its copy to catch up
#: A backlog of more messages than this, of a subfeed whose owner requires no witnesses, is sent
#: to the witness only after BULK_WITNESS_DELAY (spec/witness.md §4.2): readers catching up the
#: same backlog from the bucket then get the hub (and this node) first.
BULK_WITNESS_MESSAGES = 10_000
#: The delay: as long as readers take to import the backlog at BULK_WITNESS_READER_RATE (a
#: loaded machine's rate; a quiet one imports 3-5x faster), within these bounds (seconds).
BULK_WITNESS_READER_RATE = 20_000.0
BULK_WITNESS_DELAY = (2.0, 60.0)

Spawn = Callable[..., None]  # start an async function as a task: spawn(fn, *args)


class WitnessDriver:
    """Checkpoints cosigned by the hub and forks made channel knowledge, for one node."""

    def __init__(self, store: kf.Store,
                 on_verified_checkpoint: Callable[[ChannelLink, WitnessedCheckpoint], None] | None = None,
                 *, node_witness: Witness | None = None,
                 follow: Callable[[ChannelLink, str, str], None] | None = None,
                 spawn: Spawn | None = None,
                 requirement: Callable[[str, str], int] | None = None) -> None:
        self.store = store
        #: witnesses the owner requires for a subfeed, per this node's copy of the feed's policy;
        #: without it every backlog is witnessed at once (never deferred)
        self._requirement = requirement
        self.node_witness = node_witness  # this node cosigns checkpoints it hears (opt-in)
        self._follow = follow
        self._spawn = spawn
        self._witness_counts: dict[tuple[str, str, str], int] = {}  # (channel, feed, sub) -> held
        self._wanted: dict[tuple[str, str, str], int] = {}  # the count to get witnessed next
        self._asked: dict[tuple[str, str, str], int] = {}  # the last count asked for
        self._running: set[tuple[str, str, str]] = set()
        self._locks: dict[tuple[str, str, str], anyio.Lock] = {}
        self._deferred_until: dict[tuple[str, str, str], float] = {}  # bulk backlogs waiting
        #: newest witnessed checkpoint seen or made, per subfeed (verified)
        self.latest: dict[tuple[str, str], WitnessedCheckpoint] = {}
        self._on_verified_checkpoint = on_verified_checkpoint

    # ------------------------------------------------------------------ provider side
    async def on_head_uploaded(self, link: ChannelLink, where: SubfeedOnChannel, count: int) -> None:
        """The bucket's head of ``where`` now says ``count``: get that checkpoint witnessed,
        store the cosignature beside the head and announce it. Never raises (logs)."""
        await self.witness(link, where, count)

    async def witness(self, link: ChannelLink, where: SubfeedOnChannel, count: int) -> None:
        """Get the checkpoint at ``count`` (or a later one) witnessed, written to the bucket and
        announced. Coalesced: while one request for the subfeed on this channel is out, later
        calls only raise the count the next one asks for, so a fast writer costs the witness
        one request per round trip, not one per message. Never raises (logs)."""
        if count == 0:
            return
        key = (where.channel, where.feed_id, where.subfeed_hash)
        self._wanted[key] = max(self._wanted.get(key, 0), count)
        if key in self._running:
            return
        self._running.add(key)
        try:
            while self._wanted.get(key, 0) > self._asked.get(key, 0):
                target, before = self._wanted[key], self._asked.get(key, 0)
                self._asked[key] = target
                try:
                    sent = await self._witness(link, where, target)
                except Exception as exc:  # the hub unreachable, the link down: the next call retries
                    log.info("witnessing %s at %d on %s failed: %s", where.uri, target, where.channel, exc)
                    self._asked[key] = before  # so that a later call for the same count asks again
                    break
                if not sent:  # deferred: the task that waits out the delay asks again
                    self._asked[key] = before
                    break
        finally:
            self._running.discard(key)

    async def _witness(self, link: ChannelLink, where: SubfeedOnChannel, count: int) -> bool:
        """One request (in pieces) for the checkpoint at ``count``; False if it was deferred."""
        subfeed = self._subfeed(where.feed_id, where.subfeed_hash)
        key = (where.channel, where.feed_id, where.subfeed_hash)
        deferred = self._deferred_until.get(key)
        if deferred is not None:
            if anyio.current_time() < deferred:
                return False  # a bulk backlog's delay is running; its task asks when it is over
            del self._deferred_until[key]  # over: this request goes, whatever its size
        start = self._witness_counts.get(key, count - 1)
        answer = None
        rounds, bucket_tried_from, bucket_read = 0, -1, False
        while rounds < MAX_WITNESS_ROUNDS:
            if deferred is None and self._defer_bulk(link, where, count - start):
                return False
            # A long range the bucket holds in segments: the hub reads them from its bucket
            # (spec/witness.md §4.1, segments_to), once from each start; a hub that did not
            # (an older one, another bucket, a segment missing) leaves its count where it was,
            # and the same start then goes as lines.
            segments_to = count // SEGMENT_SIZE
            if segments_to * SEGMENT_SIZE - start < BUCKET_WITNESS_MESSAGES or bucket_tried_from == start:
                segments_to = 0
            else:
                bucket_tried_from = start
            try:
                answer = await self._send_from(link, where, subfeed, start, count, segments_to)
                bucket_read = bucket_read or bool(segments_to)
                break
            except HubRequestError as exc:
                details = exc.details
                reason = details.get("reason")
                if reason == "missing_messages" and isinstance(details.get("size"), int):
                    if segments_to and details["size"] > start:
                        bucket_read = True
                    else:
                        rounds += 1  # not progress through the bucket: a round of its own
                    start = min(details["size"], count - 1)
                    continue
                if reason == "invalid" and segments_to:
                    continue  # the bucket's copy did not verify: the same start as lines
                rounds += 1
                if reason == "stale_checkpoint":
                    log.info("the witness holds a larger checkpoint of %s than %d", where.uri, count)
                    return True
                if reason in ("fork", "forked") and isinstance(details.get("proof"), str):
                    log.error("the witness refused %s at %d: %s", where.uri, count, exc.message)
                    await self.on_fork_found(link, details["proof"].encode())
                    return True
                raise
        if answer is None:
            return True
        if bucket_read:
            log.info("the witness of %s on %s read the messages it lacked below %d from its bucket",
                     where.uri, where.channel, count)
        self._witness_counts[key] = count
        # Two Ed25519 verifications and the read: in a worker thread, off the event loop that
        # pushes live messages (libsodium and sqlite3 release the GIL).
        mine = await anyio.to_thread.run_sync(_own_witnessed, subfeed, where, count, answer["cosignature"])
        if not mine.cosignatures:
            log.warning("the hub's cosignature of %s at %d does not verify", where.uri, count)
            return True
        obj, _written = await self._merge_into_bucket(link, where, mine)
        self._remember(obj)
        await link.publish(PROVIDE_BAND, SubfeedCheckpoint(
            where.feed_id, where.subfeed_hash, count, None).to_body(), attachment=inline(obj.encode()))
        return True

    def _defer_bulk(self, link: ChannelLink, where: SubfeedOnChannel, backlog: int) -> bool:
        """Whether to send a backlog of ``backlog`` messages later (spec/witness.md §4.2): only
        when it is long, this node owns the feed (its copy of the policy is the one it wrote)
        and the policy requires no witnesses for the subfeed, so that no follower waits for
        the checkpoint. Readers catching up the same backlog from the bucket then do not
        compete with the hub's witness import of it (a second full verified import) and this
        node's sending of it. Starts the task that asks again once the delay is over."""
        if backlog <= BULK_WITNESS_MESSAGES or self._requirement is None or self._spawn is None:
            return False
        if not self.store.has_private_key(where.feed_id) or \
                self._requirement(where.feed_id, where.subfeed_hash) != 0:
            return False
        low, high = BULK_WITNESS_DELAY
        delay = min(high, max(low, backlog / BULK_WITNESS_READER_RATE))
        key = (where.channel, where.feed_id, where.subfeed_hash)
        self._deferred_until[key] = anyio.current_time() + delay
        log.info("witnessing %d messages of %s on %s in %.1f s (no witnesses required; readers "
                 "catch up first)", backlog, where.uri, where.channel, delay)
        self._spawn(self._witness_later, link, where, delay)
        return True

    async def _witness_later(self, link: ChannelLink, where: SubfeedOnChannel, delay: float) -> None:
        await anyio.sleep(delay)
        key = (where.channel, where.feed_id, where.subfeed_hash)
        await self.witness(link, where, self._wanted.get(key, 0))

    async def _send_from(self, link: ChannelLink, where: SubfeedOnChannel, subfeed: kf.Subfeed,
                         start: int, count: int, segments_to: int = 0) -> dict:
        """Send messages ``[start, count)`` in pieces that each end at a signed message and stay
        under the request limit; the witness's answer to the last piece. With ``segments_to``,
        the first piece asks the hub to read messages ``[start, segments_to * S)`` from the
        bucket's segments itself, and the lines start after them (with the last message at
        least: it makes the checkpoint)."""
        answer: dict = {}
        extra: dict = {}
        if segments_to:
            extra = {"segments_to": segments_to}
            if segments_to - start // SEGMENT_SIZE > MAX_BUCKET_SEGMENTS:
                start = count - 1  # the hub stops short of segments_to: lines would not join up
            else:
                start = max(start, min(segments_to * SEGMENT_SIZE, count - 1))
        position, piece, size = start, [], 0
        while position < count:
            lines = subfeed.get_signed_messages(position, min(position + 1000, count))
            if not lines:
                break
            for i, line in enumerate(lines):
                piece.append(line)
                size += len(line) * 2 + 4
                signed = not line.endswith(b"\t")
                if signed and size >= MAX_WITNESS_REQUEST_BYTES and position + i + 1 < count:
                    answer = await self._request(link, where, piece, **extra)
                    piece, size, extra = [], 0, {}
            position += len(lines)
        if piece:
            answer = await self._request(link, where, piece, **extra)
        return answer

    @staticmethod
    async def _request(link: ChannelLink, where: SubfeedOnChannel, lines: list[bytes], **extra) -> dict:
        return await link.witness_request("cosign_checkpoint", feed_id=where.feed_id,
                                          subfeed_hash=where.subfeed_hash,
                                          lines=[x.decode("utf-8") for x in lines], **extra)

    async def _merge_into_bucket(self, link: ChannelLink, where: SubfeedOnChannel,
                                 mine: WitnessedCheckpoint) -> tuple[WitnessedCheckpoint, bool]:
        """Write ``mine`` to the bucket's ``.../checkpoint`` unless it holds a larger one; merge
        cosignatures of the same checkpoint (other witnesses'). Returns the newest object for
        ``mine``'s checkpoint and whether it was written."""
        path = subfeed_checkpoint_path(where.channel, where.feed_id, where.subfeed_hash)
        there = None
        for attempt in range(BUCKET_READ_ATTEMPTS):
            try:
                there = parse_witnessed_checkpoint(await link.bucket_get(path))
            except (BucketObjectMissing, CheckpointError):
                break
            except Exception:  # e.g. a read racing another provider's write of the object: again
                if attempt == BUCKET_READ_ATTEMPTS - 1:
                    raise
                await anyio.sleep(0.05)
            else:
                break
        if there is not None and there.checkpoint.size > mine.checkpoint.size:
            return mine, False  # another provider is ahead: leave its object be
        obj = mine.merged(there) if there is not None and there.checkpoint == mine.checkpoint else mine
        if obj == there:
            return obj, False  # nothing new to write
        await link.upload(path, obj.encode())
        return obj, True

    # ------------------------------------------------------------------ follower side
    async def on_checkpoint(self, link: ChannelLink, sender: str, message: SubfeedCheckpoint) -> None:
        """A witnessed checkpoint heard on pub-sub: verify it, detect a split view."""
        data = message.witnessed
        if data is None:
            try:
                data = await link.bucket_get(subfeed_checkpoint_path(
                    link.channel, message.feed_id, message.subfeed_hash))
            except Exception as exc:
                log.info("could not read the checkpoint of %s: %s", message.feed_id[:12], exc)
                return
        try:
            # Verifying its signatures and the local copy's (a fork proof's check): in a worker
            # thread, off the event loop that imports live messages (libsodium releases the GIL).
            obj, proof = await anyio.to_thread.run_sync(self._check_checkpoint, data, message)
        except CheckpointError as exc:
            log.warning("ignoring a checkpoint from %s: %s", sender[:12], exc)
            return
        if obj is None:
            log.warning("ignoring a checkpoint from %s: not of the subfeed it names", sender[:12])
            return
        cp = obj.checkpoint
        if proof is not None:
            log.error("FORK in feed://%s/~%s: a witnessed checkpoint from %s conflicts with this "
                      "node's copy", cp.feed_id, cp.subfeed_hash, sender[:12])
            await self.on_fork_found(link, proof)
            return
        self._remember(obj)
        if not all(trusted_witness(link, w) for w in obj.witnesses()):
            # A node granted request-feeds a moment ago (a witness that just joined) is not in
            # the membership read before: re-read it (rate-limited), or a gated follower would
            # count that witness for nothing until it next reads the bucket's checkpoint.
            await link.refresh_roles()
        if self._on_verified_checkpoint is not None:
            self._on_verified_checkpoint(link, obj)
        if self.node_witness is not None and self._spawn is not None:
            latest = self.node_witness.latest(cp.feed_id, cp.subfeed_hash)
            if latest is None or latest[0] < cp.size:
                self._spawn(self._cosign_as_node, link, obj)

    def _check_checkpoint(self, data: bytes, message: SubfeedCheckpoint
                          ) -> tuple[WitnessedCheckpoint | None, bytes | None]:
        """(the verified object, a fork proof against the local copy or None); (None, None) if
        it is not of the subfeed ``message`` names. Raises :class:`CheckpointError`."""
        obj = parse_witnessed_checkpoint(data)
        cp = obj.checkpoint
        if (cp.feed_id, cp.subfeed_hash) != (message.feed_id, message.subfeed_hash):
            return None, None
        return obj, self.conflict_with_local(obj)

    # ------------------------------------------------------------------ node witness
    async def _cosign_as_node(self, link: ChannelLink, obj: WitnessedCheckpoint) -> None:
        """Cosign ``obj``'s checkpoint as this node's witness once the local copy holds it."""
        assert self.node_witness is not None
        cp = obj.checkpoint
        subfeed = self._subfeed(cp.feed_id, cp.subfeed_hash)
        if subfeed.get_num_local_messages() < cp.size:
            if self._follow is not None:
                self._follow(link, cp.feed_id, cp.subfeed_hash)
            with anyio.move_on_after(NODE_WITNESS_CATCH_UP_SECONDS):
                while subfeed.get_num_local_messages() < cp.size:
                    await anyio.sleep(0.05)
            if subfeed.get_num_local_messages() < cp.size:
                log.info("not witnessing %s at %d: this node's copy did not catch up", subfeed.uri, cp.size)
                return
        proof = self.conflict_with_local(obj)
        if proof is not None:
            await self.on_fork_found(link, proof)
            return
        witness = self.node_witness
        start = min(witness.count(cp.feed_id, cp.subfeed_hash), cp.size - 1)
        lines = subfeed.get_signed_messages(start, cp.size)
        try:
            done = await anyio.to_thread.run_sync(
                witness.cosign, cp.feed_id, cp.subfeed_hash, lines, int(time.time()))
        except WitnessRefusal as refusal:
            if refusal.proof is not None:
                await self.on_fork_found(link, refusal.proof)
            else:
                log.info("this node's witness did not cosign %s at %d: %s", subfeed.uri, cp.size, refusal)
            return
        message = CheckpointCosignature(cp.feed_id, cp.subfeed_hash, done.checkpoint.size,
                                        done.cosignature.line())
        try:
            await link.publish(REQUEST_BAND, message.to_body())
        except Exception as exc:
            log.info("publishing this node's cosignature of %s failed: %s", subfeed.uri, exc)

    async def on_cosignature(self, link: ChannelLink, sender: str, message: CheckpointCosignature) -> None:
        """A node witness's cosignature: a provider holding the checkpoint's messages verifies
        it against its copy and merges it into the bucket's checkpoint object."""
        if "provide-feeds" not in link.roles:
            return
        try:
            cosignature = parse_cosignature_line(message.cosignature)
        except CheckpointError as exc:
            log.info("ignoring a cosignature from %s: %s", sender[:12], exc)
            return
        if cosignature.witness != sender:
            log.info("ignoring a cosignature from %s: signed by another key", sender[:12])
            return
        subfeed = self._subfeed(message.feed_id, message.subfeed_hash)
        if subfeed.get_num_local_messages() < message.size:
            return  # cannot check it; a provider that holds the messages will
        last = subfeed.get_signed_messages(message.size - 1, message.size)[0]
        try:
            checkpoint = checkpoint_from_last(message.feed_id, message.subfeed_hash, last)
        except CheckpointError:
            return  # our copy holds message size - 1 unsigned: another provider will do
        mine = witnessed(checkpoint, last, [cosignature])
        if not mine.cosignatures:
            log.warning("a cosignature from %s does not verify against this node's copy", sender[:12])
            return
        where = SubfeedOnChannel(link.channel, message.feed_id, message.subfeed_hash)
        lock = self._locks.setdefault((where.channel, where.feed_id, where.subfeed_hash), anyio.Lock())
        async with lock:
            try:
                obj, written = await self._merge_into_bucket(link, where, mine)
                if written:
                    self._remember(obj)
                    await link.publish(PROVIDE_BAND, SubfeedCheckpoint(
                        where.feed_id, where.subfeed_hash, checkpoint.size, None).to_body(),
                        attachment=inline(obj.encode()))
            except Exception as exc:
                log.info("merging a cosignature of %s failed: %s", where.uri, exc)

    def conflict_with_local(self, obj: WitnessedCheckpoint) -> bytes | None:
        """A fork proof if the local copy determines another hash than ``obj`` for its last
        position or the one before; None if consistent (or too short to tell)."""
        cp = obj.checkpoint
        subfeed = self._subfeed(cp.feed_id, cp.subfeed_hash)
        local_count = subfeed.get_num_local_messages()
        first = max(0, cp.size - 2)
        if local_count <= first:
            return None
        local = subfeed.get_signed_messages(first, min(local_count, cp.size))
        proof = build_fork_proof(cp.feed_id, cp.subfeed_hash, cp.size - 1, local, [obj.last])
        try:
            kf.verify_fork_proof(proof)
        except kf.VerificationError:
            return None
        return proof

    # ------------------------------------------------------------------ forks
    async def on_fork_found(self, link: ChannelLink, proof: bytes) -> None:
        """A fork found by this node: record, tell the witness, store in the bucket, publish
        (once: a proof already recorded, such as the one an import past a known fork raises
        with, is not spread again)."""
        try:
            info = kf.verify_fork_proof(proof)
        except kf.VerificationError as exc:
            log.warning("not publishing an invalid fork proof: %s", exc)
            return
        if proof in self._subfeed(info.feed_id, info.subfeed_hash).get_fork_proofs():
            return
        try:
            info = self.store.record_fork_proof(proof)
        except kf.VerificationError as exc:
            log.warning("not publishing an invalid fork proof: %s", exc)
            return
        await self._spread(link, info, proof, bands=(REQUEST_BAND, PROVIDE_BAND))

    async def on_fork_proof(self, link: ChannelLink, sender: str, message: ForkProof) -> None:
        """A fork notice heard: verify it; if it is news, record it and pass it on."""
        proof = message.proof
        if proof is None:
            try:
                proof = await link.bucket_get(subfeed_fork_path(link.channel, message.feed_id,
                                                                message.subfeed_hash))
            except Exception as exc:
                log.info("could not read the fork proof of %s: %s", message.feed_id[:12], exc)
                return
        try:
            info = kf.verify_fork_proof(proof)
        except kf.VerificationError as exc:
            log.warning("ignoring a fork notice from %s: %s", sender[:12], exc)
            return
        if (info.feed_id, info.subfeed_hash) != (message.feed_id, message.subfeed_hash):
            log.warning("ignoring a fork notice from %s: not of the subfeed it names", sender[:12])
            return
        known = self._subfeed(info.feed_id, info.subfeed_hash).get_fork_proofs()
        if any(kf.verify_fork_proof(p).position <= info.position for p in known):
            return  # not news: it was spread when it was
        self.store.record_fork_proof(proof)
        log.error("FORK in feed://%s/~%s at message %d, proven by %s: no message at or past it is "
                  "accepted", info.feed_id, info.subfeed_hash, info.position, sender[:12])
        await self._spread(link, info, proof, bands=(PROVIDE_BAND,))

    async def _spread(self, link: ChannelLink, info: kf.ForkProofInfo, proof: bytes,
                      bands: tuple[str, ...]) -> None:
        """Tell the hub's witness, put the proof in the bucket, publish it (where allowed)."""
        try:
            await link.witness_request("report_fork", proof=proof.decode("utf-8"))
        except Exception as exc:
            log.info("reporting the fork of %s to the hub failed: %s", info.feed_id[:12], exc)
        if "provide-feeds" in link.roles:
            try:
                await link.upload(subfeed_fork_path(link.channel, info.feed_id, info.subfeed_hash), proof)
            except Exception as exc:
                log.info("uploading the fork proof of %s failed: %s", info.feed_id[:12], exc)
        message = ForkProof(info.feed_id, info.subfeed_hash, info.position, None)
        for band in bands:
            if band in link.roles:
                try:
                    await link.publish(band, message.to_body(), attachment=inline(proof))
                except Exception as exc:
                    log.info("publishing the fork proof on %s failed: %s", band, exc)

    # ------------------------------------------------------------------ helpers
    def _remember(self, obj: WitnessedCheckpoint) -> None:
        key = (obj.checkpoint.feed_id, obj.checkpoint.subfeed_hash)
        had = self.latest.get(key)
        if had is None or had.checkpoint.size < obj.checkpoint.size:
            self.latest[key] = obj
        elif had.checkpoint == obj.checkpoint:
            self.latest[key] = had.merged(obj)

    def _subfeed(self, feed_id: str, subfeed_hash: str) -> kf.Subfeed:
        return self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)


def _own_witnessed(subfeed: kf.Subfeed, where: SubfeedOnChannel, count: int,
                   cosignature_line: str) -> WitnessedCheckpoint:
    """The checkpoint at ``count`` of the local copy with the witness's cosignature, kept only
    if it verifies (raises :class:`CheckpointError` as its parts do)."""
    last = subfeed.get_signed_messages(count - 1, count)[0]
    checkpoint = checkpoint_from_last(where.feed_id, where.subfeed_hash, last)
    return witnessed(checkpoint, last, [parse_cosignature_line(cosignature_line)])
