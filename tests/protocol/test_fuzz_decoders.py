"""The wire decoders of the node protocol raise their own typed errors on any input (issue 11,
defect 12): node messages (EnvelopeError), the relay's binary frames (MalformedRequestError),
signed hub requests and pub-sub tokens
(ChannelProtocolError), membership segments and messages (kachery_feeds errors,
MembershipError), task-result objects (InvalidTaskResultError), bucket heads (HeadError) and
segments (kachery_feeds errors).

Inputs that carry a signature are fuzzed twice: as received (mostly refused at the signature)
and re-signed with the right key after mutation, so the checks behind the signature run on
arbitrary bodies too. ``KACHERY_FUZZ_EXAMPLES=5000`` for a longer hunt than CI's 200.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kachery_feeds as kf
from kachery_node.errors import ChannelProtocolError, MalformedRequestError
from kachery_node.identity import Keypair
from kachery_node.protocol import feed_bucket, relay_frames, signing
from kachery_node.protocol import hub_requests as hub_envelope
from kachery_node.protocol import membership as mb
from kachery_node.protocol import node_messages as envelope
from kachery_node.protocol import pubsub_tokens as tokens
from kachery_node.protocol import task_messages as tasks

FUZZ = settings(max_examples=int(os.environ.get("KACHERY_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
KEY = Keypair.generate()
NOW = 1_700_000_000_000

json_scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=12),
                         st.integers(-(2**70), 2**70), st.floats(allow_nan=False))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)), max_leaves=10)


def mutate_bytes(raw: bytes, data: st.DataObject) -> bytes:
    if not raw:
        return data.draw(st.binary(max_size=20))
    i = data.draw(st.integers(0, len(raw) - 1))
    action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if action == "flip":
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    if action == "cut":
        return raw[:i]
    return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]


def mutate_object(obj: dict, data: st.DataObject) -> bytes:
    """``obj`` with one field replaced by any JSON value, or dropped; serialized.
    Some values are written as text JSON cannot hold (Infinity, 2^70) on purpose."""
    obj = dict(obj)
    key = data.draw(st.sampled_from([*sorted(obj), "extra"]))
    if data.draw(st.booleans()):
        obj.pop(key, None)
        return orjson.dumps(obj)
    special = data.draw(st.sampled_from([None, b"Infinity", b"1e400", b"18446744073709551616",
                                         b'"\\ud800"', b"[" * 2000 + b"]" * 2000]))
    if special is not None:
        rest = orjson.dumps({k: v for k, v in obj.items() if k != key})
        return rest[:-1] + (b"," if len(rest) > 2 else b"") + orjson.dumps(key) + b":" + special + b"}"
    obj[key] = data.draw(json_values)
    return json.dumps(obj, separators=(",", ":")).encode()  # integers beyond 64 bits too


def loads_leniently(raw: bytes):
    """Python's json: reads Infinity and huge integers back as values (orjson refuses them)."""
    try:
        return json.loads(raw)
    except RecursionError:  # the 2000-deep special: orjson's limit is the one under test
        return None


# ----------------------------------------------------------------------------- pub-sub envelopes
def _sealed_body() -> dict:
    return {"type": "requestFile", "sha1": "ab" * 20, "time_ms": NOW, "nonce": "n" * 16}


def _sign_envelope(raw: bytes) -> bytes:
    """A v2 node message signed over ``raw`` (body, and LF + attachment if any), whatever it holds."""
    sig = signing.sign(KEY, envelope.context("lab", "requestFiles"), raw)
    return b"\x02" + bytes.fromhex(KEY.public_hex) + sig + raw


@FUZZ
@given(st.data())
def test_open_envelope(data) -> None:
    kind = data.draw(st.sampled_from(["re-signed", "re-signed with attachment", "mutated", "arbitrary"]))
    if kind == "re-signed":
        wire = _sign_envelope(mutate_object(_sealed_body(), data))
    elif kind == "re-signed with attachment":
        attachment = data.draw(st.binary(max_size=200))
        wire = _sign_envelope(mutate_object(_sealed_body(), data) + b"\n" + attachment)
    elif kind == "mutated":
        wire = mutate_bytes(_sign_envelope(orjson.dumps(_sealed_body()) + b"\nlines\n"), data)
    else:
        wire = data.draw(st.one_of(st.binary(max_size=300), st.text(max_size=20), st.none()))
    try:
        env = envelope.open_envelope(wire, channel="lab", band="requestFiles", now_ms=NOW)
    except envelope.EnvelopeError:
        return
    assert env.sender == KEY.public_hex and isinstance(env.type, str)
    assert env.attachment is None or (isinstance(env.attachment, bytes) and env.attachment)


def test_a_valid_envelope_opens() -> None:
    env = envelope.open_envelope(_sign_envelope(orjson.dumps(_sealed_body())), channel="lab",
                                 band="requestFiles", now_ms=NOW)
    assert env.body["sha1"] == "ab" * 20


# ----------------------------------------------------------------------------- relay frames
bands = st.text(min_size=1, max_size=12).filter(lambda b: len(b.encode()) <= relay_frames.MAX_BAND_BYTES)


def _publish_records(data: st.DataObject) -> bytes:
    records = data.draw(st.lists(st.tuples(st.integers(0, relay_frames.MAX_ID), bands,
                                           st.binary(max_size=40)), min_size=1, max_size=3))
    return b"".join(relay_frames.encode_publish(*r) for r in records)


def _message_records(data: st.DataObject) -> bytes:
    records = data.draw(st.lists(st.tuples(bands, st.binary(min_size=32, max_size=32).map(bytes.hex),
                                           st.integers(0, 2**64 - 1), st.binary(max_size=40)),
                                 min_size=1, max_size=3))
    return b"".join(relay_frames.encode_message(*r) for r in records)


@FUZZ
@given(st.data())
def test_relay_frames(data) -> None:
    """Both record decoders: any bytes either decode to records that encode back to the very
    frame, or raise MalformedRequestError (never another exception)."""
    kind = data.draw(st.sampled_from(["publish", "message"]))
    valid = _publish_records(data) if kind == "publish" else _message_records(data)
    how = data.draw(st.sampled_from(["as is", "mutated", "arbitrary", "other kind"]))
    if how == "mutated":
        frame = mutate_bytes(valid, data)
    elif how == "arbitrary":
        frame = data.draw(st.binary(max_size=120))
    elif how == "other kind":  # a relay's records where a node's are expected, and back
        frame = _message_records(data) if kind == "publish" else _publish_records(data)
    else:
        frame = valid
    try:
        if kind == "publish":
            records = list(relay_frames.decode_publishes(frame))
            again = b"".join(relay_frames.encode_publish(r.id, r.band, r.message) for r in records)
        else:
            records = list(relay_frames.decode_messages(frame))
            again = b"".join(relay_frames.encode_message(r.band, r.sender, r.ts_ms, r.message)
                             for r in records)
    except MalformedRequestError:
        assert how != "as is"
        return
    assert records and again == frame


# ----------------------------------------------------------------------------- hub requests
HUB = Keypair.generate()


def _request_body() -> dict:
    return {"type": "create_channel", "hub": HUB.public_hex, "time_ms": NOW, "nonce": "a" * 32,
            "channel": "lab"}


@FUZZ
@given(st.data())
def test_signed_hub_requests(data) -> None:
    kind = data.draw(st.sampled_from(["re-signed", "mutated", "arbitrary", "headers"]))
    body = orjson.dumps(_request_body())
    headers = hub_envelope.sign_body(KEY, "user", body)
    if kind == "re-signed":
        body = mutate_object(_request_body(), data)
        headers = hub_envelope.sign_body(KEY, "user", body)
    elif kind == "mutated":
        body = mutate_bytes(body, data)
    elif kind == "arbitrary":
        body = data.draw(st.binary(max_size=300))
    else:
        name = data.draw(st.sampled_from(sorted(headers)))
        headers = {**headers, name: data.draw(st.text(max_size=140))}
    for decode in (lambda: hub_envelope.parse_body(body),
                   lambda: hub_envelope.verify_signature_headers("user", body, headers),
                   lambda: hub_envelope.verify_request("user", body, headers, hub_id=HUB.public_hex,
                                                      now=NOW, expected_type="create_channel")):
        try:
            decode()
        except ChannelProtocolError:
            pass


# ----------------------------------------------------------------------------- pub-sub tokens
def _token_claims() -> dict:
    return {"v": 1, "hub": HUB.public_hex, "node": KEY.public_hex, "channel": "lab",
            "capability": {"lab-requestFiles": ["publish"]}, "issued_ms": NOW,
            "expires_ms": NOW + 60_000, "id": "0123456789abcdef"}


def _sign_token(payload: bytes) -> str:
    sig = HUB.sign(tokens._PREFIX + hashlib.sha256(payload).digest())
    return tokens._b64(payload) + "." + tokens._b64(sig)


@FUZZ
@given(st.data())
def test_verify_token(data) -> None:
    kind = data.draw(st.sampled_from(["re-signed", "mutated", "arbitrary"]))
    if kind == "re-signed":
        token = _sign_token(mutate_object(_token_claims(), data))
    elif kind == "mutated":
        token = mutate_bytes(_sign_token(orjson.dumps(_token_claims())).encode(), data).decode(
            "utf-8", "surrogateescape")
    else:
        token = data.draw(st.one_of(st.text(max_size=100), st.binary(max_size=20), st.none()))
    try:
        claims = tokens.verify_token(token, hub_id=HUB.public_hex, now_ms=NOW)
    except ChannelProtocolError:
        return
    # What a relay then relies on: the types it uses.
    assert isinstance(claims.node, str) and isinstance(claims.channel, str)
    assert isinstance(claims.capability, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(op, str) for op in v)
        for k, v in claims.capability.items())
    assert type(claims.issued_ms) is int and type(claims.expires_ms) is int


def test_token_regressions() -> None:
    """Signed by the right hub but ill-typed claims were accepted: a list capability (the relay
    then calls .get on it), a node that is not a string, 1.5 ms silently truncated."""
    for claims in ({**_token_claims(), "expires_ms": "x"},
                   {**_token_claims(), "capability": ["lab-requestFiles"]},
                   {**_token_claims(), "capability": {"lab-requestFiles": "publish"}},
                   {**_token_claims(), "node": 7},
                   {**_token_claims(), "expires_ms": NOW + 1.5}):
        try:
            tokens.verify_token(_sign_token(orjson.dumps(claims)), hub_id=HUB.public_hex, now_ms=NOW)
        except tokens.InvalidTokenError:
            continue
        raise AssertionError(f"accepted {claims}")
    inf = orjson.dumps(_token_claims()).replace(str(NOW + 60_000).encode(), b"Infinity")
    try:
        tokens.verify_token(_sign_token(inf), hub_id=HUB.public_hex, now_ms=NOW)
    except tokens.InvalidTokenError:
        pass
    tokens.verify_token(_sign_token(orjson.dumps(_token_claims())), hub_id=HUB.public_hex, now_ms=NOW)


# ----------------------------------------------------------------------------- membership
OWNER = "0" * 64
NODE = "1" * 64
MEMBERSHIP = [mb.channel_message("lab", OWNER, {"pubsub": "embedded"}, NOW),
              mb.request_message(NODE, "u" * 64, ["request-files"], NOW),
              mb.grant_message("grant", NODE, ["request-files"], OWNER, NOW),
              mb.config_message({"bucket": "embedded"}, OWNER, NOW)]


@FUZZ
@given(st.data())
def test_membership_messages(data) -> None:
    msgs = [dict(m) for m in MEMBERSHIP]
    i = data.draw(st.integers(0, len(msgs) - 1))
    msgs[i] = loads_leniently(mutate_object(msgs[i], data)) if data.draw(st.booleans()) else \
        data.draw(json_values)
    try:
        m = mb.Membership.from_payloads("lab", msgs)
    except mb.MembershipError:
        return
    m.roles_of(NODE)
    assert isinstance(m.config, dict)


def test_membership_regressions() -> None:
    for config in ([1], "ab", [["a", 1, 2]]):  # dict() of these: TypeError / ValueError
        for msgs in ([{**MEMBERSHIP[0], "config": config}],
                     [MEMBERSHIP[0], {**MEMBERSHIP[3], "config": config}]):
            try:
                mb.Membership.from_payloads("lab", msgs)
            except mb.MembershipError:
                continue
            raise AssertionError(f"accepted config {config!r}")


_MEMBERSHIP_DIR = Path(tempfile.mkdtemp(prefix="kn-fuzz-membership-"))
_HUB_STORE = kf.open_store(_MEMBERSHIP_DIR / "hub.db")
_MEMBERSHIP_FEED = _HUB_STORE.create_feed()
_MEMBERSHIP_FEED.load_subfeed(mb.MEMBERSHIP_SUBFEED).append_messages(MEMBERSHIP)
_SEGMENT = kf.encode_segment(_MEMBERSHIP_FEED.load_subfeed(mb.MEMBERSHIP_SUBFEED).get_signed_messages())
_NODE_STORE = kf.open_store(_MEMBERSHIP_DIR / "node.db")
_REPLICA_STORE = kf.open_store(_MEMBERSHIP_DIR / "replica.db")


def emptied(store: kf.Store, feed_id: str) -> kf.Store:
    """``store`` without ``feed_id``: examples stay independent (cheaper than a store each)."""
    if any(f["feed_id"] == feed_id for f in store.list_feeds()):
        store.delete_feed(feed_id)
    return store


@FUZZ
@given(st.data())
def test_membership_segments(data) -> None:
    segment = data.draw(st.one_of(st.builds(mutate_bytes, st.just(_SEGMENT), st.just(data)),
                                  st.binary(max_size=200)))
    store = emptied(_NODE_STORE, _MEMBERSHIP_FEED.feed_id)
    try:
        subfeed = mb.import_segment(store, _MEMBERSHIP_FEED.feed_id, segment)
        mb.Membership.from_subfeed(subfeed, "lab")
    except (kf.FeedError, mb.MembershipError):
        pass


# ----------------------------------------------------------------------------- task results
TASK_HASH = tasks.task_hash("f.1", {"x": 1})


def _result_body() -> dict:
    return {"task_hash": TASK_HASH, "function_id": "f.1", "result": [1, 2],
            "provider": KEY.public_hex, "time_ms": NOW}


def _sign_result(raw: bytes) -> dict:
    return {"body": raw.decode("utf-8", "surrogatepass"),
            "signature": KEY.sign(tasks._result_signing_input(raw)).hex()}


@FUZZ
@given(st.data())
def test_task_results(data) -> None:
    kind = data.draw(st.sampled_from(["re-signed", "object", "bytes", "arbitrary"]))
    if kind == "re-signed":
        obj = _sign_result(mutate_object(_result_body(), data))
    elif kind == "object":
        obj = loads_leniently(mutate_object(_sign_result(orjson.dumps(_result_body())), data)) \
            if data.draw(st.booleans()) else {**_sign_result(orjson.dumps(_result_body())),
                                              "body": data.draw(st.text(max_size=50))}
    elif kind == "bytes":
        raw = mutate_bytes(tasks.encode_result_object(_sign_result(orjson.dumps(_result_body()))), data)
        try:
            obj = tasks.decode_result_object(raw)
        except tasks.InvalidTaskResultError:
            return
    else:
        obj = data.draw(json_values)
    try:
        tasks.verify_result(obj, task_hash=TASK_HASH, function_id="f.1")
    except tasks.InvalidTaskResultError:
        pass


def test_task_result_regressions() -> None:
    good = _sign_result(orjson.dumps(_result_body()))
    assert tasks.verify_result(good, task_hash=TASK_HASH, function_id="f.1").result == [1, 2]
    for obj in ({**good, "body": "\ud800"},  # str.encode: UnicodeEncodeError
                {**good, "signature": "\u00e9" * 128}):
        try:
            tasks.verify_result(obj, task_hash=TASK_HASH, function_id="f.1")
        except tasks.InvalidTaskResultError:
            continue
        raise AssertionError(f"accepted {obj!r}")
    for raw in (b"\xff", 5, None):
        try:
            tasks.decode_result_object(raw)
        except tasks.InvalidTaskResultError:
            continue
        raise AssertionError(f"decoded {raw!r}")


# ----------------------------------------------------------------------------- bucket heads and segments
_FEED_STORE = kf.open_store(_MEMBERSHIP_DIR / "owner.db")
_SUBFEED = _FEED_STORE.create_feed().load_subfeed("log")
_SUBFEED.append_messages([{"i": i} for i in range(5)])
_SUBFEED.append_message({"i": 5})
_HEAD = feed_bucket.head_for(_SUBFEED)[1]


@FUZZ
@given(st.data())
def test_parse_head(data) -> None:
    kind = data.draw(st.sampled_from(["field", "bytes", "arbitrary"]))
    if kind == "field":
        raw = mutate_object(orjson.loads(_HEAD), data)
    elif kind == "bytes":
        raw = mutate_bytes(_HEAD, data)
    else:
        raw = data.draw(st.one_of(st.binary(max_size=200), st.text(max_size=20)))
    try:
        head = feed_bucket.parse_head(raw)
    except feed_bucket.HeadError:
        return
    replica = emptied(_REPLICA_STORE, _SUBFEED.feed_id).load_subfeed(_SUBFEED.uri)
    importer = feed_bucket.SegmentImporter(replica)
    try:
        importer.add_lines(head.tail)
        importer.finish()
    except kf.FeedError:
        pass


@FUZZ
@given(st.data())
def test_segment_importer(data) -> None:
    segment = mutate_bytes(kf.encode_segment(_SUBFEED.get_signed_messages()), data)
    replica = emptied(_REPLICA_STORE, _SUBFEED.feed_id).load_subfeed(_SUBFEED.uri)
    importer = feed_bucket.SegmentImporter(replica)
    try:
        importer.add_segment(segment)
        importer.finish()
    except kf.FeedError:
        # Whatever was stored is a verified prefix ending at a signed message: the batch of five
        # (0-4, signed at 4) can be imported before a damaged sixth line is rejected.
        stored = replica.get_num_local_messages()
        assert stored in (0, 5, 6)
        assert replica.get_messages() == _SUBFEED.get_messages(0, stored)
