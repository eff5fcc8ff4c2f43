"""The requester side of the file exchange, without I/O: which bucket to try, when to ask, when
to give up (spec/node-protocol.md §Files, "Requester" and "Large files").

Theory of operation
-------------------
A :class:`FileRequester` holds the conversation of one node obtaining one *object* (a whole file,
a manifest, or one chunk of a large file) over the channels it joined. Its driver (the daemon)
calls its methods with an event and the current time (monotonic seconds) and carries out the
actions it returns (:mod:`.file_messages`); it calls :meth:`FileRequester.on_timer` when
:meth:`~FileRequester.next_deadline` passes. The core never sleeps, reads a clock, or touches a
socket, so tests replay whole conversations with a fake clock. There is one core per object
being fetched, not one for the whole exchange: each has its own deadlines and channel order,
and a large file's chunks are fetched by several at once; the driver routes each status to the
cores waiting for its object.

The conversation goes *buckets first*: HEAD and download on each channel in turn; *then
requests*, channel by channel, up to ``max_requests`` rounds each: publish ``requestFile``,
follow the providers' statuses, download on ``finished``. It ends with :class:`Obtained` or
:class:`GiveUp` (every channel's reason, for the not-found error).

Rules
-----
1. Everything that decides what the requester does next lives here; the driver only performs.
2. Every wait has a deadline (:class:`~.file_timeouts.FileTimeouts`): an answer, an uploader's
   silence, a round's length, a HEAD, a download without progress.
3. Results of a transfer the core has moved on from (a stale ``transfer`` number) are ignored;
   an event the current state cannot take is the driver's bug (:class:`FileCoreMisuse`).
4. Statuses are matched by (channel, sha1) only, so concurrent requesters share one upload; a
   ``finished`` that answers a request made before a bad object was seen is ignored.

The rules of a large file's fetch (which chunk next, over which channel first) are in
:mod:`.file_chunks`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .bucket_layout import file_path
from .file_messages import (
    CancelTransfer,
    ChunkRef,
    DownloadObject,
    DownloadOutcome,
    Failed,
    FileCoreMisuse,
    FileRequest,
    GiveUp,
    HeadObject,
    Ignored,
    MalformedFileMessage,
    Obtained,
    Publish,
    Rejected,
    RequesterAction,
    Status,
    UploadStatus,
    Verified,
)
from .file_timeouts import FileTimeouts


def short(node_id: str) -> str:
    """A node ID as messages show it: its first 12 characters."""
    return node_id[:12] + "…"


@dataclass(frozen=True)
class Target:
    """One object to obtain. ``label`` names it in messages (``sha1://…``, ``chunk 2/3 of …``)."""

    sha1: str
    label: str
    size: int | None = None
    chunk_of: ChunkRef | None = None


@dataclass(frozen=True)
class RequesterChannel:
    """A channel as the requester sees it: its name, and whether this node may publish
    ``requestFile`` there (holds request-files)."""

    name: str
    may_request: bool


def admit_status(body: dict, *, sender_may_provide: bool) -> UploadStatus | Ignored:
    """The ``uploadStatus`` in ``body``, if a requester should listen to it: well-formed, and
    from a member holding provide-files in the channel's membership."""
    try:
        status = UploadStatus.parse(body)
    except MalformedFileMessage as exc:
        return Ignored(f"a malformed uploadStatus: {exc}")
    if not sender_may_provide:
        return Ignored("an uploadStatus from a node that is not a member with provide-files")
    return status


class RequesterState(enum.Enum):
    IDLE = "idle"
    HEADING = "heading"  # a HEAD of the current channel's bucket object is out
    DOWNLOADING = "downloading"  # from a bucket (buckets phase), or after 'finished' (requests)
    AWAITING = "awaiting"  # a requestFile is out: following providers' statuses
    OBTAINED = "obtained"
    GAVE_UP = "gave up"


_S = RequesterState
#: The driver's reports each state takes; any other is a driver bug. Statuses, timers and
#: ``publish_failed`` are taken in every state (they arrive whenever they arrive) and are ignored
#: where they mean nothing; so are the reports of a transfer the core has moved on from.
ACCEPTS: dict[RequesterState, frozenset[str]] = {
    _S.IDLE: frozenset({"start"}),
    _S.HEADING: frozenset({"head_result", "head_failed"}),
    _S.DOWNLOADING: frozenset({"download_progress", "download_result"}),
    _S.AWAITING: frozenset(),
    _S.OBTAINED: frozenset(),
    _S.GAVE_UP: frozenset(),
}


class _Phase(enum.Enum):
    BUCKETS = "buckets"
    REQUESTS = "requests"


class FileRequester:
    """One node obtaining one object over its channels (see the module docstring).

    Example (the driver's view)::

        core = FileRequester(Target(sha1, f"sha1://{sha1}"),
                             [RequesterChannel("lab", may_request=True)], FileTimeouts(), new_id)
        actions = core.start(now)      # [HeadObject("lab", "lab/sha1/…", 1)]
        actions = core.head_result(now, 1, None)     # absent: [Publish("lab", FileRequest(…))]
        ...                            # until an Obtained or GiveUp action
    """

    def __init__(self, target: Target, channels: Sequence[RequesterChannel],
                 timeouts: FileTimeouts, new_request_id: Callable[[], str]) -> None:
        self.target = target
        self.channels = list(channels)
        self.timeouts = timeouts
        self._new_id = new_request_id
        self.state = RequesterState.IDLE
        self._phase = _Phase.BUCKETS
        self._index = 0  # the current channel
        self._reasons: list[tuple[str, str]] = []
        self._bad_on: set[str] = set()  # channels whose bucket object was found bad
        self._transfer = 0  # number of the HEAD or download in flight
        self._transfer_deadline = 0.0  # HEAD timeout, or download progress deadline
        # The requests phase, on the current channel:
        self._attempt = 0
        self._history: list[str] = []
        self._sent: list[str] = []  # IDs of our requests, in order
        self._stale: set[str] = set()  # IDs whose 'finished' would point at a bad object
        self._bad_object = False
        self._finisher = ""  # who announced the upload being downloaded
        # The round being waited on:
        self._answered = False
        self._uploaders: dict[str, None] = {}  # an ordered set
        self._last_heard = 0.0
        self._round_ends = 0.0

    # -- queries -------------------------------------------------------------------------------------
    @property
    def channel(self) -> str:
        """The channel the conversation is on now."""
        return self.channels[self._index].name

    def path(self) -> str:
        return file_path(self.channel, self.target.sha1)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must be called next (None: no deadline pending)."""
        t = self.timeouts
        if self.state in (_S.HEADING, _S.DOWNLOADING):
            return self._transfer_deadline
        if self.state is _S.AWAITING:
            silence = t.stall if self._answered else t.answer
            return min(self._last_heard + silence, self._round_ends)
        return None

    # -- events -----------------------------------------------------------------------------------------
    def start(self, now: float) -> list[RequesterAction]:
        self._expect("start")
        if not self.channels:
            return self._give_up()
        return self._head(now)

    def head_result(self, now: float, transfer: int, size: int | None) -> list[RequesterAction]:
        """The HEAD ``transfer`` answered: the object's size, or None if there is none."""
        if self._stale_transfer(transfer, "head_result"):
            return []
        if size is None:
            return self._next_bucket(now)
        if self.target.size is not None and size != self.target.size:
            self._bad_on.add(self.channel)
            self._reasons.append((self.channel, f"the bucket object {self.path()} has {size} bytes, "
                                                f"not {self.target.size} (rejected, nothing stored)"))
            return self._next_bucket(now)
        return self._download(now)

    def head_failed(self, now: float, transfer: int, why: str) -> list[RequesterAction]:
        """The HEAD ``transfer`` raised (``why``: ``"Type: message"``)."""
        if self._stale_transfer(transfer, "head_failed"):
            return []
        return self._head_failed(now, why)

    def download_progress(self, now: float, transfer: int, done: int) -> list[RequesterAction]:
        """Bytes arrived: the download is alive for ``stall`` more seconds."""
        if not self._stale_transfer(transfer, "download_progress"):
            self._transfer_deadline = now + self.timeouts.stall
        return []

    def download_result(self, now: float, transfer: int,
                        outcome: DownloadOutcome) -> list[RequesterAction]:
        """The download ``transfer`` ended: verified and kept, missing, rejected or broken off."""
        if self._stale_transfer(transfer, "download_result"):
            return []
        return self._download_ended(now, outcome)

    def publish_failed(self, now: float, request_id: str, why: str) -> list[RequesterAction]:
        """The ``requestFile`` ``request_id`` could not be published: give up on this channel
        (unless the conversation moved on meanwhile)."""
        if not self._sent or request_id != self._sent[-1] or self.state is not _S.AWAITING:
            return []
        self._history.append(f"could not publish the request ({why})")
        return self._channel_done(now)

    def status_received(self, now: float, channel: str, sender: str,
                        status: UploadStatus) -> list[RequesterAction]:
        """A provider's status about some object on ``channel`` (ignored unless it is about this
        object, on the channel asked now, while a request is out)."""
        if (self.state is not _S.AWAITING or channel != self.channel
                or status.sha1 != self.target.sha1):
            return []
        if status.status is Status.FINISHED:
            if status.request_id in self._stale:
                return []
            self._finisher = f"provider {short(sender)}"
            return self._download(now)
        self._answered = True
        self._last_heard = now
        if status.status is Status.FAILED:
            self._uploaders.pop(sender, None)
            if not self._uploaders:
                self._history.append(f"provider {short(sender)} failed: {status.error or '?'}")
                return self._next_round(now)
        else:
            self._uploaders[sender] = None
        return []

    def on_timer(self, now: float) -> list[RequesterAction]:
        """Time passed; acts if :meth:`next_deadline` is due (else does nothing)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        t = self.timeouts
        if self.state in (_S.HEADING, _S.DOWNLOADING):
            cancel = CancelTransfer(self._transfer)
            self._transfer += 1  # whatever the cancelled transfer still reports is stale
            if self.state is _S.HEADING:
                why = f"TimeoutError: no answer within {t.bucket_head:g} s"
                return [cancel, *self._head_failed(now, why)]
            return [cancel, *self._download_ended(now, Failed(f"no progress for {t.stall:g} s"))]
        # AWAITING
        if not self._answered:
            self._history.append(f"no provider answered within {t.answer:g} s"
                                 + (" after a re-request" if self._attempt > 1 else ""))
            return self._channel_done(now)
        who = ", ".join(short(s) for s in self._uploaders) or "the provider"
        self._history.append(f"the upload by {who} stalled (silent for {t.stall:g} s)")
        return self._next_round(now)

    # -- transitions ----------------------------------------------------------------------------------
    def _expect(self, event: str) -> None:
        if event not in ACCEPTS[self.state]:
            raise FileCoreMisuse(f"FileRequester for {self.target.label}: {event} in state "
                                 f"{self.state.value!r}")

    def _stale_transfer(self, transfer: int, event: str) -> bool:
        if transfer != self._transfer:
            return True  # a transfer cancelled or superseded: its news no longer matters
        self._expect(event)
        return False

    def _head_failed(self, now: float, why: str) -> list[RequesterAction]:
        self._reasons.append((self.channel, f"its bucket could not be reached ({why})"))
        return self._next_bucket(now)

    def _download_ended(self, now: float, outcome: DownloadOutcome) -> list[RequesterAction]:
        if isinstance(outcome, Verified):
            self.state = _S.OBTAINED
            return [Obtained(self.channel)]
        path = self.path()
        if isinstance(outcome, Rejected):
            why = f"the bucket object {path} is corrupted: {outcome.why} (rejected, nothing stored)"
        elif isinstance(outcome, Failed):
            why = f"the download of {path} failed ({outcome.why})"
        elif self._phase is _Phase.REQUESTS:
            why = f"{self._finisher} reported the upload finished, but {path} is missing"
        else:
            why = ""  # simply not in this bucket
        if self._phase is _Phase.BUCKETS:
            if isinstance(outcome, Rejected):
                self._bad_on.add(self.channel)
            if why:
                self._reasons.append((self.channel, why))
            return self._next_bucket(now)
        if not isinstance(outcome, Failed):
            # Rejected, or missing although a provider said 'finished' (the hub evicted it, or
            # the provider remembered an upload the bucket no longer holds): ask providers to
            # upload it again without looking, and ignore the 'finished' answers to the
            # requests so far: they are about the bad (or gone) object.
            self._bad_object = True
            self._stale.update(self._sent)
        self._history.append(why)
        return self._next_round(now)

    def _head(self, now: float) -> list[RequesterAction]:
        self.state = _S.HEADING
        self._transfer += 1
        self._transfer_deadline = now + self.timeouts.bucket_head
        return [HeadObject(self.channel, self.path(), self._transfer)]

    def _download(self, now: float) -> list[RequesterAction]:
        self.state = _S.DOWNLOADING
        self._transfer += 1
        self._transfer_deadline = now + self.timeouts.stall
        return [DownloadObject(self.channel, self.path(), self._transfer)]

    def _next_bucket(self, now: float) -> list[RequesterAction]:
        self._index += 1
        if self._index < len(self.channels):
            return self._head(now)
        self._phase = _Phase.REQUESTS
        self._index = 0
        return self._next_request_channel(now)

    def _next_request_channel(self, now: float) -> list[RequesterAction]:
        while self._index < len(self.channels):
            ch = self.channels[self._index]
            if ch.may_request:
                self._attempt = 0
                self._history, self._sent, self._stale = [], [], set()
                self._bad_object = ch.name in self._bad_on
                return self._publish_request(now)
            self._reasons.append((ch.name, "not in its bucket, and this node does not have the "
                                           "request-files role there, so it cannot ask for it"))
            self._index += 1
        return self._give_up()

    def _publish_request(self, now: float) -> list[RequesterAction]:
        self._attempt += 1
        request = FileRequest(self.target.sha1, self._new_id(), self.target.size,
                              self.target.chunk_of, self._bad_object)
        self._sent.append(request.request_id)
        self.state = _S.AWAITING
        self._answered = False
        self._uploaders = {}
        self._last_heard = now
        self._round_ends = now + self.timeouts.standby_max
        return [Publish(self.channel, request)]

    def _next_round(self, now: float) -> list[RequesterAction]:
        if self._attempt < self.timeouts.max_requests:
            return self._publish_request(now)
        self._history.append(f"gave up after {self.timeouts.max_requests} requests")
        return self._channel_done(now)

    def _channel_done(self, now: float) -> list[RequesterAction]:
        self._reasons.append((self.channel, "; then ".join(self._history)))
        self._index += 1
        return self._next_request_channel(now)

    def _give_up(self) -> list[RequesterAction]:
        self.state = _S.GAVE_UP
        return [GiveUp(self.target.label, tuple(self._reasons))]
