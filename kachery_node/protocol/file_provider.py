"""The provider side of the file exchange, without I/O: whether to answer a ``requestFile``, when
to upload, when to stand by for another provider and when to take over (spec/node-protocol.md
§Files, "Provider").

Theory of operation
-------------------
A :class:`FileProvider` holds one provider's conversation about one object on one channel, from
the ``requestFile`` that started it to its last status. Its driver calls its methods with an
event and the current time and carries out the actions it returns (:mod:`.file_messages`),
calling :meth:`FileProvider.on_timer` when :meth:`~FileProvider.next_deadline` passes. One core
per (channel, object) being provided; what spans them (recent failures) is a
:class:`RecentFailures` they share.

The conversation: find the content here (else stop, silently); unless the request reports a
bad object, HEAD the bucket and answer ``finished`` at once if the object is there with the
right size; otherwise *back off* a random ``[0, backoff_max]`` (plus ``backoff_max`` after a
recent failure of our own) while listening to other providers. Another's ``started`` or
``progress`` means *stand by* until its ``finished`` (stop), its ``failed`` or its silence for
``stall`` (back off again and take over). After ``max_requests`` rounds, or when nobody spoke
up, *upload*: ``started``, heartbeats while waiting for a slot, throttled ``progress`` while
bytes move, then ``finished`` or ``failed``. So one provider uploads, and a dead one is replaced.

Rules
-----
1. Everything that decides what a provider does lives here; the driver only performs.
2. Every wait has a deadline: the HEAD (at most half of ``answer``: see
   :attr:`FileProvider.head_wait`), the back-off, standing by (``stall`` of silence, at
   most ``standby_max``), the upload (no new bytes for ``stall``; before the link reported any
   progress at all, ``stall + size / min_upload_rate``, as some links report only at the end).
3. The conversation stops taking statuses and requests (:class:`StopListening`) *before* its
   last status goes out, so a request provoked by that status starts a new conversation.
4. A provider whose own upload of an object failed within :data:`RECENT_FAILURE_S` backs off
   ``backoff_max`` longer, so that a healthy provider wins the next round
   (:class:`RecentFailures`, shared by all conversations of an exchange).
"""

from __future__ import annotations

import enum
from typing import Protocol

from .bucket_layout import file_path
from .file_messages import (
    CancelTransfer,
    FileCoreMisuse,
    FileRequest,
    FindSource,
    HeadObject,
    Ignored,
    MalformedFileMessage,
    ProviderAction,
    ProviderDone,
    ProviderOutcome,
    Publish,
    Status,
    StopListening,
    Upload,
    UploadStatus,
)
from .file_timeouts import RECENT_FAILURE_S, FileTimeouts


class Uniform(Protocol):
    """Where back-off delays come from (``random.Random`` fits; tests pass a fixed one)."""

    def uniform(self, a: float, b: float) -> float: ...


def admit_request(body: dict, *, we_provide: bool,
                  sender_may_request: bool) -> FileRequest | Ignored:
    """The ``requestFile`` in ``body``, if this node should consider it: it holds provide-files
    on the channel, the sender holds request-files in the channel's membership, and the body is
    well-formed."""
    if not we_provide:
        return Ignored("a requestFile: this node does not provide files there", quiet=True)
    if not sender_may_request:
        return Ignored("a requestFile from a node the channel's membership does not give the "
                       "request-files role")
    try:
        return FileRequest.parse(body)
    except MalformedFileMessage as exc:
        return Ignored(f"a malformed requestFile: {exc}")


class RecentFailures:
    """When this node's uploads of objects last failed, per (channel, sha1), for
    :data:`RECENT_FAILURE_S` seconds."""

    def __init__(self) -> None:
        self._at: dict[tuple[str, str], float] = {}

    def note(self, key: tuple[str, str], now: float) -> None:
        for old in [k for k, t in self._at.items() if now - t > RECENT_FAILURE_S]:
            del self._at[old]
        self._at[key] = now

    def recent(self, key: tuple[str, str], now: float) -> bool:
        at = self._at.get(key)
        return at is not None and now - at < RECENT_FAILURE_S


class ProviderState(enum.Enum):
    LOCATING = "locating"  # looking for the content in the local storage
    HEADING = "heading"  # is the object in the bucket already?
    BACKING_OFF = "backing off"  # a random delay, listening for other providers
    STANDING_BY = "standing by"  # following another provider's upload
    QUEUED = "queued"  # 'started' announced; waiting for an upload slot and reading
    UPLOADING = "uploading"
    DONE = "done"


_S = ProviderState
#: The driver's reports each state takes (statuses, duplicate requests and timers are taken in
#: every state and ignored where they mean nothing); any other is a driver bug.
ACCEPTS: dict[ProviderState, frozenset[str]] = {
    _S.LOCATING: frozenset({"source_found", "source_missing"}),
    _S.HEADING: frozenset({"head_result"}),
    _S.BACKING_OFF: frozenset(),
    _S.STANDING_BY: frozenset(),
    _S.QUEUED: frozenset({"upload_began", "upload_failed"}),
    _S.UPLOADING: frozenset({"upload_progress", "upload_finished", "upload_failed"}),
    _S.DONE: frozenset(),
}


class FileProvider:
    """One provider's conversation about ``request`` on ``channel`` (see the module docstring).

    Example (the driver's view)::

        core = FileProvider("lab", request, FileTimeouts(), random.Random(), RecentFailures())
        core.start(now)                  # [FindSource()]
        core.source_found(now, 1234)     # [HeadObject("lab", "lab/sha1/…", 1)]
        core.head_result(now, 1, None)   # [] - backing off; next_deadline() says until when
        core.on_timer(later)             # [Publish(… started …), Upload("lab", …, 1234, 2)]
    """

    def __init__(self, channel: str, request: FileRequest, timeouts: FileTimeouts,
                 rng: Uniform, failures: RecentFailures) -> None:
        self.channel = channel
        self.request = request
        self.timeouts = timeouts
        self._rng = rng
        self._failures = failures
        self.state = ProviderState.LOCATING
        self.size = 0
        self.path = file_path(channel, request.sha1)
        self._queued: FileRequest | None = None  # a bad_object request that came meanwhile
        # Another provider's first 'started', 'progress' or 'finished' heard before our back-off
        # began (while we looked for the content or HEADed): the back-off acts on it at once.
        self._early: UploadStatus | None = None
        self._transfer = 0
        self._deadline: float | None = None
        self._rounds = 0  # rounds in which another provider was at work
        self._standby_ends = 0.0
        # the upload:
        self._done = 0  # bytes uploaded so far
        self._published = 0  # bytes last reported in a 'progress'
        self._reported = False  # has the link reported any progress?
        self._last_advance = 0.0
        self._last_sent = 0.0  # when our last status went out

    @property
    def listening(self) -> bool:
        """Whether statuses and duplicate requests about the object still concern this
        conversation (until its :class:`StopListening`)."""
        return self.state is not _S.DONE

    @property
    def key(self) -> tuple[str, str]:
        return self.channel, self.request.sha1

    @property
    def head_wait(self) -> float:
        """How long the HEAD may take before the object counts as absent: ``bucket_head``, but
        at most half of ``answer``. Our first status goes out after the HEAD, and whoever asked
        gives up after ``answer`` without one; a hub slow to answer HEADs (many nodes
        downloading from it at once) made every requester give up while we were about to
        upload (bench/network/bench_file_requests.py: 12-67 of 210 fetches at N = 100). An
        object that was there after all is uploaded again, which is harmless (spec:
        BACKOFF_MAX)."""
        return min(self.timeouts.bucket_head, self.timeouts.answer / 2)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must be called next (None: no deadline pending)."""
        return self._deadline

    # -- events -----------------------------------------------------------------------------------------
    def start(self, now: float) -> list[ProviderAction]:
        return [FindSource()]

    def source_found(self, now: float, size: int) -> list[ProviderAction]:
        """The content is here, ``size`` bytes."""
        self._expect("source_found")
        self.size = size
        if self.request.bad_object:  # upload it again without looking
            return self._back_off(now)
        self.state = _S.HEADING
        self._transfer += 1
        self._deadline = now + self.head_wait
        return [HeadObject(self.channel, self.path, self._transfer)]

    def source_missing(self, now: float) -> list[ProviderAction]:
        """The content is not here: not for us to answer."""
        self._expect("source_missing")
        return self._end(ProviderOutcome.SOURCE_MISSING)

    def head_result(self, now: float, transfer: int, size: int | None) -> list[ProviderAction]:
        """The bucket object's size, or None if it is absent (or the HEAD failed)."""
        if self._stale(transfer, "head_result"):
            return []
        if size == self.size:
            return self._end(ProviderOutcome.ALREADY_IN_BUCKET, self._status(Status.FINISHED))
        return self._back_off(now)  # absent, or the wrong size: upload (again)

    def request_received(self, request: FileRequest) -> list[ProviderAction]:
        """Another ``requestFile`` for this object while the conversation runs: a duplicate,
        except that a ``bad_object`` report is served once this conversation ends."""
        if request.bad_object and self.state is not _S.DONE:
            self._queued = request
        return []

    def status_received(self, now: float, sender: str, status: UploadStatus) -> list[ProviderAction]:
        """Another provider's status about this object on this channel."""
        if status.sha1 != self.request.sha1:
            return []
        if self.state in (_S.LOCATING, _S.HEADING):
            if self._early is None and status.status is not Status.FAILED:
                self._early = status
        elif self.state is _S.BACKING_OFF:
            return self._other_at_work(now, status)
        elif self.state is _S.STANDING_BY:
            if status.status is Status.FINISHED:
                return self._end(ProviderOutcome.OTHER_PROVIDER_FINISHED)
            if status.status is Status.FAILED:
                return self._after_round(now)  # take over
            self._deadline = min(now + self.timeouts.stall, self._standby_ends)
        return []

    def upload_began(self, now: float, transfer: int) -> list[ProviderAction]:
        """A slot was free and the content read: the bytes start moving."""
        if self._stale(transfer, "upload_began"):
            return []
        self.state = _S.UPLOADING
        self._last_advance = now
        self._deadline = now + self.timeouts.progress_interval
        return []

    def upload_progress(self, now: float, transfer: int, done: int) -> list[ProviderAction]:
        """The link reports ``done`` bytes sent."""
        if self._stale(transfer, "upload_progress"):
            return []
        self._reported = True
        if done > self._done:
            self._done = done
            self._last_advance = now
        return []

    def upload_finished(self, now: float, transfer: int) -> list[ProviderAction]:
        if self._stale(transfer, "upload_finished"):
            return []
        return self._end(ProviderOutcome.UPLOADED, self._status(Status.FINISHED))

    def upload_failed(self, now: float, transfer: int, why: str) -> list[ProviderAction]:
        """Reading or uploading raised (``why``: ``"Type: message"``)."""
        if self._stale(transfer, "upload_failed"):
            return []
        return self._failed(now, why)

    def on_timer(self, now: float) -> list[ProviderAction]:
        """Time passed; acts if :meth:`next_deadline` is due (else does nothing)."""
        if self._deadline is None or now < self._deadline:
            return []
        t = self.timeouts
        if self.state is _S.HEADING:  # no answer: as if absent
            cancel = CancelTransfer(self._transfer)
            self._transfer += 1
            return [cancel, *self._back_off(now)]
        if self.state is _S.BACKING_OFF:  # nobody else is at it
            return self._upload(now)
        if self.state is _S.STANDING_BY:  # the other provider went silent: take over
            return self._after_round(now)
        if self.state is _S.QUEUED:  # still waiting for a slot: say we are alive
            self._last_sent = now
            self._deadline = now + t.heartbeat
            return [Publish(self.channel, self._status(Status.PROGRESS, bytes_done=0))]
        if self.state is _S.UPLOADING:
            self._deadline = now + t.progress_interval
            allowance = t.stall if self._reported else t.stall + self.size / t.min_upload_rate
            silent = now - self._last_advance
            if silent > allowance:
                cancel = CancelTransfer(self._transfer)
                self._transfer += 1
                return [cancel, *self._failed(
                    now, f"TimeoutError: the upload made no progress for {silent:.3g} s")]
            if self._done > self._published or now - self._last_sent >= t.heartbeat:
                self._published = self._done
                self._last_sent = now
                return [Publish(self.channel, self._status(Status.PROGRESS, bytes_done=self._done))]
        return []

    # -- transitions --------------------------------------------------------------------------------
    def _expect(self, event: str) -> None:
        if event not in ACCEPTS[self.state]:
            raise FileCoreMisuse(f"FileProvider for {self.request.sha1} on {self.channel}: "
                                 f"{event} in state {self.state.value!r}")

    def _stale(self, transfer: int, event: str) -> bool:
        if transfer != self._transfer:
            return True
        self._expect(event)
        return False

    def _other_at_work(self, now: float, status: UploadStatus) -> list[ProviderAction]:
        """Backing off, we heard another provider: it finished, or it is at work (follow it)."""
        if status.status is Status.FINISHED:
            return self._end(ProviderOutcome.OTHER_PROVIDER_FINISHED)
        if status.status is not Status.FAILED:
            self._rounds += 1
            self.state = _S.STANDING_BY
            self._standby_ends = now + self.timeouts.standby_max
            self._deadline = min(now + self.timeouts.stall, self._standby_ends)
        return []

    def _back_off(self, now: float) -> list[ProviderAction]:
        t = self.timeouts
        delay = self._rng.uniform(0.0, t.backoff_max)
        if self._failures.recent(self.key, now):
            delay += t.backoff_max
        self.state = _S.BACKING_OFF
        self._deadline = now + delay
        early, self._early = self._early, None
        return [] if early is None else self._other_at_work(now, early)

    def _after_round(self, now: float) -> list[ProviderAction]:
        if self._rounds < self.timeouts.max_requests:
            return self._back_off(now)
        return self._upload(now)  # others kept failing: upload regardless

    def _upload(self, now: float) -> list[ProviderAction]:
        self.state = _S.QUEUED
        self._transfer += 1
        self._last_sent = now
        self._deadline = now + self.timeouts.heartbeat
        return [Publish(self.channel, self._status(Status.STARTED)),
                Upload(self.channel, self.path, self.size, self._transfer)]

    def _failed(self, now: float, why: str) -> list[ProviderAction]:
        self._failures.note(self.key, now)
        return self._end(ProviderOutcome.UPLOAD_FAILED, self._status(Status.FAILED, error=why))

    def _end(self, outcome: ProviderOutcome,
             last: UploadStatus | None = None) -> list[ProviderAction]:
        self.state = _S.DONE
        self._deadline = None
        actions: list[ProviderAction] = [StopListening(self._queued)]
        if last is not None:
            actions.append(Publish(self.channel, last))
        actions.append(ProviderDone(outcome))
        return actions

    def _status(self, status: Status, *, bytes_done: int | None = None,
                error: str | None = None) -> UploadStatus:
        size = None if status is Status.FAILED else self.size
        return UploadStatus(self.request.sha1, status, self.request.request_id, size,
                            bytes_done, error)
