"""parse_range (the import path) checks the usual message inline and every other shape one check
at a time (issue 15): ranges of correctly signed messages whose bodies are valid but unusual are
accepted exactly as parse_wire + check_chain accept them, and invalid ones are refused the same.
The fuzz test in test_fuzz_decoders.py compares the two on random mutations; here each shape at
the fast path's border is built and signed on purpose."""

from __future__ import annotations

import hashlib
import json

import nacl.bindings
import orjson
import pytest

import kachery_feeds as kf
from kachery_feeds.messages import CarriesSuccession, check_chain, parse_range, parse_wire, sign_hash

PK, SK = nacl.bindings.crypto_sign_seed_keypair(bytes(range(32)))
FEED = PK.hex()
SUB = "ab" * 20


def _range(shape, n_messages: int = 4, signed: str = "last") -> list[bytes]:
    """Signed wire lines 0..n-1 whose message 2 has body ``shape(fields) -> bytes`` (the others
    are written as kachery writes them)."""
    lines, prev = [], None
    for n in range(n_messages):
        fields = {"feed": FEED, "n": n, "payload": {"i": n}, "prev": prev.hex() if prev else None,
                  "subfeed": SUB, "ts": 1000 + n, "v": 1}
        body = shape(fields) if n == 2 else canonical(fields)
        prev = hashlib.sha256(body).digest()
        sig = b""
        if signed == "each" or n == n_messages - 1:
            sig = sign_hash(SK, prev).hex().encode()
        lines.append(body + b"\t" + sig)
    return lines


def _both(lines):
    """(parse_range's result or its error type, parse_wire + check_chain's)."""
    try:
        got = parse_range(lines, FEED, SUB, PK)
    except kf.VerificationError:
        got = kf.VerificationError
    try:
        parsed = [parse_wire(line, FEED, SUB) for line in lines]
        check_chain(parsed, PK)
        rows = [(p[0], p[3] + b"\t") if p[4] is None else (p[0], p[3], p[4]) for p in parsed]
        want = (parsed[0][0], parsed[0][1], rows, parsed[-1][2])
    except kf.VerificationError:
        want = kf.VerificationError
    return got, want


def canonical(fields: dict) -> bytes:
    """The body as kachery writes it: compact JSON, keys sorted."""
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def changed(**fields):
    """A shape: the usual body with ``fields`` set (added, or in place of the usual value)."""
    return lambda f: canonical({**f, **fields})


def replaced(old: bytes, new: bytes):
    """A shape: the usual body's bytes with ``old`` replaced by ``new``."""
    return lambda f: canonical(f).replace(old, new)


ACCEPTED = {
    "spaces": lambda f: json.dumps(f).encode(),
    "other key order": lambda f: orjson.dumps(dict(reversed(f.items()))),
    "metadata": changed(meta={"by": "x"}),
    "escaped slash": replaced(b'"i"', b'"\\u0069"'),
    "payload named succession": changed(payload={"succession": ["x"]}),
    # at the border of the inline check, which finds the link and the timestamp from the end
    "payload holding the link's text": lambda f: canonical(
        {**f, "payload": {k: f[k] for k in ("prev", "subfeed", "ts", "v")}}),
    "payload holding the tail's text": changed(payload=',"ts":5,"v":1}'),
    "payload with spaces": replaced(b'"payload":{"i":2}', b'"payload":{ "i" : 2 }'),
    "ts of 16 digits": changed(ts=2**53 - 1),
    "ts 0": changed(ts=0),
}
REFUSED = {
    "extra field": changed(x=1),
    "missing payload": lambda f: orjson.dumps({k: v for k, v in f.items() if k != "payload"}),
    "v true": changed(v=True),
    "v 1.0": changed(v=1.0),
    "n as float": changed(n=2.0),
    "n skips": changed(n=3),
    "ts negative": changed(ts=-1),
    "ts too big": changed(ts=2**53),
    "ts as string": changed(ts="5"),
    "prev upper case": lambda f: canonical({**f, "prev": f["prev"].upper()}),
    "other feed": changed(feed="cd" * 32),
    "other subfeed": changed(subfeed="cd" * 20),
    "duplicate key": lambda f: canonical(f)[:-1] + b',"v":1}',
    "meta null": changed(meta=None),
    "a list": lambda f: orjson.dumps([f]),
    "newline": lambda f: json.dumps(f, indent=1).encode(),
    # at the border of the inline check
    "ts with a leading zero": replaced(b'"ts":1002', b'"ts":01002'),
    "ts with a sign": replaced(b'"ts":1002', b'"ts":+1002'),
    "ts fraction": replaced(b'"ts":1002', b'"ts":1002.0'),
    "two payloads": replaced(b'"payload":{"i":2}', b'"payload":{"i":2},"payload":{"i":2}'),
    "payload cut short": replaced(b'"payload":{"i":2}', b'"payload":{"i":2'),
    "empty payload": replaced(b'"payload":{"i":2}', b'"payload":'),
    "no payload before the link": replaced(b',"payload":{"i":2}', b''),
    "tail twice": lambda f: canonical(f) + b',"v":1}',
    # payloads that orjson reads but kachery's JSON rules refuse (spec/feeds.md §2.1)
    "payload with a duplicate key": replaced(b'"payload":{"i":2}', b'"payload":{"i":2,"i":2}'),
    "payload -0": replaced(b'"payload":{"i":2}', b'"payload":{"i":-0}'),
    "payload integer over 64 bits": replaced(b'"payload":{"i":2}', b'"payload":{"i":18446744073709551616}'),
    "payload lone surrogate": replaced(b'"payload":{"i":2}', b'"payload":{"i":"\\ud800"}'),
    "link to message 0": changed(prev=hashlib.sha256(b"x").hexdigest()),
}


@pytest.mark.parametrize("signed", ["last", "each"])
@pytest.mark.parametrize("shape", sorted(ACCEPTED))
def test_unusual_valid_bodies_are_accepted_as_parse_wire_accepts_them(shape, signed):
    got, want = _both(_range(ACCEPTED[shape], signed=signed))
    assert want is not kf.VerificationError, "the test's range should be valid"
    assert got == want


@pytest.mark.parametrize("signed", ["last", "each"])
@pytest.mark.parametrize("shape", sorted(REFUSED))
def test_invalid_bodies_are_refused_as_parse_wire_refuses_them(shape, signed):
    got, want = _both(_range(REFUSED[shape], signed=signed))
    assert got is want is kf.VerificationError


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_lines_that_are_not_bytes_but_bytes_like_are_read_as_bytes(kind):
    lines = _range(ACCEPTED["metadata"])
    wrapped = [bytearray(line) if kind == "bytearray" else memoryview(line) for line in lines]
    got = parse_range(wrapped, FEED, SUB, PK)
    assert got == parse_range(lines, FEED, SUB, PK)
    assert all(type(row[1]) is bytes for row in got.rows)


@pytest.mark.parametrize("bad", ["str", "upper hex", "short hex", "newline"])
def test_a_bad_signature_field_in_the_middle_is_refused(bad):
    lines = _range(lambda f: canonical(f), signed="each")
    body, _tab, sig = lines[2].rpartition(b"\t")
    lines[2] = {"str": (body + b"\t" + sig).decode(), "upper hex": body + b"\t" + sig.upper(),
                "short hex": body + b"\t" + sig[:-2], "newline": body + b"\t" + sig[:-1] + b"\n"}[bad]
    with pytest.raises(kf.VerificationError):
        parse_range(lines, FEED, SUB, PK)


def test_a_range_carrying_succession_records_is_told_before_any_signature_is_checked():
    def carrying(f):
        return canonical({**f, "succession": ["record"]})

    lines = _range(carrying)
    last = lines[-1].rpartition(b"\t")[0]
    lines[-1] = last + b"\t" + b"00" * 64  # a signature no key made
    with pytest.raises(CarriesSuccession):
        parse_range(lines, FEED, SUB, PK, plain=True)
    with pytest.raises(kf.VerificationError, match="bad signature"):
        parse_range(lines, FEED, SUB, PK)


def test_a_payload_with_a_succession_key_imports_through_the_store(tmp_path):
    src = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("x")
    src.append_messages([{"succession": ["not a record"]}, {"n": 1}])
    dst = kf.open_store(tmp_path / "b.db").load_subfeed(src.uri)
    assert dst.add_signed_messages(src.get_signed_messages()) == 2
    assert dst.get_messages() == [{"succession": ["not a record"]}, {"n": 1}]


@pytest.mark.parametrize("count", [2, 3])
def test_numbers_stop_at_2_to_the_53_minus_1(count):
    """A range may end at message 2^53 - 1 (the largest number), not past it."""
    lines, prev = [], hashlib.sha256(b"before").digest()
    for n in range(2**53 - 2, 2**53 - 2 + count):
        body = orjson.dumps({"feed": FEED, "n": n, "payload": n, "prev": prev.hex(), "subfeed": SUB,
                             "ts": 5, "v": 1}, option=orjson.OPT_SORT_KEYS)
        prev = hashlib.sha256(body).digest()
        lines.append(body + b"\t" + sign_hash(SK, prev).hex().encode())
    got, want = _both(lines)
    if count == 2:
        assert want is not kf.VerificationError and got == want
    else:
        assert got is want is kf.VerificationError
