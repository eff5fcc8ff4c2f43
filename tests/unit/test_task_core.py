"""The task cores without I/O (protocol/task_requester.py, protocol/task_provider.py): event
sequences replayed with a fake clock (plain floats), asserting on the actions they return. No
sockets, no processes, no sleeping. The same flows over real processes: tests/network/test_tasks.py."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kachery_node.identity import Keypair
from kachery_node.protocol.bucket_layout import task_result_path
from kachery_node.protocol.task_actions import (
    AcceptedRecord,
    BackendTask,
    Done,
    LookUpAccepted,
    Publish,
    ReadResult,
    RecordAcceptance,
    RecordAssignment,
    RecordOutcome,
    ReportStatus,
    SignResult,
    UploadResult,
    WakeBackends,
)
from kachery_node.protocol.task_messages import (
    INLINE_RESULT_MAX_BYTES,
    REQUEST_BAND,
    STATUS_BAND,
    LocalTaskProtocolError,
    MalformedTaskMessage,
    NoProviderError,
    TaskArgumentError,
    TaskAssignment,
    TaskError,
    TaskFunctions,
    TaskOffer,
    TaskProbe,
    TaskRequest,
    TaskStatus,
    TaskTimeouts,
    encode_result_object,
    parse_task_message,
    sign_result,
    task_hash,
)
from kachery_node.protocol.task_provider import OUTCOME_LOST, TaskProvider, TaskState
from kachery_node.protocol.task_registrations import registration_table
from kachery_node.protocol.task_requester import (
    FunctionTypes,
    Phase,
    PublishFailure,
    RequestChannel,
    TaskRequester,
)

T = TaskTimeouts()  # the defaults: offer 2, silence 20, heartbeat 5, grace 3, backend_wait 10, ...
PROVIDER, OTHER, OUTSIDER = Keypair.generate(), Keypair.generate(), Keypair.generate()
P, P2 = PROVIDER.public_hex, OTHER.public_hex
ALICE, BOB = "a" * 64, "b" * 64
ADD, KW = "t.add.1", {"a": 1, "b": 2}
H = task_hash(ADD, KW)
MS = 1_700_000_000_000


def signed(key: Keypair = PROVIDER, result: Any = 3, h: str = H, fid: str = ADD) -> dict[str, str]:
    return sign_result(key, task_hash=h, function_id=fid, result=result, now_ms=MS)


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def published(actions: list) -> list:
    return [a.message for a in of(actions, Publish)]


# ============================================================================ messages
def test_every_message_round_trips_and_parses_strictly():
    messages = [
        TaskRequest("r" * 12, ADD, KW, H), TaskRequest("r" * 12, ADD, KW, H, "query"),
        TaskOffer("r" * 12, ADD, "pure-calculation"), TaskAssignment("r" * 12, P),
        TaskStatus("r" * 12, "running", progress={"done": 3}, note="n"),
        TaskStatus("r" * 12, "finished", result_object=signed(), in_bucket=False),
        TaskStatus("r" * 12, "error", error="boom"), TaskProbe("p" * 12),
        TaskFunctions("p" * 12, ((ADD, "pure-calculation"),)),
    ]
    for message in messages:
        assert parse_task_message(message.BAND, message.to_body()) == message
        assert parse_task_message(REQUEST_BAND if message.BAND == STATUS_BAND else STATUS_BAND,
                                  message.to_body()) is None  # the wrong band: not ours
    assert "function_type" not in TaskRequest("r" * 12, ADD, KW, H).to_body()
    assert parse_task_message(REQUEST_BAND, {"type": "somethingNew"}) is None
    old_style = {"type": "taskStatus", "request_id": "r" * 12, "status": "running", "progress": [1]}
    assert parse_task_message(STATUS_BAND, old_style) == TaskStatus("r" * 12, "running")
    bad = [
        (REQUEST_BAND, {"type": "requestTask", "request_id": "short", "function_id": ADD,
                        "kwargs": {}, "task_hash": H}),
        (REQUEST_BAND, {"type": "requestTask", "request_id": "r" * 12, "function_id": "a..b",
                        "kwargs": {}, "task_hash": H}),
        (REQUEST_BAND, {"type": "requestTask", "request_id": "r" * 12, "function_id": ADD,
                        "kwargs": [1], "task_hash": H}),
        (REQUEST_BAND, {"type": "requestTask", "request_id": "r" * 12, "function_id": ADD,
                        "kwargs": {}, "task_hash": "0" * 63}),
        (REQUEST_BAND, {"type": "requestTask", "request_id": "r" * 12, "function_id": ADD,
                        "kwargs": {}, "task_hash": H, "function_type": "magic"}),
        (REQUEST_BAND, {"type": "assignTask", "request_id": "r" * 12, "provider": "me"}),
        (STATUS_BAND, {"type": "taskStatus", "request_id": "r" * 12, "status": "done"}),
        (STATUS_BAND, {"type": "taskStatus", "request_id": "r" * 12, "status": "error", "error": 7}),
        (STATUS_BAND, {"type": "taskStatus", "request_id": "r" * 12, "status": "finished",
                       "in_bucket": "yes"}),
        (STATUS_BAND, {"type": "taskFunctions", "request_id": "r" * 12, "functions": [{}]}),
        (REQUEST_BAND, ["not", "an", "object"]),
    ]
    for band, body in bad:
        with pytest.raises(MalformedTaskMessage):
            parse_task_message(band, body)


# ============================================================================ requester
def requester(*channels: RequestChannel, kwargs: dict | None = None, ftype: str | None = None,
              learned: FunctionTypes | None = None, providers: tuple[str, ...] = (P, P2),
              request_id: str = "req-000000001") -> TaskRequester:
    return TaskRequester(
        function_id=ADD, kwargs=KW if kwargs is None else kwargs, request_id=request_id,
        channels=channels or (RequestChannel("lab", True),),
        may_provide=lambda channel, node: node in providers, learned=learned or FunctionTypes(),
        timeouts=T, function_type=ftype)


def test_a_pure_calculation_reads_the_cache_first_and_a_valid_result_is_the_answer():
    req = requester(RequestChannel("lab", True), RequestChannel("lab2", True), ftype="pure-calculation")
    (read,) = req.start(0.0)
    assert read == ReadResult("lab", task_result_path("lab", H))
    (second,) = req.on_result_read(read, None, 0.1, failure="ConnectionError: bucket down")
    assert second.channel == "lab2"
    (done,) = req.on_result_read(second, encode_result_object(signed()), 0.2)
    assert isinstance(done, Done) and done.from_cache and not done.stale
    assert done.to_line()["result"] == 3 and done.to_line()["channel"] == "lab2"
    assert req.phase is Phase.ENDED and req.next_deadline() is None


def test_a_bad_cached_result_is_skipped_with_a_warning_and_a_provider_is_asked():
    req = requester(ftype="pure-calculation")
    (read,) = req.start(0.0)
    forged = encode_result_object(signed(OUTSIDER))
    (publish,) = req.on_result_read(read, forged, 0.0)
    assert publish.message == TaskRequest("req-000000001", ADD, KW, H, "pure-calculation")
    assert "does not hold provide-tasks" in req.warnings[0]


def test_the_first_offer_wins_and_later_offers_change_nothing():
    req = requester(ftype="query")
    (publish,) = req.start(0.0)
    assert isinstance(publish.message, TaskRequest) and req.next_deadline() == T.offer
    actions = req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.5)
    assert actions == [RecordAssignment("lab", "req-000000001", P, ADD),
                       Publish("lab", TaskAssignment("req-000000001", P)),
                       ReportStatus("assigned", P, channel="lab")]
    assert req.on_offer("lab", P2, TaskOffer("req-000000001", ADD, "query"), 0.6) == []
    assert req.phase is Phase.FOLLOWING and req.next_deadline() == 0.5 + T.silence


def test_an_untyped_request_learns_the_type_and_reads_the_cache_before_assigning():
    learned = FunctionTypes()
    req = requester(learned=learned)
    (publish,) = req.start(0.0)
    assert publish.message.function_type is None  # the provider will say
    (read,) = req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "pure-calculation"), 0.1)
    assert isinstance(read, ReadResult) and learned.get(ADD) == "pure-calculation"
    (done,) = req.on_result_read(read, encode_result_object(signed()), 0.2)
    assert isinstance(done, Done) and done.from_cache  # computed before: the offer is not assigned

    again = requester(learned=learned, request_id="req-000000002")
    assert again.function_type == "pure-calculation"
    (read,) = again.start(1.0)  # the cache first, then a typed requestTask
    (publish,) = again.on_result_read(read, None, 1.0)
    assert publish.message.function_type == "pure-calculation"

    fresh = requester(request_id="req-000000003")  # a cache miss: the waiting offer is assigned
    fresh.start(0.0)
    (read,) = fresh.on_offer("lab", P, TaskOffer("req-000000003", ADD, "pure-calculation"), 0.1)
    assert of(fresh.on_result_read(read, None, 0.2), RecordAssignment)[0].provider == P


def test_learned_types_are_bounded():
    types = FunctionTypes(limit=2)
    for fid in ("a.1", "b.1", "a.1", "c.1"):
        types.learn(fid, "query")
    assert types.get("b.1") is None and types.get("a.1") == types.get("c.1") == "query"


def test_no_offer_on_any_channel_a_query_falls_back_to_the_cache_as_stale():
    req = requester(RequestChannel("lab", True), RequestChannel("lab2", True), ftype="query")
    req.start(0.0)
    assert req.on_timer(T.offer - 0.01) == []
    (second,) = req.on_timer(T.offer)
    assert second.channel == "lab2" and isinstance(second.message, TaskRequest)
    assert req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 2.5) == []  # too late
    (read,) = req.on_timer(2 * T.offer)
    (read2,) = req.on_result_read(read, None, 4.0)
    (done,) = req.on_result_read(read2, encode_result_object(signed()), 4.1)
    assert done.stale and done.from_cache and "no provider answered within 2 s" in done.warnings[-1]


@pytest.mark.parametrize("ftype, suffix", [("action", ""), (None, " and no cached result is in the bucket")])
def test_no_offer_fails_with_no_provider_naming_the_channels(ftype, suffix):
    req = requester(RequestChannel("lab", True), RequestChannel("gone", False),
                    RequestChannel("lab2", True), ftype=ftype)
    req.start(0.0)
    req.on_timer(2.0)
    actions = req.on_timer(4.0)
    if ftype is None:  # unknown type: the cache may hold it
        actions = req.on_result_read(actions[0], None, 4.0)
        actions = req.on_result_read(actions[0], None, 4.0)
    (give_up,) = actions
    assert isinstance(give_up.error, NoProviderError)
    assert str(give_up.error) == (
        f"no provider on channel lab or lab2 offers function {ADD!r} (nobody answered within 2 s)" + suffix)


def test_status_following_reports_progress_and_silence_fails_the_request():
    req = requester(ftype="query")
    req.start(0.0)
    req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 1.0)
    (line,) = req.on_status("lab", P, TaskStatus("req-000000001", "running", progress=0.5), 5.0)
    assert line.to_line() == {"type": "status", "status": "running", "provider": P, "progress": 0.5}
    assert req.on_status("lab", P2, TaskStatus("req-000000001", "running"), 20.0) == []  # not ours
    assert req.on_status("lab2", P, TaskStatus("req-000000001", "running"), 20.0) == []  # elsewhere
    assert req.next_deadline() == 25.0 and req.on_timer(24.9) == []
    (give_up,) = req.on_timer(25.0)
    assert isinstance(give_up.error, TaskError) and "went silent for 20 s" in str(give_up.error)


def test_a_finished_status_is_verified_inline_or_read_from_the_bucket():
    req = requester(ftype="query")
    req.start(0.0)
    req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1)
    (done,) = req.on_status("lab", P, TaskStatus("req-000000001", "finished", result_object=signed()), 1.0)
    assert isinstance(done, Done) and not done.from_cache and done.result.provider == P

    big = requester(ftype="query")
    big.start(0.0)
    big.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1)
    (read,) = big.on_status("lab", P, TaskStatus("req-000000001", "finished", in_bucket=True), 1.0)
    assert read == ReadResult("lab", task_result_path("lab", H)) and big.next_deadline() is None
    (done,) = big.on_result_read(read, encode_result_object(signed()), 1.5)
    assert isinstance(done, Done)

    lost = requester(ftype="query")
    lost.start(0.0)
    lost.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1)
    (read,) = lost.on_status("lab", P, TaskStatus("req-000000001", "finished", in_bucket=True), 1.0)
    (give_up,) = lost.on_result_read(read, None, 11.0, failure="TimeoutError")
    assert "could not be read from the bucket: TimeoutError" in str(give_up.error)


@pytest.mark.parametrize("obj, why", [
    (signed(OTHER), "finished the task with a result signed by"),  # P2 may provide, but P sent it
    (signed(OUTSIDER), "does not hold provide-tasks"),
    (signed(h="0" * 64), "answers another task"),
    ({"body": "{}", "signature": "00"}, "malformed result object"),
    (None, "malformed result object"),
])
def test_an_invalid_fresh_result_fails_the_request_saying_why(obj, why):
    req = requester(ftype="query")
    req.start(0.0)
    req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1)
    (give_up,) = req.on_status("lab", P, TaskStatus("req-000000001", "finished", result_object=obj), 1.0)
    assert isinstance(give_up.error, TaskError) and "no valid result" in str(give_up.error)
    assert why in str(give_up.error) and why in req.warnings[0]


def test_a_remote_error_reaches_the_caller():
    req = requester(ftype="query")
    req.start(0.0)
    req.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1)
    failed = TaskStatus("req-000000001", "error", error="ZeroDivisionError: x")
    (give_up,) = req.on_status("lab", P, failed, 1)
    assert str(give_up.error) == f"{ADD} failed on {P[:12]}…: ZeroDivisionError: x"


def test_a_retry_listens_to_the_provider_it_was_assigned_to_only():
    earlier = RequestChannel("lab", True, assigned_before=P)
    answered = requester(earlier, ftype="action")
    answered.start(0.0)
    assert answered.on_offer("lab", P2, TaskOffer("req-000000001", ADD, "action"), 0.1) == []
    assert answered.on_status("lab", P2, TaskStatus("req-000000001", "error", error="x"), 0.1) == []
    (done,) = answered.on_status("lab", P, TaskStatus("req-000000001", "finished",
                                                      result_object=signed(fid=ADD)), 0.2)
    assert isinstance(done, Done)  # the recorded outcome, not a second run

    running = requester(earlier, ftype="action")
    running.start(0.0)
    (line,) = running.on_status("lab", P, TaskStatus("req-000000001", "running"), 0.5)
    assert line.status == "running" and running.phase is Phase.FOLLOWING

    silent = requester(earlier, ftype="action")
    silent.start(0.0)
    (give_up,) = silent.on_timer(2.0)
    assert "it is not given to another provider (at most once)" in str(give_up.error)


def test_a_final_status_before_any_offer_answers_a_fresh_request_too():
    req = requester(ftype="query")
    req.start(0.0)
    (give_up,) = req.on_status("lab", P, TaskStatus(
        "req-000000001", "error", error="task_hash does not match the function ID and arguments"), 0.1)
    assert "task_hash does not match" in str(give_up.error)
    unstarted = requester(ftype="query")  # nothing asked yet: nothing to answer
    assert unstarted.on_status("lab", P, TaskStatus("req-000000001", "error", error="x"), 0.1) == []


def test_publish_failures():
    req = requester(RequestChannel("lab", True), RequestChannel("lab2", True), ftype="query")
    (publish,) = req.start(0.0)
    (second,) = req.on_publish_failed(publish, PublishFailure.REFUSED, "not connected", 0.0)
    assert second.channel == "lab2" and req.warnings == ["lab: not connected"]
    (give_up,) = req.on_publish_failed(second, PublishFailure.TOO_LARGE, "70000 bytes", 0.0)
    assert isinstance(give_up.error, TaskArgumentError)

    assigning = requester(ftype="query")
    assigning.start(0.0)
    assign = of(assigning.on_offer("lab", P, TaskOffer("req-000000001", ADD, "query"), 0.1), Publish)[0]
    (give_up,) = assigning.on_publish_failed(assign, PublishFailure.REFUSED, "gone", 0.2)
    assert "could not assign" in str(give_up.error)


def test_bad_arguments_and_missing_roles_are_refused_before_anything_is_sent():
    with pytest.raises(TaskArgumentError, match="store large inputs"):
        requester(kwargs={"a": list(range(20_000))})
    with pytest.raises(TaskArgumentError):
        requester(kwargs={"a": float("nan")})
    with pytest.raises(TaskArgumentError):
        requester(ftype="magic")
    with pytest.raises(NoProviderError, match="lacks the request-tasks role on lab"):
        requester(RequestChannel("lab", False))


def test_the_driver_cannot_answer_questions_it_was_not_asked():
    req = requester(ftype="query")
    req.start(0.0)
    with pytest.raises(LocalTaskProtocolError):
        req.on_result_read(ReadResult("lab", "x"), None, 0.0)
    with pytest.raises(LocalTaskProtocolError):
        req.start(0.0)


# ============================================================================ provider
FUNCS = [{"function_id": ADD, "function_type": "pure-calculation"},
         {"function_id": "t.q.1", "function_type": "query"},
         {"function_id": "t.act.1", "function_type": "action"}]


class Ledger:
    """The answers tasks.db would give (the core asks; the test answers, as a driver would)."""

    def __init__(self) -> None:
        self.accepted: dict[tuple[str, str], dict | None] = {}

    def answer(self, core: TaskProvider, actions: list, now: float, key: Keypair = PROVIDER) -> list:
        """Carry out the questions among ``actions`` (depth first, as the drivers do); return
        the rest in order."""
        out, work = [], list(actions)
        while work:
            action = work.pop(0)
            if isinstance(action, LookUpAccepted):
                k = (action.channel, action.request.request_id)
                record = AcceptedRecord(self.accepted[k]) if k in self.accepted else None
                work[:0] = core.on_looked_up(action, record, now)
            elif isinstance(action, RecordAcceptance):
                k = (action.channel, action.request_id)
                newly = k not in self.accepted
                self.accepted.setdefault(k, None)
                work[:0] = core.on_acceptance_recorded(action, newly, now)
            elif isinstance(action, RecordOutcome):
                self.accepted[(action.channel, action.request_id)] = action.status.to_body()
                out.append(action)
            elif isinstance(action, SignResult):
                obj = sign_result(key, task_hash=action.task_hash, function_id=action.function_id,
                                  result=action.result, now_ms=MS)
                work[:0] = core.on_result_signed(action, obj, now)
            else:
                out.append(action)
        return out


def provider(functions: list | None = None, backend: str = "b1", now: float = 0.0) -> TaskProvider:
    keys = (f"key{i}" for i in itertools.count())
    core = TaskProvider(T, new_key=lambda: next(keys))
    core.poll_started(backend, registration_table(FUNCS if functions is None else functions), [], now)
    return core


def request(rid: str, fid: str = ADD, kwargs: dict | None = None, **extra: Any) -> TaskRequest:
    kwargs = KW if kwargs is None else kwargs
    return TaskRequest(rid, fid, kwargs, extra.pop("task_hash", task_hash(fid, kwargs)), **extra)


def offer_and_assign(core: TaskProvider, ledger: Ledger, rid: str, now: float = 0.0,
                     fid: str = ADD, requester_id: str = ALICE, kwargs: dict | None = None) -> list:
    offered = ledger.answer(core, core.on_request("lab", requester_id, request(rid, fid, kwargs), now,
                                                  we_provide=True, sender_may_request=True), now)
    assert [type(m) for m in published(offered)] == [TaskOffer]
    return ledger.answer(core, core.on_assign("lab", requester_id, TaskAssignment(rid, P), now, we=P), now)


def test_a_provider_offers_only_what_a_backend_registered_to_whom_may_request():
    core, ledger = provider(), Ledger()
    facts = {"we_provide": True, "sender_may_request": True}
    assert core.on_request("lab", ALICE, request("r-000000001", "t.other.1"), 0, **facts) == []
    assert core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=False,
                           sender_may_request=True) == []
    assert core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=True,
                           sender_may_request=False) == []
    (look,) = core.on_request("lab", ALICE, request("r-000000001"), 0, **facts)
    assert look == LookUpAccepted("lab", ALICE, request("r-000000001"), "pure-calculation")
    (offer,) = published(ledger.answer(core, [look], 0))
    assert offer == TaskOffer("r-000000001", ADD, "pure-calculation")
    # the same request again (a retry): offered again; from someone else: nothing
    assert published(core.on_request("lab", ALICE, request("r-000000001"), 1, **facts)) == [offer]
    assert core.on_request("lab", BOB, request("r-000000001"), 1, **facts) == []


@pytest.mark.parametrize("req, error", [
    (request("r-000000001", task_hash="0" * 64), "task_hash does not match the function ID and arguments"),
    (request("r-000000001", function_type="action"), f"{ADD} is a pure-calculation here, not a action"),
])
def test_a_request_that_does_not_match_gets_an_error_status(req, error):
    core = provider()
    actions = Ledger().answer(core, core.on_request("lab", ALICE, req, 0, we_provide=True,
                                                    sender_may_request=True), 0)
    assert published(actions) == [TaskStatus("r-000000001", "error", error=error)]


def test_a_request_the_ledger_knows_is_answered_from_the_record_and_never_offered():
    core, ledger = provider(), Ledger()
    done = TaskStatus("r-000000001", "finished", result_object=signed()).to_body()
    ledger.accepted[("lab", "r-000000001")] = done
    ledger.accepted[("lab", "r-000000002")] = None  # accepted, then the provider restarted
    facts = {"we_provide": True, "sender_may_request": True}
    asked = core.on_request("lab", ALICE, request("r-000000001"), 0, **facts)
    (answer,) = published(ledger.answer(core, asked, 0))
    assert answer.to_body() == done
    asked = core.on_request("lab", ALICE, request("r-000000002"), 0, **facts)
    (lost,) = published(ledger.answer(core, asked, 0))
    assert lost == TaskStatus("r-000000002", "error", error=OUTCOME_LOST)


def test_only_the_requester_assigns_and_an_assignment_to_another_provider_forgets_the_offer():
    core, ledger = provider(), Ledger()
    ledger.answer(core, core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=True,
                                        sender_may_request=True), 0)
    assert core.on_assign("lab", BOB, TaskAssignment("r-000000001", P), 0.1, we=P) == []  # mallory
    assert core.on_assign("lab", ALICE, TaskAssignment("r-000000001", P2), 0.2, we=P) == []
    assert core.on_assign("lab", ALICE, TaskAssignment("r-000000001", P), 0.3, we=P) == []  # forgotten


def test_an_assignment_is_recorded_before_it_is_queued_and_at_most_once():
    core, ledger = provider(), Ledger()
    ledger.answer(core, core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=True,
                                        sender_may_request=True), 0)
    (record,) = core.on_assign("lab", ALICE, TaskAssignment("r-000000001", P), 0.1, we=P)
    assert record == RecordAcceptance("lab", "r-000000001", ADD, ALICE)
    assert core.on_acceptance_recorded(record, False, 0.1) == []  # accepted before: never runs
    assert core.take("b1", 5, 0.2) == ([], [])

    core, ledger = provider(), Ledger()
    actions = offer_and_assign(core, ledger, "r-000000001")
    assert published(actions) == [TaskStatus("r-000000001", "queued")]
    assert of(actions, WakeBackends) and actions.index(of(actions, WakeBackends)[0]) > 0


def test_a_backend_takes_the_tasks_it_offers_oldest_first():
    core, ledger = provider(), Ledger()
    core.poll_started("b2", registration_table(FUNCS[1:]), [], 0)  # no t.add.1
    offer_and_assign(core, ledger, "r-000000001")
    offer_and_assign(core, ledger, "r-000000002", fid="t.q.1")
    offer_and_assign(core, ledger, "r-000000003", fid="t.q.1", kwargs={"x": 1})
    tasks, actions = core.take("b2", 1, 1.0)
    assert [t.request_id for t in tasks] == ["r-000000002"]
    assert isinstance(tasks[0], BackendTask) and tasks[0].to_json()["requester"] == ALICE
    assert published(actions) == [TaskStatus("r-000000002", "running")]
    assert core.take("b2", 0, 1.0) == ([], [])
    assert [t.request_id for t in core.take("b1", 5, 1.0)[0]] == ["r-000000001", "r-000000003"]
    assert core.describe_backends(1.0) == [
        {"backend_id": "b1", "functions": ["t.act.1", ADD, "t.q.1"], "running": 2},
        {"backend_id": "b2", "functions": ["t.act.1", "t.q.1"], "running": 1}]


def run_one(core: TaskProvider, ledger: Ledger, rid: str, fid: str = ADD, now: float = 0.0) -> str:
    offer_and_assign(core, ledger, rid, now, fid=fid)
    (task,), _ = core.take("b1", 1, now)
    return task.task_key


def test_progress_and_a_small_result_inline_then_uploaded():
    core, ledger = provider(), Ledger()
    key = run_one(core, ledger, "r-000000001")
    assert published(core.on_update("b1", key, "running", 1.0, progress={"step": 2})) == [
        TaskStatus("r-000000001", "running", progress={"step": 2})]
    assert published(core.on_update("b1", key, "running", 1.1, progress=[1, 2])) == [
        TaskStatus("r-000000001", "running")]  # a list is not a progress value: not sent
    (sign,) = core.on_update("b1", key, "finished", 2.0, result=3)
    assert isinstance(sign, SignResult) and sign.result == 3
    actions = ledger.answer(core, [sign], 2.0)
    (status,) = published(actions)
    assert status.status == "finished" and status.result_object["signature"]
    assert isinstance(actions[-1], UploadResult) and actions[-1].task_key is None  # off the critical path
    assert ledger.accepted[("lab", "r-000000001")] == status.to_body()  # the outcome is recorded
    assert core.describe_backends(2.0)[0]["running"] == 0
    with pytest.raises(TaskError, match="no task"):
        core.on_update("b1", key, "running", 3.0)


def test_an_action_result_is_never_uploaded_and_a_large_one_fails():
    core, ledger = provider(), Ledger()
    key = run_one(core, ledger, "r-000000001", fid="t.act.1")
    actions = ledger.answer(core, core.on_update("b1", key, "finished", 1.0, result="ok"), 1.0)
    assert not of(actions, UploadResult) and published(actions)[0].status == "finished"
    key = run_one(core, ledger, "r-000000002", fid="t.act.1")
    big = "x" * (INLINE_RESULT_MAX_BYTES + 1)
    actions = ledger.answer(core, core.on_update("b1", key, "finished", 1.0, result=big), 1.0)
    assert "too large to send inline, and action results are not cached" in published(actions)[0].error


def test_a_large_result_goes_through_the_bucket_and_finished_waits_for_the_upload():
    core, ledger = provider(), Ledger()
    big = "x" * (INLINE_RESULT_MAX_BYTES + 1)
    for rid, ok in (("r-000000001", True), ("r-000000002", False)):
        key = run_one(core, ledger, rid, fid="t.q.1")
        (upload,) = ledger.answer(core, core.on_update("b1", key, "finished", 1.0, result=big), 1.0)
        assert upload.task_key == key and upload.path == task_result_path("lab", task_hash("t.q.1", KW))
        (status,) = published(core.on_result_uploaded(upload, ok, 2.0))
        if ok:
            assert status == TaskStatus(rid, "finished", in_bucket=True)
        else:
            assert status.status == "error" and "the upload to the bucket failed" in status.error
        core, ledger = provider(), Ledger()


def test_backend_reports_that_make_no_sense_are_refused():
    core, ledger = provider(), Ledger()
    key = run_one(core, ledger, "r-000000001")
    with pytest.raises(TaskError):
        core.on_update("b2", key, "running", 1.0)  # not its task
    with pytest.raises(TaskError):
        core.on_update("b1", "nope", "running", 1.0)
    with pytest.raises(TaskArgumentError, match="unknown task status"):
        core.on_update("b1", key, "done", 1.0)
    (sign,) = core.on_update("b1", key, "finished", 1.0, result={1, 2})
    actions = core.on_result_signed(sign, None, 1.0, error="task result is not JSON-serializable")
    assert published(actions)[0].error == "task result is not JSON-serializable"


def test_identical_calculations_share_one_computation_its_progress_and_its_result():
    core, ledger = provider(), Ledger()
    offer_and_assign(core, ledger, "r-000000001")
    (task,), _ = core.take("b1", 5, 0.5)
    core.on_update("b1", task.task_key, "running", 0.6, progress=40)
    actions = offer_and_assign(core, ledger, "r-000000002", 1.0, requester_id=BOB)
    assert published(actions) == [
        TaskStatus("r-000000002", "queued", note="the same calculation is already under way here"),
        TaskStatus("r-000000002", "running", progress=40)]
    assert not of(actions, WakeBackends) and core.take("b1", 5, 1.0) == ([], [])
    assert [s.request_id for s in published(core.on_update("b1", task.task_key, "running", 1.5))] == [
        "r-000000001", "r-000000002"]
    finished = published(ledger.answer(core, core.on_update("b1", task.task_key, "finished", 2.0,
                                                            result=3), 2.0))
    assert [(s.request_id, s.status) for s in finished] == [("r-000000001", "finished"),
                                                             ("r-000000002", "finished")]
    assert finished[0].result_object == finished[1].result_object  # it names the task, not the request
    assert ledger.accepted[("lab", "r-000000002")]["status"] == "finished"
    # after it ended, the same calculation runs anew (its requester found no valid cached result)
    offer_and_assign(core, ledger, "r-000000003", 3.0)
    assert len(core.take("b1", 5, 3.0)[0]) == 1


def test_a_failed_computation_fails_its_followers():
    core, ledger = provider(), Ledger()
    key = run_one(core, ledger, "r-000000001")
    offer_and_assign(core, ledger, "r-000000002", requester_id=BOB)
    errors = published(core.on_update("b1", key, "error", 1.0, error="ZeroDivisionError: b"))
    assert [(s.request_id, s.error) for s in errors] == [("r-000000001", "ZeroDivisionError: b"),
                                                         ("r-000000002", "ZeroDivisionError: b")]


def test_queries_and_actions_run_once_per_request():
    core, ledger = provider(), Ledger()
    for fid in ("t.q.1", "t.act.1"):
        offer_and_assign(core, ledger, f"{fid}-r1", fid=fid)
        offer_and_assign(core, ledger, f"{fid}-r2", fid=fid, requester_id=BOB)
    assert len(core.take("b1", 10, 0.0)[0]) == 4


def test_held_tasks_heartbeat_their_last_status():
    core, ledger = provider(), Ledger()
    key = run_one(core, ledger, "r-000000001")
    core.on_update("b1", key, "running", 1.0, progress=1)
    assert core.next_deadline() == 1.0 + T.heartbeat
    assert core.on_timer(5.9) == []
    beat = core.on_timer(6.0)
    assert published(beat) == [TaskStatus("r-000000001", "running", progress=1)]
    assert core.next_deadline() == 6.0 + T.heartbeat


def test_an_offer_nobody_assigns_is_forgotten_after_its_ttl():
    core, ledger = provider(), Ledger()
    ledger.answer(core, core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=True,
                                        sender_may_request=True), 0)
    core.poll_started("b1", registration_table(FUNCS), [], 0)  # keep b1 registered
    assert core.next_deadline() == T.offer_ttl and core.on_timer(T.offer_ttl) == []
    assert core.on_assign("lab", ALICE, TaskAssignment("r-000000001", P), 31, we=P) == []


def test_a_finished_request_is_answered_from_memory_then_from_the_ledger():
    core, ledger = provider(), Ledger()
    core.poll_started("b1", registration_table(FUNCS), [], 0)  # a second poll: b1 stays registered
    key = run_one(core, ledger, "r-000000001")
    ledger.answer(core, core.on_update("b1", key, "finished", 1.0, result=3), 1.0)
    facts = {"we_provide": True, "sender_may_request": True}
    (again,) = published(core.on_request("lab", ALICE, request("r-000000001"), 50.0, **facts))
    assert again.status == "finished"
    core.on_timer(1.0 + T.keep_finished)  # forgotten here; tasks.db keeps it
    (look,) = core.on_request("lab", ALICE, request("r-000000001"), 200.0, **facts)
    assert published(ledger.answer(core, [look], 200.0))[0].status == "finished"


def test_a_backend_that_stops_polling_loses_its_tasks():
    core, ledger = provider(), Ledger()
    keys = {fid: run_one(core, ledger, f"{fid}-req", fid=fid) for fid in (ADD, "t.q.1", "t.act.1")}
    core.poll_ended("b1", 10.0)
    assert core.describe_backends(12.9) and core.next_deadline() <= 13.0
    actions = core.on_timer(13.0)
    statuses = {s.request_id: s for s in published(actions)}
    assert statuses[f"{ADD}-req"].note == "the task backend stopped; queued again"
    assert statuses["t.q.1-req"].status == "queued"
    assert "it is not run again" in statuses["t.act.1-req"].error
    assert of(actions, WakeBackends) and core.describe_backends(13.0) == []
    with pytest.raises(TaskError):
        core.on_update("b1", keys[ADD], "finished", 13.5, result=3)
    core.poll_started("b9", registration_table(FUNCS), [], 14.0)  # the next backend runs them
    assert sorted(t.function_id for t in core.take("b9", 5, 14.0)[0]) == [ADD, "t.q.1"]


def test_a_backend_whose_connection_closed_is_gone_at_once():
    core, ledger = provider(), Ledger()
    run_one(core, ledger, "r-000000001", fid="t.act.1")
    core.poll_ended("b1", 5.0)
    core.backend_gone("b1")
    assert core.next_deadline() <= 5.0 and core.describe_backends(5.0) == []
    assert "it is not run again" in published(core.on_timer(5.0))[0].error


def test_a_queued_task_that_no_backend_offers_any_more_fails():
    core, ledger = provider(), Ledger()
    offer_and_assign(core, ledger, "r-000000001", 0.0)
    core.poll_ended("b1", 0.0)
    core.backend_gone("b1")  # gone before taking it
    actions = core.on_timer(1.0)
    assert published(actions) == []  # a backend may come back (a restart) within backend_wait
    beat = published(core.on_timer(T.backend_wait - 0.1))
    assert [s.status for s in beat] == ["queued"]  # a heartbeat: it still waits
    assert core.next_deadline() == T.backend_wait
    (failed,) = published(core.on_timer(T.backend_wait))
    assert "no task backend on this node offers t.add.1 any more" in failed.error

    core, ledger = provider(), Ledger()  # a backend that registers less than before
    offer_and_assign(core, ledger, "r-000000002", 0.0)
    core.poll_started("b1", registration_table(FUNCS[1:]), [], 4.0)
    assert published(core.on_timer(4.0)) == []
    assert [s.status for s in published(core.on_timer(T.backend_wait))] == ["error"]

    core, ledger = provider(), Ledger()  # a backend restarted in time runs it
    offer_and_assign(core, ledger, "r-000000003", 0.0)
    core.backend_gone("b1")
    core.poll_ended("b1", 0.0)
    core.backend_gone("b1")
    core.on_timer(0.0)
    core.poll_started("b2", registration_table(FUNCS), [], T.backend_wait - 1)
    assert [s.status for s in published(core.on_timer(T.backend_wait))] == ["queued"]
    assert len(core.take("b2", 1, T.backend_wait)[0]) == 1


def test_a_probe_lists_the_registered_functions():
    core = provider([{"function_id": ADD, "function_type": "pure-calculation"},
                     {"function_id": "t.q.1", "function_type": "query", "channels": ["other"]}])
    (answer,) = published(core.on_probe("lab", ALICE, TaskProbe("p" * 12), 0, we_provide=True,
                                        sender_may_request=True))
    assert answer == TaskFunctions("p" * 12, ((ADD, "pure-calculation"),))
    assert core.on_probe("lab", ALICE, TaskProbe("p" * 12), 0, we_provide=True,
                         sender_may_request=False) == []


def test_registration_tables_are_checked():
    for bad in ("x", [1], [{"function_id": "a..b", "function_type": "query"}],
                [{"function_id": "a.1", "function_type": "magic"}],
                [{"function_id": "a.1", "function_type": "query", "channels": "lab"}]):
        with pytest.raises(TaskArgumentError):
            registration_table(bad)


def test_the_states_a_request_passes_through():
    core, ledger = provider(), Ledger()
    states = [core.state("lab", "r-000000001")]
    ledger.answer(core, core.on_request("lab", ALICE, request("r-000000001"), 0, we_provide=True,
                                        sender_may_request=True), 0)
    states.append(core.state("lab", "r-000000001"))
    (record,) = core.on_assign("lab", ALICE, TaskAssignment("r-000000001", P), 0, we=P)
    states.append(core.state("lab", "r-000000001"))
    ledger.answer(core, [record], 0)
    states.append(core.state("lab", "r-000000001"))
    (task,), _ = core.take("b1", 1, 0)
    states.append(core.state("lab", "r-000000001"))
    ledger.answer(core, core.on_update("b1", task.task_key, "finished", 1, result=3), 1)
    states.append(core.state("lab", "r-000000001"))
    core.on_timer(1 + T.keep_finished)
    states.append(core.state("lab", "r-000000001"))
    assert states == [None, TaskState.OFFERED, TaskState.ACCEPTING, TaskState.QUEUED,
                      TaskState.RUNNING, TaskState.FINISHED, None]




TASK_CORE_MODULES = ["task_messages", "task_requester", "task_provider", "task_actions",
                     "task_registrations", "canonical_json"]
NO_IO = {"anyio", "trio", "httpx", "sqlite3", "time", "asyncio", "socket"}


def _module_source(name: str) -> str | None:
    """The source of module ``name`` of this project, or None (not a module, a package's
    ``__init__``, or someone else's)."""
    import importlib.util

    if name.split(".")[0] not in ("kachery_node", "kachery_feeds"):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a name imported from a module, not a module
        return None
    origin = spec.origin if spec else None
    if origin is None or not origin.endswith(".py") or origin.endswith("__init__.py"):
        return None
    with open(origin, encoding="utf-8") as f:
        return f.read()


def test_the_task_cores_import_no_io():
    """The tasks flow's modules in protocol/ import no I/O or clock (issue 12), neither directly
    nor through the project modules they import, followed to the end (read from the sources;
    the packages' ``__init__`` facades, which load the node's whole public API, are not
    followed)."""
    import ast

    seen: set[str] = set()
    todo = [f"kachery_node.protocol.{name}" for name in TASK_CORE_MODULES]
    while todo:
        module = todo.pop()
        text = None if module in seen else _module_source(module)
        seen.add(module)
        if text is None:
            continue
        package = module.split(".")[:-1]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = package[: len(package) - node.level + 1] if node.level else []
                base = ".".join(parts + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in NO_IO, f"{module} imports {name}"
            todo += names
    assert "kachery_node.protocol.bucket_layout" in seen  # the walk did follow the imports
