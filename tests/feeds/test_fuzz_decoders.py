"""Every public decoder of kachery_feeds raises kachery_feeds' own errors (FeedError) on any
input, never TypeError, RecursionError, UnicodeError, OverflowError... (issue 11, defect 12).

Each test feeds a decoder arbitrary values and, more usefully, mutations of valid input (a real
message, segment, range or fork proof with a field replaced, bytes flipped or cut). Examples are
bounded so the module runs in CI in seconds. Inputs that once raised an untyped error are kept
as ``@example``s (or plain tests where hypothesis cannot print them).
Longer hunt: ``KACHERY_FUZZ_EXAMPLES=5000 pytest tests/feeds/test_fuzz_decoders.py``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

import nacl.bindings
import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import kachery_feeds as kf

# KACHERY_FUZZ_EXAMPLES=5000 for a longer hunt than CI's.
FUZZ = settings(max_examples=int(os.environ.get("KACHERY_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

FEED_ID = "ab" * 32
SUBFEED = "cd" * 20


def _deep_list(depth: int) -> list:
    """[[[...]]] ``depth`` levels deep, built without recursion."""
    root: list = []
    node = root
    for _ in range(depth - 1):
        child: list = []
        node.append(child)
        node = child
    return root


DEEP_NAME = _deep_list(100_000)


# ----------------------------------------------------------------------------- a real subfeed
class _Material:
    """A source subfeed with signed and unsigned messages, its wire lines and a fork proof."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kf-fuzz-"))
        store = kf.open_store(self.dir / "source.db")
        self.source = store.create_feed().load_subfeed("log")
        self.source.append_message({"i": 0})
        self.source.append_messages([{"i": i, "s": "x" * i} for i in range(1, 6)])
        self.source.append_message({"i": 6}, metadata={"m": 1})
        self.lines = self.source.get_signed_messages()
        # A fork: a backup of the owner's store (same key) signs another message 7.
        with sqlite3.connect(store.path) as src, sqlite3.connect(self.dir / "clone.db") as dst:
            src.backup(dst)
        clone = kf.open_store(self.dir / "clone.db").load_subfeed(self.source.uri)
        clone.append_message({"i": "forked"})
        replica = kf.open_store(self.dir / "replica.db").load_subfeed(self.source.uri)
        replica.add_signed_messages(self.lines)
        with sqlite3.connect(store.path) as src, sqlite3.connect(self.dir / "ahead.db") as dst:
            src.backup(dst)
        ahead = kf.open_store(self.dir / "ahead.db").load_subfeed(self.source.uri)
        ahead.append_message({"i": "original"})
        replica.add_signed_messages(ahead.get_signed_messages(7))
        with pytest.raises(kf.ForkError) as info:
            replica.add_signed_messages(clone.get_signed_messages(7))
        self.fork_proof = info.value.proof
        self.replica_store = kf.open_store(self.dir / "fuzz-replica.db")

    def new_replica(self) -> kf.Subfeed:
        """The replica store emptied of the source's feed, so examples are independent
        (deleting is much cheaper than creating a store per example)."""
        store = self.replica_store
        if any(f["feed_id"] == self.source.feed_id for f in store.list_feeds()):
            store.delete_feed(self.source.feed_id)
        return store.load_subfeed(self.source.uri)


_MATERIAL: _Material | None = None


def material() -> _Material:
    global _MATERIAL
    if _MATERIAL is None:
        _MATERIAL = _Material()
    return _MATERIAL


# ----------------------------------------------------------------------------- strategies
json_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Not only JSON: non-string keys, tuples, sets, bytes, objects.
weird_values = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=10), st.just(object())),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.none(),
                                  st.booleans(), st.floats()), children, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=20,
)
surrogate_text = st.text(st.characters(codec=None, categories=["Cs", "Ll", "Nd", "No", "Po"]),
                         max_size=20)


def _mutate_json(raw: bytes, data: st.DataObject) -> bytes:
    """Replace one top-level field of a JSON object with an arbitrary value (or drop it)."""
    obj = orjson.loads(raw)
    key = data.draw(st.sampled_from(sorted(obj) + ["extra"]))
    action = data.draw(st.sampled_from(["replace", "drop", "weird"]))
    if action == "drop":
        obj.pop(key, None)
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    value = data.draw(json_scalars if action == "replace" else
                      st.recursive(json_scalars, lambda c: st.lists(c, max_size=3), max_leaves=8))
    obj[key] = value
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # NaN, huge ints: write them as text
        text = orjson.dumps({k: v for k, v in obj.items() if k != key}, option=orjson.OPT_SORT_KEYS)
        return text[:-1] + (b"," if len(text) > 2 else b"") + b'"' + key.encode() + b'":' + (
            repr(value).encode() if not isinstance(value, str) else orjson.dumps(value)) + b"}"


def _mutate_bytes(raw: bytes, data: st.DataObject) -> bytes:
    action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if not raw:
        return data.draw(st.binary(max_size=20))
    i = data.draw(st.integers(0, len(raw) - 1))
    if action == "flip":
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    if action == "cut":
        return raw[:i]
    return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]


def _mutated_line(data: st.DataObject) -> bytes:
    line = data.draw(st.sampled_from(material().lines))
    body, _, sig = line.rpartition(b"\t")
    part = data.draw(st.sampled_from(["body", "sig", "bytes"]))
    if part == "body":
        return _mutate_json(body, data) + b"\t" + sig
    if part == "sig":
        return body + b"\t" + data.draw(st.one_of(st.binary(max_size=130), st.text(
            "0123456789abcdefABCDEF", min_size=127, max_size=129).map(str.encode)))
    return _mutate_bytes(line, data)


# ----------------------------------------------------------------------------- URIs and names
@FUZZ
@given(st.one_of(st.text(), surrogate_text.map(lambda t: f"feed://{FEED_ID}/{t}"),
                 st.text().map(lambda t: "feed://" + t), st.binary(), st.integers(), st.none()))
@example(f"feed://{FEED_ID}/\ud800")
@example(f"feed://{FEED_ID}/%ed%a0%80")
@example(f"feed://{FEED_ID}/~" + "g" * 40)
def test_parse_feed_uri(uri) -> None:
    try:
        parsed = kf.parse_feed_uri(uri)
    except kf.FeedError:
        return
    assert parsed.feed_id == FEED_ID.lower() or len(parsed.feed_id) == 64
    if parsed.subfeed_name is not None:
        kf.subfeed_uri(parsed.feed_id, parsed.subfeed_name)  # a parsed name always round-trips


@FUZZ
@given(st.one_of(weird_values, surrogate_text, st.lists(surrogate_text, max_size=2)))
@example({1: "a"})  # orjson: "Dict key must be str" (TypeError)
@example([2**70])  # orjson: "Integer exceeds 64-bit range" (TypeError)
@example("\ud800")  # UnicodeEncodeError
@example({"a": "\ud800"})  # orjson: surrogates not allowed (TypeError)
@example([float("nan")])
@example({"a": 1, 2: "b"})  # sort_keys over mixed keys: TypeError
def test_subfeed_names(name) -> None:
    feed = material().source._store.load_feed(material().source.feed_id)
    for decode in (kf.subfeed_hash, feed.load_subfeed,
                   lambda n: kf.subfeed_uri(FEED_ID, n)):
        try:
            decode(name)
        except kf.FeedError:
            pass


@FUZZ
@given(st.one_of(weird_values, surrogate_text))
@example({"name": 1})
@example("\ud800")
def test_store_load_feed_and_subfeed(value) -> None:
    store = material().source._store
    try:
        store.load_feed(value)
    except kf.FeedError:
        pass
    try:
        store.load_subfeed(value)
    except kf.FeedError:
        pass


def test_deep_names_are_refused() -> None:
    """A 100k-deep list name made json.dumps raise RecursionError (kept as a plain test:
    hypothesis cannot print an example that deep)."""
    store = material().source._store
    feed = store.load_feed(material().source.feed_id)
    for decode in (kf.subfeed_hash, feed.load_subfeed, lambda n: kf.subfeed_uri(FEED_ID, n),
                   store.load_feed, store.load_subfeed):
        with pytest.raises(kf.FeedError):
            decode(DEEP_NAME)
    with pytest.raises(kf.InvalidUriError, match="deeper"):
        feed.load_subfeed(_deep_list(202))
    assert feed.load_subfeed(_deep_list(200)).subfeed_hash == kf.subfeed_hash(_deep_list(200))


@FUZZ
@given(st.one_of(st.text(max_size=70), st.integers(), st.binary(max_size=70), st.none()))
def test_normalize_feed_id(value) -> None:
    try:
        assert len(kf.normalize_feed_id(value)) == 64
    except kf.FeedError:
        pass


# ----------------------------------------------------------------------------- wire messages
@FUZZ
@given(st.data())
def test_parse_message(data) -> None:
    line = data.draw(st.one_of(st.binary(max_size=300), st.builds(_mutated_line, st.just(data)),
                               weird_values))
    sf = material().source
    try:
        kf.parse_message(line, sf.feed_id, sf.subfeed_hash)
    except kf.FeedError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=500), weird_values, st.text(max_size=50)))
@example("a\n")
@example(None)
def test_decode_segment(data) -> None:
    try:
        lines = kf.decode_segment(data)
    except kf.FeedError:
        return
    assert all(isinstance(line, bytes) for line in lines)


@FUZZ
@given(st.data())
def test_add_signed_messages(data) -> None:
    m = material()
    kind = data.draw(st.sampled_from(["mutated range", "reordered", "arbitrary", "segment"]))
    if kind == "mutated range":
        lines = list(m.lines)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(lines) - 1))
            lines[i] = _mutated_line(data)
        start = data.draw(st.integers(0, len(lines) - 1))
        lines = lines[start:]
    elif kind == "reordered":
        lines = data.draw(st.permutations(m.lines))
    elif kind == "arbitrary":
        lines = data.draw(st.one_of(st.lists(st.binary(max_size=50), max_size=3), weird_values))
    else:
        lines = _mutate_bytes(kf.encode_segment(m.lines), data)
        try:
            lines = kf.decode_segment(lines)
        except kf.FeedError:
            return
    replica = m.new_replica()
    try:
        replica.add_signed_messages(lines)
    except kf.FeedError:
        assert replica.get_num_local_messages() == 0  # all or nothing
        return
    # Whatever was accepted is the source's own history.
    assert replica.get_messages() == m.source.get_messages(0, replica.get_num_local_messages())


@FUZZ
@given(st.data())
def test_the_one_pass_parser_agrees_with_parsing_then_checking_the_chain(data) -> None:
    """``parse_range`` (the import path) accepts exactly the ranges that ``parse_wire`` on each
    line and then ``check_chain`` accept, and gives the same rows (issue 15)."""
    from kachery_feeds.messages import check_chain, parse_range, parse_wire

    m = material()
    lines = list(m.lines)
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = _mutated_line(data) if data.draw(st.booleans()) else data.draw(st.sampled_from(m.lines))
    lines = lines[data.draw(st.integers(0, len(lines) - 1)):]
    feed_id, sh, key = m.source.feed_id, m.source.subfeed_hash, bytes.fromhex(m.source.feed_id)
    try:
        parsed = [parse_wire(line, feed_id, sh) for line in lines]
        check_chain(parsed, key)
    except kf.VerificationError:
        with pytest.raises(kf.VerificationError):
            parse_range(lines, feed_id, sh, key)
        return
    first, previous_hash, rows, last_hash = parse_range(lines, feed_id, sh, key)
    assert (first, previous_hash, last_hash) == (parsed[0][0], parsed[0][1], parsed[-1][2])
    # an unsigned row holds its wire line (body and tab), a signed one its body and signature
    assert rows == [(p[0], p[3] + b"\t") if p[4] is None else (p[0], p[3], p[4]) for p in parsed]


_TRICKY_TEXT = st.sampled_from([',"prev":"', '","subfeed":"', ',"ts":', ',"v":1}', ":", "\\", '"', "0"])
payloads = st.recursive(
    st.one_of(json_scalars.filter(lambda v: not isinstance(v, float) or (v == v and abs(v) < 1e300)),
              _TRICKY_TEXT, st.lists(_TRICKY_TEXT, max_size=4).map("".join)),
    lambda c: st.one_of(st.lists(c, max_size=3),
                        st.dictionaries(st.one_of(st.text(max_size=3), _TRICKY_TEXT), c, max_size=3)),
    max_leaves=10)


@FUZZ
@given(st.data())
def test_the_one_pass_parser_agrees_on_signed_ranges_with_odd_bodies(data) -> None:
    """Like the test above, with every range correctly chained and signed, so that acceptance is
    compared too: payloads holding the text of the fields around them, and bodies changed at
    the byte or field level (then hashed and signed as they are). The inline check of
    parse_range must accept exactly what parse_wire and check_chain accept, with the same rows."""
    from kachery_feeds.messages import check_chain, parse_range, parse_wire, sign_hash

    pk, sk = nacl.bindings.crypto_sign_seed_keypair(bytes(range(32)))
    feed_id, sh = pk.hex(), "ab" * 20
    ts = data.draw(st.sampled_from([1700000000000, 0, 7, 2**53 - 1]))
    lines, prev = [], None
    count = data.draw(st.integers(2, 5))
    for n in range(count):
        fields = {"feed": feed_id, "n": n, "payload": data.draw(payloads),
                  "prev": prev.hex() if prev else None, "subfeed": sh, "ts": ts, "v": 1}
        try:
            body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):  # an integer over 64 bits
            fields["payload"] = None
            body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        how = data.draw(st.sampled_from(["as written", "as written", "field", "bytes"]))
        if n and how == "field":
            body = _mutate_json(body, data)
        elif n and how == "bytes":
            body = _mutate_bytes(body, data).replace(b"\t", b" ").replace(b"\n", b" ") or b"{}"
        prev = hashlib.sha256(body).digest()
        signed = n == count - 1 or data.draw(st.booleans())
        lines.append(body + b"\t" + (sign_hash(sk, prev).hex().encode() if signed else b""))
    try:
        parsed = [parse_wire(line, feed_id, sh) for line in lines]
        check_chain(parsed, pk)
    except kf.VerificationError:
        event("refused")
        with pytest.raises(kf.VerificationError):
            parse_range(lines, feed_id, sh, pk)
        return
    event("accepted")
    first, previous_hash, rows, last_hash = parse_range(lines, feed_id, sh, pk)
    assert (first, previous_hash, last_hash) == (parsed[0][0], parsed[0][1], parsed[-1][2])
    assert rows == [(p[0], p[3] + b"\t") if p[4] is None else (p[0], p[3], p[4]) for p in parsed]


# ----------------------------------------------------------------------------- fork proofs
@FUZZ
@given(st.data())
def test_verify_fork_proof(data) -> None:
    m = material()
    kind = data.draw(st.sampled_from(["field", "bytes", "chain line", "arbitrary"]))
    if kind == "field":
        proof = _mutate_json(m.fork_proof, data)
    elif kind == "bytes":
        proof = _mutate_bytes(m.fork_proof, data)
    elif kind == "chain line":
        obj = orjson.loads(m.fork_proof)
        chain = data.draw(st.sampled_from(["a", "b"]))
        i = data.draw(st.integers(0, len(obj[chain]) - 1))
        obj[chain][i] = data.draw(st.one_of(
            st.builds(lambda d: _mutated_line(d).decode("utf-8", "surrogateescape"), st.just(data)),
            weird_values.filter(lambda v: not isinstance(v, bytes | frozenset | object) or
                                isinstance(v, str | int | float | list | dict | None))))
        try:
            proof = orjson.dumps(obj)
        except (TypeError, orjson.JSONEncodeError):
            proof = orjson.dumps({**obj, chain: []})
    else:
        proof = data.draw(st.one_of(st.binary(max_size=200), weird_values, surrogate_text))
    try:
        info = kf.verify_fork_proof(proof)
    except kf.FeedError:
        return
    assert info.feed_id == m.source.feed_id


def test_the_real_fork_proof_verifies() -> None:
    """The material is sound: the unmutated proof is accepted (else the fuzz proves nothing)."""
    m = material()
    assert kf.verify_fork_proof(m.fork_proof).position == 7
    replica = m.new_replica()
    assert replica.add_signed_messages(m.lines) == len(m.lines)
