"""The file exchange's cores (protocol/file_requester.py, file_provider.py, file_chunks.py),
replayed event by event with a fake clock: plain floats, no sockets, no sleeping.

Each test follows one rule of spec/node-protocol.md §Files and asserts on the actions returned.
"""

from __future__ import annotations

import itertools

import pytest

from kachery_node.protocol.bucket_layout import file_path
from kachery_node.protocol.file_chunks import ChunkProgress, ChunkSchedule
from kachery_node.protocol.file_messages import (
    CancelTransfer,
    ChunkRef,
    DownloadObject,
    Failed,
    FileCoreMisuse,
    FileRequest,
    FindSource,
    GiveUp,
    HeadObject,
    Ignored,
    MalformedFileMessage,
    Missing,
    Obtained,
    ProviderDone,
    ProviderOutcome,
    Publish,
    Rejected,
    Status,
    StopListening,
    Upload,
    UploadStatus,
    Verified,
)
from kachery_node.protocol.file_provider import FileProvider, RecentFailures, admit_request
from kachery_node.protocol.file_requester import (
    FileRequester,
    RequesterChannel,
    RequesterState,
    Target,
    admit_status,
)
from kachery_node.protocol.file_timeouts import RECENT_FAILURE_S, FileTimeouts
from kachery_node.storage.manifest import CHUNK_SIZE, Chunk

T = FileTimeouts()  # the defaults: answer 3, stall 30, backoff_max 0.05, heartbeat 5, ...
SHA = "ab" * 20
P1, P2 = "1" * 64, "2" * 64  # providers' node IDs


def _ids():
    counter = itertools.count(1)
    return lambda: f"request{next(counter):03d}"


def requester(*channels: str | tuple[str, bool], size: int | None = None,
              timeouts: FileTimeouts = T) -> FileRequester:
    chs = [RequesterChannel(c, True) if isinstance(c, str) else RequesterChannel(*c)
           for c in channels]
    return FileRequester(Target(SHA, f"sha1://{SHA}", size), chs, timeouts, _ids())


def status(kind: str, request_id: str | None = None, **fields) -> UploadStatus:
    return UploadStatus(SHA, Status(kind), request_id, **fields)


def published(actions) -> list:
    return [a.message for a in actions if isinstance(a, Publish)]


def only(actions, kind):
    (action,) = [a for a in actions if isinstance(a, kind)]
    return action


def to_requests(core: FileRequester, now: float = 0.0) -> FileRequest:
    """Drive a one-channel requester past an empty bucket to its first requestFile."""
    head = only(core.start(now), HeadObject)
    (request,) = published(core.head_result(now, head.transfer, None))
    return request


# -- requester: buckets first ------------------------------------------------------------------------


def test_the_bucket_is_tried_first_and_nothing_is_published_when_it_has_the_object():
    core = requester("lab", "other", size=10)
    head = only(core.start(0.0), HeadObject)
    assert (head.channel, head.path) == ("lab", file_path("lab", SHA))
    download = only(core.head_result(0.1, head.transfer, 10), DownloadObject)
    assert core.download_result(0.2, download.transfer, Verified()) == [Obtained("lab")]
    assert core.state is RequesterState.OBTAINED and core.next_deadline() is None


def test_every_bucket_is_tried_before_any_request_and_a_missing_download_is_just_absent():
    core = requester("one", "two")
    head = only(core.start(0.0), HeadObject)
    download = only(core.head_result(0.0, head.transfer, 5), DownloadObject)
    head2 = only(core.download_result(0.1, download.transfer, Missing()), HeadObject)
    assert head2.channel == "two"
    request = only(core.head_result(0.2, head2.transfer, None), Publish)
    assert request.channel == "one"  # the requests start again at the first channel
    assert request.message.bad_object is False


def test_a_bucket_object_of_the_wrong_size_is_bad_and_requested_again_with_bad_object():
    core = requester("lab", size=10)
    head = only(core.start(0.0), HeadObject)
    (request,) = published(core.head_result(0.0, head.transfer, 11))
    assert request.bad_object and request.size == 10
    gave_up = only(core.on_timer(T.answer), GiveUp)
    assert "has 11 bytes, not 10 (rejected, nothing stored)" in gave_up.message


def test_a_corrupted_bucket_download_is_reported_and_requested_with_bad_object():
    core = requester("lab")
    head = only(core.start(0.0), HeadObject)
    download = only(core.head_result(0.0, head.transfer, 5), DownloadObject)
    (request,) = published(core.download_result(0.1, download.transfer, Rejected("it hashes to x")))
    assert request.bad_object
    message = only(core.on_timer(0.1 + T.answer), GiveUp).message
    assert f"the bucket object {file_path('lab', SHA)} is corrupted: it hashes to x " \
           "(rejected, nothing stored)" in message
    assert "no provider answered within 3 s" in message


def test_a_bucket_that_cannot_be_reached_or_does_not_answer_is_a_reason_not_a_stop():
    core = requester("one", "two")
    head = only(core.start(0.0), HeadObject)
    head2 = only(core.head_failed(0.5, head.transfer, "ConnectError: refused"), HeadObject)
    assert core.next_deadline() == 0.5 + T.bucket_head
    assert core.on_timer(0.5 + T.bucket_head - 0.01) == []
    actions = core.on_timer(0.5 + T.bucket_head)
    assert actions[0] == CancelTransfer(head2.transfer)
    assert published(actions)[0].sha1 == SHA  # on to the requests
    assert core.head_result(11.0, head2.transfer, 5) == []  # the cancelled HEAD's late answer
    reasons = dict(core._reasons)
    assert reasons["one"] == "its bucket could not be reached (ConnectError: refused)"
    assert "no answer within 10 s" in reasons["two"]


def test_a_download_that_makes_no_progress_for_stall_is_cancelled_and_progress_keeps_it_alive():
    core = requester("lab")
    head = only(core.start(0.0), HeadObject)
    download = only(core.head_result(0.0, head.transfer, 5), DownloadObject)
    core.download_progress(20.0, download.transfer, 1)
    assert core.on_timer(T.stall) == []  # 30 s after the start, but only 10 s after progress
    actions = core.on_timer(20.0 + T.stall)
    assert actions[0] == CancelTransfer(download.transfer)
    assert published(actions)  # on to a request
    assert core.download_result(51.0, download.transfer, Verified()) == []  # too late: stale
    assert "made no progress" not in str(core._reasons) and \
        "failed (no progress for 30 s)" in core._reasons[0][1]


# -- requester: requests ------------------------------------------------------------------------------


def test_no_answer_within_answer_gives_up_on_the_channel_and_tries_the_next():
    core = requester("one", ("norole", False), "three")
    head = only(core.start(0.0), HeadObject)
    for _ in range(2):  # the three buckets are empty
        head = only(core.head_result(0.0, head.transfer, None), HeadObject)
    assert published(core.head_result(0.0, head.transfer, None))
    assert core.channel == "one" and core.next_deadline() == T.answer
    assert published(core.on_timer(T.answer))
    assert core.channel == "three"  # the channel without request-files published nothing
    gave_up = only(core.on_timer(T.answer * 2), GiveUp)
    assert gave_up.reasons == (
        ("one", "no provider answered within 3 s"),
        ("norole", "not in its bucket, and this node does not have the request-files role "
                   "there, so it cannot ask for it"),
        ("three", "no provider answered within 3 s"),
    )
    assert gave_up.message.startswith(f"sha1://{SHA} could not be fetched: channel 'one': ")


def test_without_channels_the_error_says_so():
    gave_up = only(requester().start(0.0), GiveUp)
    assert "joined no channel" in gave_up.message


def test_statuses_keep_a_round_alive_and_silence_for_stall_re_requests():
    core = requester("lab")
    first = to_requests(core)
    assert core.status_received(1.0, "lab", P1, status("started", first.request_id)) == []
    assert core.next_deadline() == 1.0 + T.stall  # answered: silence may now last `stall`
    core.status_received(25.0, "lab", P1, status("progress", first.request_id, bytes=0))  # heartbeat
    assert core.on_timer(31.0) == []
    (second,) = published(core.on_timer(55.0))
    assert second.request_id != first.request_id and not second.bad_object
    assert "the upload by 111111111111… stalled (silent for 30 s)" in core._history[0]


def test_statuses_about_other_objects_channels_or_times_are_ignored():
    core = requester("lab", "other")
    head = only(core.start(0.0), HeadObject)
    assert core.status_received(0.0, "lab", P1, status("finished")) == []  # not asking yet
    head = only(core.head_result(0.0, head.transfer, None), HeadObject)
    to_requests_done = published(core.head_result(0.0, head.transfer, None))
    assert to_requests_done and core.channel == "lab"
    assert core.status_received(0.5, "other", P1, status("finished")) == []
    other_object = UploadStatus("cd" * 20, Status.FINISHED)
    assert core.status_received(0.5, "lab", P1, other_object) == []
    assert core.next_deadline() == T.answer  # still unanswered


def test_failed_from_the_last_uploader_re_requests_at_once_but_not_while_another_uploads():
    core = requester("lab")
    request = to_requests(core)
    core.status_received(0.1, "lab", P1, status("started", request.request_id))
    core.status_received(0.2, "lab", P2, status("started", request.request_id))
    assert core.status_received(0.3, "lab", P1, status("failed", request.request_id, error="x")) == []
    (again,) = published(core.status_received(0.4, "lab", P2,
                                              status("failed", request.request_id, error="disk")))
    assert core._history == ["provider 222222222222… failed: disk"]
    assert again.request_id != request.request_id


def test_finished_downloads_and_a_bad_object_makes_earlier_finished_statuses_stale():
    core = requester("lab", size=5)
    request = to_requests(core)
    download = only(core.status_received(1.0, "lab", P1, status("finished", request.request_id)),
                    DownloadObject)
    (again,) = published(core.download_result(1.5, download.transfer, Rejected("wrong bytes")))
    assert again.bad_object
    # a late 'finished' answering the first request describes the bad object: ignored
    assert core.status_received(1.6, "lab", P2, status("finished", request.request_id)) == []
    download = only(core.status_received(2.0, "lab", P1, status("finished", again.request_id)),
                    DownloadObject)
    assert core.download_result(2.5, download.transfer, Verified()) == [Obtained("lab")]


def test_a_finished_upload_missing_from_the_bucket_is_re_requested():
    core = requester("lab")
    request = to_requests(core)
    download = only(core.status_received(1.0, "lab", P1, status("finished", request.request_id)),
                    DownloadObject)
    (again,) = published(core.download_result(1.1, download.transfer, Missing()))
    assert core._history == [f"provider 111111111111… reported the upload finished, but "
                             f"{file_path('lab', SHA)} is missing"]
    # The hub evicted it, or the provider answered from its memory of the upload
    # (tests/network/test_bucket_quota_flow.py): the next request says to upload it again
    # without looking, and a late 'finished' for the first request is ignored.
    assert again.bad_object
    assert core.status_received(1.2, "lab", P2, status("finished", request.request_id)) == []


def test_at_most_max_requests_rounds_per_channel_and_the_reasons_are_chained():
    core = requester("lab")
    request = to_requests(core)
    now = 0.0
    for _ in range(T.max_requests - 1):
        now += 1
        (request,) = published(core.status_received(now, "lab", P1,
                                                    status("failed", request.request_id, error="e")))
    gave_up = only(core.status_received(now + 1, "lab", P1, status("failed", error="e")), GiveUp)
    assert gave_up.reasons[0][1] == "; then ".join(
        ["provider 111111111111… failed: e"] * 3 + ["gave up after 3 requests"])


def test_no_answer_after_a_re_request_says_so():
    core = requester("lab")
    request = to_requests(core)
    published(core.status_received(1.0, "lab", P1, status("failed", request.request_id)))
    gave_up = only(core.on_timer(1.0 + T.answer), GiveUp)
    assert gave_up.reasons[0][1].endswith("then no provider answered within 3 s after a re-request")


def test_one_round_lasts_at_most_standby_max_however_alive_the_uploader_looks():
    core = requester("lab")
    request = to_requests(core)
    now = 0.0
    while now < T.standby_max - 5:
        now += 5
        assert core.status_received(now, "lab", P1, status("progress", request.request_id)) == []
    assert core.next_deadline() == T.standby_max
    assert published(core.on_timer(T.standby_max))  # re-request


def test_a_request_that_cannot_be_published_ends_the_channel():
    core = requester("one", "two")
    head = only(core.start(0.0), HeadObject)
    head = only(core.head_result(0.0, head.transfer, None), HeadObject)
    (request,) = published(core.head_result(0.0, head.transfer, None))
    assert core.publish_failed(0.0, "someone-else", "x") == []  # not our last request
    (request2,) = published(core.publish_failed(0.1, request.request_id, "PermissionError: no"))
    assert core.channel == "two" and request2.sha1 == SHA
    assert core._reasons == [("one", "could not publish the request (PermissionError: no)")]


def test_events_the_state_cannot_take_are_the_drivers_bug():
    core = requester("lab")
    head = only(core.start(0.0), HeadObject)
    with pytest.raises(FileCoreMisuse):
        core.download_result(0.0, head.transfer, Verified())  # a HEAD is out, not a download
    with pytest.raises(FileCoreMisuse):
        core.start(0.0)


# -- provider -------------------------------------------------------------------------------------------


class Fixed:
    """Back-off delays always ``fraction`` of the range."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def provider(*, bad_object: bool = False, fraction: float = 1.0,
             failures: RecentFailures | None = None, timeouts: FileTimeouts = T,
             size: int = 1000) -> FileProvider:
    """A provider that found the content (``size`` bytes); when not ``bad_object`` it has a
    HEAD out (transfer 1)."""
    request = FileRequest(SHA, "request001", bad_object=bad_object)
    core = FileProvider("lab", request, timeouts, Fixed(fraction), failures or RecentFailures())
    assert core.start(0.0) == [FindSource()]
    actions = core.source_found(0.0, size)
    assert actions == ([] if bad_object else [HeadObject("lab", file_path("lab", SHA), 1)])
    return core


def test_a_provider_without_the_content_stops_silently():
    core = FileProvider("lab", FileRequest(SHA, "request001"), T, Fixed(0), RecentFailures())
    core.start(0.0)
    assert core.source_missing(0.0) == [StopListening(None),
                                        ProviderDone(ProviderOutcome.SOURCE_MISSING)]
    assert not core.listening


def test_an_object_already_in_the_bucket_is_answered_finished_at_once():
    core = provider()
    actions = core.head_result(0.1, 1, 1000)
    assert actions[0] == StopListening(None)  # before the last status goes out
    assert published(actions) == [UploadStatus(SHA, Status.FINISHED, "request001", 1000)]
    assert actions[-1] == ProviderDone(ProviderOutcome.ALREADY_IN_BUCKET)


def test_a_wrong_sized_or_absent_object_is_uploaded_after_the_back_off():
    for existing in (None, 999):
        core = provider(fraction=0.5)
        assert core.head_result(0.1, 1, existing) == []
        assert core.next_deadline() == pytest.approx(0.1 + 0.5 * T.backoff_max)
        assert core.on_timer(0.11) == []
        actions = core.on_timer(0.1 + T.backoff_max)
        assert published(actions) == [UploadStatus(SHA, Status.STARTED, "request001", 1000)]
        assert only(actions, Upload) == Upload("lab", file_path("lab", SHA), 1000, 2)


def test_a_head_without_answer_counts_as_absent():
    core = provider(fraction=0.0)
    actions = core.on_timer(T.bucket_head)
    assert actions == [CancelTransfer(1)]
    assert core.head_result(T.bucket_head, 1, 1000) == []  # its late answer is stale
    assert only(core.on_timer(T.bucket_head), Upload)


def test_a_slow_head_is_given_up_in_time_for_the_requester_to_hear_started():
    # A requester gives up after T.answer without a status; ours goes out after the HEAD, so
    # a HEAD that a busy hub answers late counts as absent after half of that, and we upload.
    core = provider(fraction=0.0)
    assert core.next_deadline() == pytest.approx(T.answer / 2) and T.answer / 2 < T.bucket_head
    assert core.on_timer(T.answer / 2 - 0.01) == []
    assert core.on_timer(T.answer / 2) == [CancelTransfer(1)]
    actions = core.on_timer(T.answer / 2)
    assert published(actions) == [UploadStatus(SHA, Status.STARTED, "request001", 1000)]
    assert only(actions, Upload)
    quick_head = FileTimeouts(bucket_head=0.5)  # a shorter bucket_head still rules
    assert provider(timeouts=quick_head).next_deadline() == pytest.approx(0.5)


def test_bad_object_uploads_again_without_looking_at_the_bucket():
    core = provider(bad_object=True, fraction=0.0)
    assert only(core.on_timer(0.0), Upload)


def test_a_recent_failure_of_our_own_backs_off_one_backoff_max_longer():
    failures = RecentFailures()
    failures.note(("lab", SHA), 0.0)
    core = provider(failures=failures, fraction=1.0, bad_object=True)
    assert core.next_deadline() == pytest.approx(2 * T.backoff_max)
    later = provider(failures=failures, fraction=1.0, bad_object=True)
    assert later.next_deadline() == pytest.approx(2 * T.backoff_max)
    assert not failures.recent(("lab", SHA), RECENT_FAILURE_S)  # forgotten after a minute
    failures.note(("lab", "cd" * 20), RECENT_FAILURE_S + 1)  # noting prunes the old ones
    assert failures._at == {("lab", "cd" * 20): RECENT_FAILURE_S + 1}


def test_during_back_off_another_providers_finished_ends_it_and_failed_is_ignored():
    core = provider(bad_object=True)
    assert core.status_received(0.01, P1, status("failed", error="x")) == []
    assert core.status_received(0.02, P1, status("finished")) == [
        StopListening(None), ProviderDone(ProviderOutcome.OTHER_PROVIDER_FINISHED)]


def test_statuses_heard_before_the_back_off_count_when_it_begins():
    core = provider()  # its HEAD is out
    assert core.status_received(0.01, P1, status("failed")) == []  # (ignored, as in a back-off)
    assert core.status_received(0.02, P1, status("started")) == []
    assert core.head_result(0.1, 1, None) == []
    assert core.on_timer(0.1 + T.backoff_max) == []  # standing by, not uploading
    assert core.next_deadline() == pytest.approx(0.1 + T.stall)
    done = provider(bad_object=False)
    done.status_received(0.02, P1, status("finished"))
    assert done.head_result(0.1, 1, None)[-1] == ProviderDone(ProviderOutcome.OTHER_PROVIDER_FINISHED)


def test_another_providers_started_means_stand_by_until_it_finishes():
    core = provider(bad_object=True)
    assert core.status_received(0.01, P1, status("started")) == []
    assert core.on_timer(T.backoff_max) == []  # standing by, not uploading
    assert core.next_deadline() == pytest.approx(0.01 + T.stall)
    core.status_received(20.0, P1, status("progress"))  # a heartbeat keeps it waiting
    assert core.next_deadline() == 20.0 + T.stall
    assert core.status_received(25.0, P1, status("finished"))[-1] == \
        ProviderDone(ProviderOutcome.OTHER_PROVIDER_FINISHED)


def test_a_silent_or_failed_uploader_is_taken_over_after_another_back_off():
    silent = provider(bad_object=True, fraction=0.0)
    silent.status_received(0.01, P1, status("started"))
    assert silent.on_timer(0.01 + T.stall) == []  # backing off again
    assert only(silent.on_timer(0.01 + T.stall), Upload)  # nobody else: take over
    failed = provider(bad_object=True, fraction=0.0)
    failed.status_received(0.01, P1, status("started"))
    assert failed.status_received(1.0, P1, status("failed")) == []
    assert only(failed.on_timer(1.0), Upload)


def test_standing_by_lasts_at_most_standby_max_per_round():
    core = provider(bad_object=True, fraction=0.0)
    core.status_received(0.0, P1, status("started"))
    for now in range(20, 600, 20):
        core.status_received(float(now), P1, status("progress"))
    assert core.next_deadline() == T.standby_max


def test_after_max_requests_rounds_of_others_failing_it_uploads_regardless():
    core = provider(bad_object=True, fraction=0.0)
    now = 0.0
    for _ in range(T.max_requests):
        assert core.status_received(now, P1, status("started")) == []
        now += 1
        actions = core.status_received(now, P1, status("failed"))
    assert only(actions, Upload)


def test_heartbeats_while_waiting_for_an_upload_slot():
    core = provider(bad_object=True, fraction=0.0)
    only(core.on_timer(0.0), Upload)
    assert core.next_deadline() == T.heartbeat
    assert published(core.on_timer(T.heartbeat)) == [
        UploadStatus(SHA, Status.PROGRESS, "request001", 1000, 0)]
    assert core.next_deadline() == 2 * T.heartbeat


def uploading(size: int = 1000, **kw) -> tuple[FileProvider, int]:
    """A provider whose upload began at 1.0, and the upload's transfer number."""
    core = provider(bad_object=True, fraction=0.0, size=size, **kw)
    upload = only(core.on_timer(0.0), Upload)
    assert core.upload_began(1.0, upload.transfer) == []
    return core, upload.transfer


def test_progress_is_published_when_bytes_advance_at_most_every_progress_interval():
    core, up = uploading()
    core.upload_progress(1.1, up, 100)
    core.upload_progress(1.2, up, 200)
    assert core.next_deadline() == 1.0 + T.progress_interval
    assert published(core.on_timer(1.5)) == [
        UploadStatus(SHA, Status.PROGRESS, "request001", 1000, 200)]
    assert core.on_timer(2.0) == []  # no new bytes, and the last status is recent
    core.upload_progress(2.1, up, 300)
    assert [m.bytes for m in published(core.on_timer(2.5))] == [300]


def test_a_heartbeat_goes_out_at_least_every_heartbeat_without_new_bytes():
    core, up = uploading()
    core.upload_progress(1.1, up, 100)
    assert published(core.on_timer(1.5))
    now, sent = 1.5, []
    while now < 1.5 + T.heartbeat:
        now += T.progress_interval
        sent += published(core.on_timer(now))
    assert [m.bytes for m in sent] == [100] and now == pytest.approx(1.5 + T.heartbeat)


def test_an_upload_without_new_bytes_for_stall_is_given_up_and_remembered():
    failures = RecentFailures()
    core, up = uploading(failures=failures)
    core.upload_progress(2.0, up, 10)  # the link reports progress: stall alone applies
    now = 2.0
    actions: list = []
    while not actions or not isinstance(actions[-1], ProviderDone):
        now += T.progress_interval
        actions = core.on_timer(now)
    assert now == pytest.approx(2.0 + T.stall + T.progress_interval)
    assert actions[0] == CancelTransfer(up) and actions[1] == StopListening(None)
    (failed,) = published(actions)
    assert failed.status is Status.FAILED and "made no progress for 30.5 s" in failed.error
    assert failures.recent(("lab", SHA), now)


def test_a_link_that_reports_no_progress_gets_stall_plus_size_over_min_upload_rate():
    core, _ = uploading(size=2_000_000)  # 20 s at 100 kB/s on top of the 30 s
    now = 1.0
    actions: list = []
    while not any(isinstance(a, ProviderDone) for a in actions):
        now += T.progress_interval
        actions = core.on_timer(now)
    assert now == pytest.approx(1.0 + T.stall + 20 + T.progress_interval)


def test_the_end_of_an_upload_stops_listening_before_its_last_status():
    done, up = uploading()
    actions = done.upload_finished(3.0, up)
    assert actions == [StopListening(None),
                       Publish("lab", UploadStatus(SHA, Status.FINISHED, "request001", 1000)),
                       ProviderDone(ProviderOutcome.UPLOADED)]
    failures = RecentFailures()
    broken, up2 = uploading(failures=failures)
    (failed,) = published(broken.upload_failed(3.0, up2, "OSError: disk on fire"))
    assert failed == UploadStatus(SHA, Status.FAILED, "request001", error="OSError: disk on fire")
    assert failures.recent(("lab", SHA), 3.0)


def test_a_bad_object_report_during_a_conversation_is_served_after_it():
    core, up = uploading()
    assert core.request_received(FileRequest(SHA, "request002")) == []  # a plain duplicate
    report = FileRequest(SHA, "request003", bad_object=True)
    assert core.request_received(report) == []
    assert core.upload_finished(3.0, up)[0] == StopListening(report)


def test_a_reading_failure_before_the_upload_began_is_reported():
    core = provider(bad_object=True, fraction=0.0)
    upload = only(core.on_timer(0.0), Upload)
    (failed,) = published(core.upload_failed(0.1, upload.transfer, "KacheryError: not the requested"))
    assert failed.status is Status.FAILED
    with pytest.raises(FileCoreMisuse):
        core.upload_progress(0.2, upload.transfer, 5)  # the conversation is over


# -- admission ---------------------------------------------------------------------------------------------


def test_requests_are_admitted_only_from_members_to_providers_and_well_formed():
    body = FileRequest(SHA, "request001").to_body()
    assert admit_request(body, we_provide=True, sender_may_request=True) == FileRequest(SHA, "request001")
    assert admit_request(body, we_provide=False, sender_may_request=True).quiet
    refused = admit_request(body, we_provide=True, sender_may_request=False)
    assert isinstance(refused, Ignored) and "request-files" in refused.reason
    assert "malformed" in admit_request({**body, "sha1": "x"}, we_provide=True,
                                        sender_may_request=True).reason
    good = status("progress", bytes=3).to_body()
    assert admit_status(good, sender_may_provide=True) == status("progress", bytes=3)
    assert "provide-files" in admit_status(good, sender_may_provide=False).reason
    assert "malformed" in admit_status({**good, "status": "pending"}, sender_may_provide=True).reason


def test_messages_parse_strictly_and_round_trip():
    good = {"type": "requestFile", "sha1": SHA, "request_id": "0123456789abcdef"}
    assert FileRequest.parse(good).sha1 == SHA
    chunk = {**good, "size": 10, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": 10}}
    assert FileRequest.parse(chunk).to_body() == chunk
    assert FileRequest.parse(chunk).chunk_of == ChunkRef("cd" * 20, 0, 10)
    for bad in (
        {**good, "sha1": "AB" * 20},
        {**good, "request_id": "short"},
        {**good, "size": -1},
        {**good, "bad_object": "yes"},
        {**good, "chunk_of": {"sha1": "cd" * 20, "start": 5, "end": 5}},
        {**good, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": CHUNK_SIZE + 1}},
        {**good, "size": 3, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": 10}},
    ):
        with pytest.raises(MalformedFileMessage):
            FileRequest.parse(bad)
    body = {"type": "uploadStatus", "sha1": SHA, "status": "progress", "bytes": 5}
    assert UploadStatus.parse(body).to_body() == body
    assert UploadStatus.parse(body).status is Status.PROGRESS
    with pytest.raises(MalformedFileMessage):
        UploadStatus.parse({**body, "status": "pending"})
    long_error = UploadStatus(SHA, "failed", error="e" * 5000).to_body()["error"]
    assert len(long_error) == 999


# -- large files ----------------------------------------------------------------------------------------


def _chunks(n: int) -> list[Chunk]:
    return [Chunk(i * 10, i * 10 + 10, f"{i:040x}") for i in range(n)]


def test_chunks_are_taken_in_file_order_and_the_last_delivering_channel_goes_first():
    chunks = _chunks(4)
    schedule = ChunkSchedule("ff" * 20, chunks, [chunks[3], chunks[1], chunks[2]], ["a", "b", "c"])
    assert len(schedule) == 3
    first = schedule.next_chunk()
    assert first == chunks[1]
    target = schedule.target(first)
    assert target == Target(chunks[1].sha1, f"chunk 2/4 of sha1://{'ff' * 20}", 10,
                            ChunkRef("ff" * 20, 10, 20))
    schedule.delivered("c")
    assert schedule.channel_order() == ["c", "a", "b"]
    assert [schedule.next_chunk(), schedule.next_chunk(), schedule.next_chunk()] == \
        [chunks[2], chunks[3], None]


def test_chunk_progress_sums_the_chunks_in_flight():
    chunks = _chunks(3)
    progress = ChunkProgress(total=30, done=10)  # the first chunk was already here
    assert progress.current() == (10, 30)
    assert progress.update(chunks[1], 4) == (14, 30)
    assert progress.update(chunks[2], 6) == (20, 30)
    assert progress.chunk_done(chunks[1]) == (26, 30)
    assert progress.chunk_done(chunks[2]) == (30, 30)


def test_timeouts_refuse_an_answer_that_a_penalised_back_off_could_outlast():
    with pytest.raises(ValueError, match="2 x backoff_max"):
        FileTimeouts(answer=0.1, backoff_max=0.05)


def test_failed_outcome_and_give_up_message_name_the_download():
    core = requester("lab")
    head = only(core.start(0.0), HeadObject)
    download = only(core.head_result(0.0, head.transfer, 5), DownloadObject)
    published(core.download_result(0.1, download.transfer, Failed("ReadTimeout: slow")))
    assert core._reasons == [("lab", f"the download of {file_path('lab', SHA)} failed "
                                     "(ReadTimeout: slow)")]
