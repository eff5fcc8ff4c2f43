"""How long each wait of the file exchange lasts (spec/node-protocol.md §Files, "Timeouts and
constants"). Pure data: the cores in :mod:`.file_requester` and :mod:`.file_provider` read it,
the daemon builds it from the ``[daemon.files]`` table of config.toml."""

from __future__ import annotations

from dataclasses import dataclass

#: How long a provider remembers that its own upload of an object failed (it then lets others
#: go first: see :class:`~.file_provider.RecentFailures`).
RECENT_FAILURE_S = 60.0
#: Chunks of a large file a requester fetches at once.
PARALLEL_CHUNKS = 5


@dataclass(frozen=True)
class FileTimeouts:
    """How long the exchange waits for each thing (seconds). The defaults follow the original
    (3 s without an answer, 30 s without progress: the original kachery's values); tests shrink them.

    ``FileTimeouts(answer=0.2)`` with ``backoff_max`` left at 0.05 s is refused: a provider that
    just failed backs off up to ``2 x backoff_max``, and its answer must still come in time."""

    #: After publishing ``requestFile``: how long to wait for any provider's status.
    answer: float = 3.0
    #: Once a provider answered, or during a download or upload: time without progress after
    #: which the transfer counts as stalled (re-request / take over / abort).
    stall: float = 30.0
    #: A provider waits a random delay in ``[0, backoff_max]`` before uploading.
    backoff_max: float = 0.05  # a lone provider (the usual case) should not wait long per chunk
    #: Minimum interval between a provider's ``progress`` messages.
    progress_interval: float = 0.5
    #: While its upload runs (or waits for a slot), a provider publishes ``progress`` at least
    #: this often, even without new bytes, so that requesters and standby providers know it lives.
    heartbeat: float = 5.0
    #: A link that reports no progress until an upload is done gets ``stall + size / rate``
    #: seconds before the provider gives the upload up (bytes per second).
    min_upload_rate: float = 100_000.0
    #: A bucket HEAD.
    bucket_head: float = 10.0
    #: Longest one round of waiting on others' uploads (a requester's, or a standing-by
    #: provider's), however alive they look.
    standby_max: float = 600.0
    #: ``requestFile`` messages per object per channel (the first one plus re-requests); also
    #: the rounds a provider stands by for others before it uploads regardless.
    max_requests: int = 3

    def __post_init__(self) -> None:
        if self.answer <= 2 * self.backoff_max:
            raise ValueError("FileTimeouts: answer must exceed 2 x backoff_max")
