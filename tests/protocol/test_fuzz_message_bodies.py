"""The node protocol's message *body* parsers return their typed message or raise their typed
error on any input: feed messages (feed_messages.parse: MalformedFeedMessage), witness and fork
messages (witness_messages.parse: MalformedFeedMessage), file messages (FileRequest.parse /
parse_request, UploadStatus.parse / parse_status: MalformedFileMessage) and task messages
(parse_task_message and each message class's parse: MalformedTaskMessage). The envelope that
carries a body is fuzzed in test_fuzz_decoders.py; membership payloads there too.

Each parser gets valid bodies of every message type it accepts (built with the messages' own
``to_body``/attachment), mutated as Python dicts (fields changed, dropped, added, retyped, and
changed inside their lists and objects), mutated as JSON text and read back leniently (Infinity,
integers beyond 64 bits), and arbitrary objects; with arbitrary attachments and on every band
(valid and not). Values include what no JSON reader makes but a caller could pass: integers too
long to print, a list nested 100,000 deep, lone surrogates, NaN. A parsed message must encode
back (``to_body``, and its attachment) to a body that parses to the same message, and that the
other band refuses (feeds) or ignores (tasks: None).
``KACHERY_FUZZ_EXAMPLES=5000`` for a longer hunt than CI's 200.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_node.protocol import feed_messages as fm
from kachery_node.protocol import file_messages as fim
from kachery_node.protocol import task_messages as tm
from kachery_node.protocol import witness_messages as wm

from .test_fuzz_decoders import FUZZ, json_values, loads_leniently, mutate_bytes, mutate_object

# ----------------------------------------------------------------------------- values
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)
counts = st.integers(0, fm.MAX_SAFE_INTEGER)
#: JSON values a valid body may hold (integers within what kachery's JSON reads: 64 bits).
wire_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.integers(-(2**63), 2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=8)


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


#: Values only a Python caller can pass (no JSON reader makes them), drawn by name: hypothesis
#: cannot print some of them (it fails on the deep list and on the long integers).
HOSTILE = {"10**5000": 10**5000, "-10**5000": -(10**5000), "100,000 deep": _deep(100_000),
           "[[[[10**5000]]]]": [[[[10**5000]]]], "{a: {b: -10**5000}}": {"a": {"b": -(10**5000)}},
           "nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"), "-0.0": -0.0,
           "lone surrogate": "\ud800", "100,000 x": "x" * 100_000, "bytes": b"ab",
           "tuple": ("a", 1), "int keys": {1: 2}, "None key": {None: 1}, "object": object()}
edge_numbers = st.sampled_from([0, -1, 1, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
                                10**400, True, False, 0.0, 1.0, 1.5, 1e300])
values = st.one_of(json_values, edge_numbers,
                   st.text(st.characters(codec=None, categories=["Cs", "Co", "Lo", "So", "Zs"]),
                           max_size=5),
                   hex64, hex40, st.lists(st.lists(json_values, max_size=3), max_size=3))


ALL_HOSTILE = tuple(HOSTILE)


def any_value(data: st.DataObject, hostile: tuple[str, ...]):
    """A value of :data:`values`, or (one time in six) of ``hostile`` (names in :data:`HOSTILE`)."""
    if data.draw(st.integers(0, 5)) == 0:
        return HOSTILE[data.draw(st.sampled_from(hostile))]
    return data.draw(values)


FEED_TYPES = (fm.SUBSCRIBE, fm.SUBSCRIBE_MANY, fm.NEW_MESSAGES, fm.UPLOADED, fm.HELD,
              fm.PROVIDER_CONNECTED)
ALL_TYPES = (*FEED_TYPES, *sorted(wm.TYPES), fim.REQUEST_FILE, fim.UPLOAD_STATUS,
             *sorted(tm._MESSAGE_CLASSES), "", "nope", "requestfile", "Offer")
BANDS = (fm.REQUEST_BAND, fm.PROVIDE_BAND, fim.REQUEST_BAND, fim.STATUS_BAND, tm.REQUEST_BAND,
         tm.STATUS_BAND, "", "membership", "REQUEST-FEEDS", "provide-feeds ", "provide-feeds\n")
bands = st.one_of(st.sampled_from(BANDS), st.text(max_size=15))
FIELDS = ("type", "feed_id", "subfeed_hash", "position", "count", "subfeeds", "renewal",
          "unsigned_pushes", "bucket_rejected", "size", "cosignature", "sha1", "request_id",
          "chunk_of", "start", "end", "bad_object", "status", "bytes", "error", "function_id",
          "function_type", "kwargs", "task_hash", "provider", "progress", "note", "result_object",
          "in_bucket", "functions", "extra")


def mutate_value(value, data: st.DataObject, hostile: tuple[str, ...], depth: int = 0):
    """``value`` changed somewhere: replaced outright, or (a list or object) inside."""
    if depth < 3 and isinstance(value, list) and value and data.draw(st.booleans()):
        value = list(value)
        i = data.draw(st.integers(0, len(value) - 1))
        action = data.draw(st.sampled_from(["inner", "delete", "append", "wrap"]))
        if action == "inner":
            value[i] = mutate_value(value[i], data, hostile, depth + 1)
        elif action == "delete":
            del value[i]
        elif action == "append":
            value.append(any_value(data, hostile))
        else:
            value[i] = [value[i]]
        return value
    if depth < 3 and isinstance(value, dict) and data.draw(st.booleans()):
        return mutate_body(value, data, hostile, depth + 1)
    return any_value(data, hostile)


def mutate_body(body: dict, data: st.DataObject, hostile: tuple[str, ...], depth: int = 0) -> dict:
    """``body`` with 1 to 3 changes: a field dropped, replaced, added, changed inside, or the
    message's type changed to another (of any module)."""
    body = dict(body)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*sorted(body, key=repr), *FIELDS]))
        action = data.draw(st.sampled_from(["delete", "change", "retype"]))
        if action == "delete":
            body.pop(key, None)
        elif action == "retype" and depth == 0:
            body["type"] = data.draw(st.sampled_from(ALL_TYPES))
        else:
            body[key] = mutate_value(body.get(key), data, hostile, depth)
    return body


def arbitrary_body(data: st.DataObject, hostile: tuple[str, ...]) -> dict:
    body = data.draw(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)),
                                     values, max_size=6))
    if data.draw(st.booleans()):
        body[data.draw(st.sampled_from(FIELDS))] = any_value(data, hostile)
    if data.draw(st.booleans()):
        body["type"] = data.draw(st.sampled_from(ALL_TYPES))
    return body


def fuzzed_body(valid: dict, data: st.DataObject, hostile: tuple[str, ...] = ALL_HOSTILE
                ) -> dict | None:
    """What a parser gets: ``valid`` as is, mutated, mutated as JSON text and read back by
    Python's json (None if that text is no JSON object), or an arbitrary object."""
    how = data.draw(st.sampled_from(["as is", "mutated", "text", "arbitrary"]))
    if how == "as is":
        return valid
    if how == "mutated":
        return mutate_body(valid, data, hostile)
    if how == "text":
        body = loads_leniently(mutate_object(valid, data))
        return body if isinstance(body, dict) else None
    return arbitrary_body(data, hostile)


def fuzzed_attachment(valid: bytes | None, data: st.DataObject) -> bytes | None:
    how = data.draw(st.sampled_from(["as is", "as is", "none", "empty", "mutated", "arbitrary"]))
    if how == "as is":
        return valid
    if how == "none":
        return None
    if how == "empty":
        return b""
    if how == "mutated":
        return mutate_bytes(valid or b"", data)
    return data.draw(st.binary(max_size=100))


# ----------------------------------------------------------------------------- feed messages
wire_lines = st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), min_size=1,
                      max_size=3).map(tuple)
feed_messages = st.one_of(
    st.builds(fm.SubscribeToSubfeed, hex64, hex40, counts, st.booleans(), st.booleans(),
              st.booleans()),
    st.builds(fm.SubscribeToSubfeeds, hex64, st.lists(st.tuples(hex40, counts), min_size=1,
                                                       max_size=4).map(tuple),
              st.booleans(), st.booleans()),
    st.builds(fm.NewSubfeedMessages, hex64, hex40, wire_lines),
    st.builds(fm.SubfeedUploaded, hex64, hex40, counts),
    st.builds(fm.SubfeedsHeld, hex64, st.lists(st.tuples(hex40, counts), min_size=1,
                                               max_size=4).map(tuple)),
    st.just(fm.ProviderConnected()))


@FUZZ
@given(feed_messages, st.data())
def test_feed_messages(message, data) -> None:
    assert fm.parse(message.band, message.to_body(), message.attachment()) == message
    band = data.draw(st.one_of(st.just(message.band), bands))
    body = fuzzed_body(message.to_body(), data, ALL_HOSTILE)
    if body is None:
        return
    try:
        parsed = fm.parse(band, body, fuzzed_attachment(message.attachment(), data))
    except fm.MalformedFeedMessage:
        return
    assert isinstance(parsed, fm.SubscribeToSubfeed | fm.SubscribeToSubfeeds
                      | fm.NewSubfeedMessages | fm.SubfeedUploaded | fm.SubfeedsHeld
                      | fm.ProviderConnected)
    assert band == parsed.band
    assert fm.parse(band, parsed.to_body(), parsed.attachment()) == parsed
    other = fm.PROVIDE_BAND if band == fm.REQUEST_BAND else fm.REQUEST_BAND
    with pytest.raises(fm.MalformedFeedMessage):
        fm.parse(other, parsed.to_body(), parsed.attachment())


# ----------------------------------------------------------------------------- witness messages
witness_messages = st.one_of(
    st.builds(wm.SubfeedCheckpoint, hex64, hex40, st.integers(1, fm.MAX_SAFE_INTEGER),
              st.one_of(st.none(), st.binary(max_size=60))),
    st.builds(wm.ForkProof, hex64, hex40, counts, st.one_of(st.none(), st.binary(max_size=60))),
    st.builds(wm.CheckpointCosignature, hex64, hex40, st.integers(1, fm.MAX_SAFE_INTEGER),
              st.text(string.printable, max_size=300)))


def _witness_attachment(message) -> bytes | None:
    if isinstance(message, wm.SubfeedCheckpoint):
        return message.witnessed
    if isinstance(message, wm.ForkProof):
        return message.proof
    return None


@FUZZ
@given(witness_messages, st.data())
def test_witness_messages(message, data) -> None:
    assert wm.parse(message.to_body(), _witness_attachment(message)) == message
    body = fuzzed_body(message.to_body(), data, ALL_HOSTILE)
    if body is None:
        return
    try:
        parsed = wm.parse(body, fuzzed_attachment(_witness_attachment(message), data))
    except fm.MalformedFeedMessage:
        return
    assert isinstance(parsed, wm.SubfeedCheckpoint | wm.ForkProof | wm.CheckpointCosignature)
    assert wm.parse(parsed.to_body(), _witness_attachment(parsed)) == parsed


# ----------------------------------------------------------------------------- file messages
request_ids = st.text(string.ascii_letters + string.digits + "-_", min_size=8, max_size=64)


@st.composite
def file_requests(draw) -> fim.FileRequest:
    chunk_of = None
    size = draw(st.one_of(st.none(), counts))
    if draw(st.booleans()):
        start = draw(st.integers(0, 2**40))
        end = start + draw(st.integers(1, fim.CHUNK_SIZE))
        chunk_of = fim.ChunkRef(draw(hex40), start, end)
        size = draw(st.sampled_from([None, end - start]))
    return fim.FileRequest(draw(hex40), draw(request_ids), size, chunk_of, draw(st.booleans()))


file_messages = st.one_of(
    file_requests(),
    st.builds(fim.UploadStatus, hex40, st.sampled_from(fim.Status),
              st.one_of(st.none(), st.text(max_size=64)), st.one_of(st.none(), counts),
              st.one_of(st.none(), counts), st.one_of(st.none(), st.text(max_size=40))))


@FUZZ
@given(file_messages, st.data())
def test_file_messages(message, data) -> None:
    """Both parsers, each on bodies of both types (the exchange hands each band to one)."""
    assert type(message).parse(message.to_body()) == message
    body = fuzzed_body(message.to_body(), data)
    if body is None:
        return
    for parse in (fim.parse_request, fim.parse_status, fim.FileRequest.parse, fim.UploadStatus.parse):
        try:
            parsed = parse(body)
        except fim.MalformedFileMessage:
            continue
        assert isinstance(parsed, fim.FileRequest | fim.UploadStatus)
        assert type(parsed).parse(parsed.to_body()) == parsed


# ----------------------------------------------------------------------------- task messages
function_ids = st.from_regex(r"[A-Za-z0-9@_-]{1,8}(\.[A-Za-z0-9@_-]{1,8}){0,3}", fullmatch=True)
function_types = st.sampled_from(tm.FUNCTION_TYPES)
json_objects = st.dictionaries(st.text(max_size=6), wire_values, max_size=3)
task_messages = st.one_of(
    st.builds(tm.TaskRequest, request_ids, function_ids, json_objects, hex64,
              st.one_of(st.none(), function_types)),
    st.builds(tm.TaskOffer, request_ids, function_ids, st.one_of(st.none(), function_types)),
    st.builds(tm.TaskAssignment, request_ids, hex64),
    st.builds(tm.TaskStatus, request_ids, st.sampled_from(tm.STATUSES),
              st.one_of(st.none(), st.text(max_size=10), st.integers(-(2**63), 2**63),
                        st.floats(allow_nan=False), json_objects),
              st.one_of(st.none(), st.text(max_size=10)), st.one_of(st.none(), st.text(max_size=10)),
              wire_values, st.booleans()),
    st.builds(tm.TaskProbe, request_ids),
    st.builds(tm.TaskFunctions, request_ids,
              st.lists(st.tuples(function_ids, function_types), max_size=3).map(tuple)))


@FUZZ
@given(task_messages, st.data())
def test_task_messages(message, data) -> None:
    """parse_task_message on every band (None: not a task message of that band), and the
    message classes' own parsers on every body."""
    assert tm.parse_task_message(message.BAND, message.to_body()) == message
    band = data.draw(st.one_of(st.just(message.BAND), bands))
    body = fuzzed_body(message.to_body(), data)
    if body is None or data.draw(st.integers(0, 9)) == 0:
        body = any_value(data, ALL_HOSTILE)  # parse_task_message takes any value
    try:
        parsed = tm.parse_task_message(band, body)
    except tm.MalformedTaskMessage:
        parsed = None
    if parsed is not None:
        assert band == parsed.BAND
        assert tm.parse_task_message(band, parsed.to_body()) == parsed
        other = tm.STATUS_BAND if band == tm.REQUEST_BAND else tm.REQUEST_BAND
        assert tm.parse_task_message(other, parsed.to_body()) is None
    if not isinstance(body, dict):
        return
    for cls in tm._MESSAGE_CLASSES.values():
        try:
            parsed = cls.parse(body)
        except tm.MalformedTaskMessage:
            continue
        assert type(parsed) is cls and cls.parse(parsed.to_body()) == parsed


# ----------------------------------------------------------------------------- regressions
F, H = "a" * 64, "b" * 40
DEEP = HOSTILE["100,000 deep"]
LONG = HOSTILE["10**5000"]  # repr raises ValueError: "Exceeds the limit (4300 digits) ..."


def _refused(parse, *args, error: type[Exception]) -> None:
    try:
        parse(*args)
    except error:
        return
    raise AssertionError(f"{parse.__qualname__} accepted it")  # (a repr of args may fail)


def test_task_message_regressions() -> None:
    """parse_task_message raised TypeError on an unhashable type; the function ID's check
    RecursionError or ValueError (its message held the value's repr)."""
    for kind in ([], {}, [DEEP], {"a": 1}):
        assert tm.parse_task_message(tm.REQUEST_BAND, {"type": kind}) is None
    offer = tm.TaskOffer("r" * 8, "f.1").to_body()
    functions = tm.TaskFunctions("r" * 8, (("f.1", "query"),)).to_body()
    for bad in (DEEP, LONG, -LONG, [[[[LONG]]]], {"a": {"b": LONG}}):
        _refused(tm.parse_task_message, tm.STATUS_BAND, {**offer, "function_id": bad},
                 error=tm.MalformedTaskMessage)
        _refused(tm.TaskFunctions.parse, {**functions, "functions": [{"function_id": bad}]},
                 error=tm.MalformedTaskMessage)
        _refused(tm.validate_function_type, bad, error=tm.TaskArgumentError)


def test_file_message_regressions() -> None:
    """The file parsers' errors held the value's repr: RecursionError, ValueError."""
    request = fim.FileRequest(H, "r" * 8).to_body()
    status = fim.UploadStatus(H, "started").to_body()
    for bad in (DEEP, LONG, -LONG, [[[[LONG]]]], {"a": {"b": -LONG}}):
        negative = bad if bad is not LONG else -LONG  # (a size of 10**5000 is a size)
        for body in ({**request, "sha1": bad}, {**request, "size": negative},
                     {**request, "chunk_of": {"sha1": H, "start": 5, "end": 1, "x": bad}}):
            _refused(fim.parse_request, body, error=fim.MalformedFileMessage)
        for body in ({**status, "sha1": bad}, {**status, "status": bad},
                     {**status, "bytes": negative}):
            _refused(fim.parse_status, body, error=fim.MalformedFileMessage)


def test_witness_message_regressions() -> None:
    """An unknown type's repr (RecursionError, ValueError) in place of MalformedFeedMessage."""
    for bad in (DEEP, LONG, [LONG], "x" * 100_000):
        _refused(wm.parse, {"type": bad, "feed_id": F, "subfeed_hash": H, "size": 1}, None,
                 error=fm.MalformedFeedMessage)


_SUBSCRIBE = fm.SubscribeToSubfeed(F, H, 1).to_body()
_HELD = fm.SubfeedsHeld(F, ((H, 1),)).to_body()


@pytest.mark.parametrize("band, body", [
    (fm.REQUEST_BAND, {**_SUBSCRIBE, "position": LONG}),
    (fm.REQUEST_BAND, {**_SUBSCRIBE, "position": DEEP}),
    (fm.REQUEST_BAND, {**_SUBSCRIBE, "feed_id": LONG}),
    (fm.PROVIDE_BAND, {"type": LONG}),
    (fm.PROVIDE_BAND, {"type": DEEP}),
    (fm.PROVIDE_BAND, {**_HELD, "subfeeds": [[H, DEEP]]}),
    (fm.PROVIDE_BAND, {**_HELD, "subfeeds": [[LONG]]}),
    ("witness", {"type": wm.CHECKPOINT, "feed_id": F, "subfeed_hash": H, "size": -LONG}),
    ("witness", {"type": wm.FORK_PROOF, "feed_id": F, "subfeed_hash": H, "position": DEEP}),
    ("witness", {"type": wm.FORK_PROOF, "feed_id": {"a": [LONG]}, "subfeed_hash": H}),
], ids=["position 10**5000", "position 100,000 deep", "feed_id 10**5000", "type 10**5000",
        "type 100,000 deep", "held count 100,000 deep", "held pair [10**5000]",
        "witness size -10**5000", "witness position 100,000 deep", "witness feed_id {a: [10**5000]}"])
def test_feed_parse_regressions(band, body) -> None:
    """Each raised ValueError or RecursionError in place of MalformedFeedMessage: feed_messages
    put repr(value) in its errors, and kachery_feeds' short_repr called repr on integers. Not
    reachable from the wire (kachery's JSON reads integers of 64 bits and nesting 256 deep at
    most), only by a caller."""
    with pytest.raises(fm.MalformedFeedMessage):
        fm.parse(band, body, None) if band != "witness" else wm.parse(body, None)
