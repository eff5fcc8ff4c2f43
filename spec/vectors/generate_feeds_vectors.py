"""Regenerate spec/vectors/feeds-v1.json (deterministic: fixed seed and timestamps).

Run: .venv/bin/python spec/vectors/generate_feeds_vectors.py > spec/vectors/feeds-v1.json
The tests check the committed file against the implementation (tests/feeds/test_spec_vectors.py)
and against kachery.js (js/test/vectors.test.js), so a change to the format shows up as a test
failure, not as silently regenerated vectors.

Every ``invalid_*`` case is refused by a conforming reader and says why (``why``); each one
pins a rule of spec/feeds.md that a reader could otherwise guess. Wire lines are given as
strings (``wire``), or as hex (``wire_hex``) when the bytes are not valid UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import nacl.bindings

sys.path.insert(0, str(Path(__file__).parent))

import ed25519_craft as ec

from kachery_feeds.messages import (
    SIGNATURE_CONTEXT,
    build_body,
    message_hash,
    sign_hash,
    to_wire,
)
from kachery_feeds.payloads import encode_json
from kachery_feeds.uris import subfeed_hash, subfeed_uri

CURATION = {"name": "curation", "sortingId": 3}
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PK, SK = nacl.bindings.crypto_sign_seed_keypair(SEED)
FEED = PK.hex()
SUB = subfeed_hash("primes")
TS = 1700000000000
IDENTITY_HEX = "01" + "00" * 31


def sign_body(body: bytes) -> bytes:
    return to_wire(body, sign_hash(SK, message_hash(body)))


def line_case(why: str, body: bytes | str, **extra: object) -> dict:
    """A one-message range whose body breaks one rule but is validly signed."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    line = sign_body(body)
    try:
        return {"why": why, "wire": [line.decode("utf-8")], **extra}
    except UnicodeDecodeError:
        return {"why": why, "wire_hex": [line.hex()], **extra}


def body0(payload: str = '{"p":2}', *, n: str = "0", ts: str = str(TS), v: str = "1",
          meta: str | None = None, prev: str = "null", extra: str = "") -> str:
    """A message-0 body as text with sorted keys; each part may be replaced by a bad one."""
    m = "" if meta is None else f'"meta":{meta},'
    return (f'{{"feed":"{FEED}",{m}"n":{n},"payload":{payload},"prev":{prev},'
            f'"subfeed":"{SUB}","ts":{ts},"v":{v}{extra}}}')


def ed25519_vectors() -> list[dict]:
    """Edge cases of Ed25519 verification, each decided as libsodium's
    crypto_sign_verify_detached decides it (spec/feeds.md §3.1)."""
    a, _prefix = ec.secret_scalar(SEED)
    assert ec.encode(ec.mul(a, ec.G)) == PK
    msg = b"kachery ed25519 edge cases"
    good = nacl.bindings.crypto_sign(msg, SK)[:64]
    s_good = int.from_bytes(good[32:], "little")
    out = [{"why": "an ordinary valid signature", "valid": True, "public_key": PK.hex(),
            "message_hex": msg.hex(), "signature": good.hex()}]

    def case(why: str, valid: bool, pk: bytes, m: bytes, sig: bytes) -> None:
        out.append({"why": why, "valid": valid, "public_key": pk.hex(), "message_hex": m.hex(),
                    "signature": sig.hex()})

    case("S + L: the same signature with a non-canonical S (S must be < L)", False, PK, msg,
         good[:32] + (s_good + ec.L).to_bytes(32, "little"))
    forgery = bytes.fromhex(IDENTITY_HEX) + bytes(32)
    case("public key and R are the identity (small order), S = 0: valid for every message "
         "under a cofactored or ZIP-215 verifier, refused here", False,
         bytes.fromhex(IDENTITY_HEX), msg, forgery)
    case("public key is the identity with the sign bit set (small order)", False,
         bytes.fromhex("01" + "00" * 30 + "80"), msg, forgery)
    case("public key is a non-canonical encoding (y = p + 1) of the identity", False,
         bytes.fromhex("ee" + "ff" * 30 + "7f"), msg, forgery)
    # A small-order (order 8) key: grind S until h = 0 mod 8, so [S]B - [h]A = [S]B = R.
    t8 = ec.encode(ec.T8)
    for s in range(1, 1000):
        r = ec.encode(ec.mul(s, ec.G))
        if ec.h_scalar(r, t8, msg) % 8 == 0:
            case("public key of order 8; the equation holds without cofactor", False, t8, msg,
                 r + s.to_bytes(32, "little"))
            break
    # R = identity (small order) with S = h*a: the equation holds, R is refused.
    rid = bytes.fromhex(IDENTITY_HEX)
    s = ec.h_scalar(rid, PK, msg) * a % ec.L
    case("R is the identity (small order) and S = h*a: the equation holds, R is refused",
         False, PK, msg, rid + s.to_bytes(32, "little"))
    # Mixed-order R: [S]B - [h]A = R - T8, so only a cofactored check passes.
    r_scalar = 123456789
    sig = ec.sign_with(a, PK, msg, r_scalar, ec.add(ec.mul(r_scalar, ec.G), ec.T8))
    case("R has a small-order component: only a cofactored equation holds", False, PK, msg, sig)
    # Mixed-order key A' = A + T8: with h = 0 mod 8 the cofactorless equation holds, and
    # libsodium accepts it (it refuses only small-order keys, not mixed-order ones).
    a_mixed = ec.encode(ec.add(ec.mul(a, ec.G), ec.T8))
    for i in range(1000):
        m = msg + b" %d" % i
        rb = ec.encode(ec.mul(r_scalar, ec.G))
        if ec.h_scalar(rb, a_mixed, m) % 8 == 0:
            case("public key with a small-order component (mixed order) and h = 0 mod 8: "
                 "libsodium accepts it, so this spec does", True, a_mixed, m,
                 ec.sign_with(a, a_mixed, m, r_scalar, ec.mul(r_scalar, ec.G)))
            break
    case("public key is not a point on the curve (y = 2)", False,
         bytes.fromhex("02" + "00" * 31), msg, good)
    case("signature of another message", False, PK, msg + b"!", good)
    flipped = bytearray(good)
    flipped[31] ^= 0x80
    case("R with its sign bit flipped", False, PK, msg, bytes(flipped))
    for c in out:  # the vectors are libsodium's decisions, checked here too
        ok = True
        try:
            nacl.bindings.crypto_sign_open(bytes.fromhex(c["signature"]) + bytes.fromhex(c["message_hex"]),
                                           bytes.fromhex(c["public_key"]))
        except Exception:
            ok = False
        assert ok == c["valid"], c["why"]
    return out


def main() -> None:
    payloads = [{"p": 2}, {"p": 3, "note": "héllo ✓ 😀"}, {"p": 5, "x": [1.5, -0.0, 1e-7, None, True]}]
    metas = [None, None, {"submittedBy": "ab" * 32}]
    messages = []
    prev = None
    for n, (payload, meta) in enumerate(zip(payloads, metas, strict=True)):
        ts = TS + n
        body = build_body(
            FEED, SUB, n, prev, ts, encode_json(payload), None if meta is None else encode_json(meta)
        )
        h = message_hash(body)
        signed = n != 1  # message 1 is inside a batch: covered by message 2's signature
        sig = sign_hash(SK, h) if signed else None
        messages.append(
            {
                "number": n,
                "timestamp_ms": ts,
                "payload": payload,
                "metadata": meta,
                "body": body.decode("utf-8"),
                "sha256": h.hex(),
                "signing_input_hex": (SIGNATURE_CONTEXT + h).hex(),
                "signature": sig.hex() if sig else None,
                "wire": to_wire(body, sig).decode("utf-8"),
            }
        )
        prev = h
    good = [m["wire"] for m in messages]
    w1 = messages[1]["wire"]
    w2 = messages[2]["wire"]
    tampered_payload = good[:1] + [w1.replace('"p":3', '"p":4')] + good[2:]
    bad_sig = w2[:-2] + ("00" if not w2.endswith("00") else "11")
    sig2 = bytes.fromhex(messages[2]["signature"])
    s_plus_l = sig2[:32] + (int.from_bytes(sig2[32:], "little") + ec.L).to_bytes(32, "little")

    # Another writer's spelling: spaces, a TAB, unsorted keys, escapes, exponent numbers.
    # Readers never re-serialize, so this is as valid as the compact form.
    other_writer = (
        f' {{ "v" : 1 ,\t"n" : 0 , "feed" : "{FEED}" , "subfeed" : "{SUB}" , "prev" : null ,'
        f' "ts" : {TS} , "payload" : {{ "\\u00e9" : [ 1E2 , -0.0 , "\\ud83d\\ude00" ] , "b" : {{}} }} }} '
    ).encode()
    deep = "[" * 256 + "]" * 256

    invalid = [
        {"why": "payload of message 1 changed (chain no longer links)", "wire": tampered_payload},
        {"why": "signature of the last message corrupted", "wire": good[:2] + [bad_sig]},
        {"why": "range ends at an unsigned message", "wire": good[:2]},
        {"why": "gap in numbering", "wire": [good[0], good[2]]},
        {"why": "no tab separator", "wire": [good[0].replace("\t", " ")]},
        {"why": "signature is not hex", "wire": [good[0].split("\t")[0] + "\t" + "zz" * 64]},
        {"why": "signature in uppercase hex", "wire": [good[0].split("\t")[0] + "\t"
                                                       + good[0].split("\t")[1].upper()]},
        {"why": "signature S + L (non-canonical S, Ed25519 rule)", "wire": good[:2] + [
            w2.rsplit("\t", 1)[0] + "\t" + s_plus_l.hex()]},
        {"why": "a line containing LF", "wire": [good[0].replace('{"feed"', '\n{"feed"', 1)]},
        line_case("meta is null (absent or an object, never null)", body0(meta="null")),
        line_case("meta is not an object", body0(meta="[1]")),
        line_case("duplicate key n in the body ('n':5 then 'n':0)",
                  body0(n="5").replace('"n":5,', '"n":5,"n":0,')),
        line_case("duplicate key in the payload", body0(payload='{"x":1,"x":2}')),
        line_case("duplicate key in the payload, spelled with an escape",
                  body0(payload='{"x":1,"\\u0078":2}')),
        line_case("duplicate key in the metadata", body0(meta='{"a":1,"a":1}')),
        line_case("n is -0", body0(n="-0")),
        line_case("-0 in the payload", body0(payload="[-0]")),
        line_case("n written as 0.0 (integer fields are integer literals)", body0(n="0.0")),
        line_case("v written as 1.0", body0(v="1.0")),
        line_case("v is 2", body0(v="2")),
        line_case("ts written with an exponent", body0(ts="17e11")),
        line_case("ts above 2^53-1", body0(ts=str(2**53))),
        line_case("ts is negative", body0(ts="-1")),
        line_case("integer 2^64 in the payload (outside [-2^63, 2^64-1])",
                  body0(payload=str(2**64))),
        line_case("integer -2^63-1 in the payload (outside [-2^63, 2^64-1])",
                  body0(payload=str(-(2**63) - 1))),
        line_case("number that is infinite as a double (1e400)", body0(payload="1e400")),
        line_case("NaN is not JSON", body0(payload="NaN")),
        line_case("lone high surrogate escape in the payload", body0(payload='"\\ud800"')),
        line_case("lone low surrogate escape in a payload key", body0(payload='{"\\udc00":1}')),
        line_case("high surrogate escape followed by a non-surrogate escape",
                  body0(payload='"\\ud800\\u0041"')),
        line_case("body starts with a UTF-8 byte order mark", "\ufeff" + body0()),
        line_case("body is not UTF-8 (byte 0xff in a string)",
                  body0(payload='"ab"').encode().replace(b"ab", b"a\xffb")),
        line_case("body is not UTF-8 (an encoded surrogate, CESU-8)",
                  body0(payload='"ab"').encode().replace(b"ab", b"a\xed\xa0\x80b")),
        line_case("arrays nested 257 deep", body0(payload="[" + deep + "]")),
        line_case("a required key (ts) is missing", body0().replace(f',"ts":{TS}', "")),
        line_case("an unknown key", body0(extra=',"x":1')),
        line_case("prev is not null at n = 0", body0(prev='"' + "00" * 32 + '"')),
        line_case("feed in uppercase hex (it must equal the feed ID, 64 lowercase hex)",
                  body0().replace(FEED, FEED.upper(), 1)),
        line_case("trailing characters after the JSON object", body0() + "x"),
        line_case("body is a JSON array", "[" + body0() + "]"),
        {"why": "feed ID and R are the identity, S = 0: a forgery a ZIP-215 verifier accepts "
                "(Ed25519 small-order rule)",
         "feed_id": IDENTITY_HEX,
         "wire": [body0().replace(FEED, IDENTITY_HEX) + "\t" + IDENTITY_HEX + "00" * 32]},
        {"why": "n above 2^53-1", "wire": [sign_body(body0(n=str(2**53), prev='"' + "00" * 32 + '"')
                                                     .encode()).decode()]},
    ]
    # Fork proofs: message 0 with two different payloads, both signed by the feed's key.
    alt0 = sign_body(body0(payload='{"p":7}').encode()).decode()

    def proof(a: list[str], b: list[str], **over: object) -> str:
        d = {"type": "kachery-fork-proof", "v": 1, "feed": FEED, "subfeed": SUB, "position": 0,
             "a": a, "b": b, **over}
        return json.dumps({k: v for k, v in d.items() if v is not None}, separators=(",", ":"),
                          ensure_ascii=False)

    fork_good = proof([good[0]], [alt0])
    vectors = {
        "description": "kachery feed message format v1 test vectors; see spec/feeds.md",
        "seed_hex": SEED.hex(),
        "feed_id": FEED,
        "subfeed_name": "primes",
        "subfeed_hash": SUB,
        "signature_context_hex": SIGNATURE_CONTEXT.hex(),
        "messages": messages,
        "segment": "".join(w + "\n" for w in good),
        "valid_ranges": [
            {"why": "another writer's spelling (whitespace incl. TAB, key order, escapes, 1E2)",
             "wire": [sign_body(other_writer).decode()], "payloads": [{"é": [100.0, -0.0, "😀"], "b": {}}]},
            {"why": "a batch: only the last message is signed", "wire": good,
             "payloads": payloads},
        ],
        "invalid_ranges": invalid,
        "invalid_segments": [
            {"why": "torn: does not end with LF", "segment": "".join(w + "\n" for w in good)[:-1]},
            {"why": "an empty line", "segment": good[0] + "\n\n" + good[1] + "\n" + good[2] + "\n"},
            {"why": "CRLF line ends (the CR belongs to the signature field)",
             "segment": "".join(w + "\r\n" for w in good)},
        ],
        "ed25519": ed25519_vectors(),
        "fork_proofs": [{"proof": fork_good, "position": 0, "feed_id": FEED, "subfeed_hash": SUB}],
        "invalid_fork_proofs": [
            {"why": "the two chains agree (no conflict)", "proof": proof([good[0]], good)},
            {"why": "an empty chain", "proof": proof([], [alt0])},
            {"why": "an unknown key", "proof": proof([good[0]], [alt0], extra=1)},
            {"why": "a required key (position) is missing", "proof": proof([good[0]], [alt0], position=None)},
            {"why": "position is -0",
             "proof": proof([good[0]], [alt0]).replace('"position":0', '"position":-0')},
            {"why": "duplicate key", "proof": proof([good[0]], [alt0]).replace('"v":1', '"v":1,"v":1')},
            {"why": "feed in uppercase hex", "proof": proof([good[0]], [alt0], feed=FEED.upper())},
            {"why": "type is wrong", "proof": proof([good[0]], [alt0], type="fork-proof")},
            {"why": "a chain ends at an unsigned message", "proof": proof([good[0], good[1]], [alt0])},
            {"why": "a chain line is tampered",
             "proof": proof([good[0]], [alt0.replace('"p":7', '"p":8')])},
        ],
        "subfeed_hash_vectors": [
            {"name": "primes", "hash": subfeed_hash("primes")},
            {"name": "héllo", "hash": subfeed_hash("héllo")},
            {"name": CURATION, "hash": subfeed_hash(CURATION)},
            {"name": ["a", {"b": "é"}], "hash": subfeed_hash(["a", {"b": "é"}])},
            {"name": "~" + hashlib.sha1(b"x").hexdigest(), "hash": hashlib.sha1(b"x").hexdigest()},
            {"name": "~" + hashlib.sha1(b"x").hexdigest().upper(), "hash": hashlib.sha1(b"x").hexdigest()},
            {"name": {"\uffff": 1, "😀": 2, "a": [True, False, None, -5, 0, {}], "": "\x00\x1f\x7f/\"\\"},
             "hash": subfeed_hash({"\uffff": 1, "😀": 2, "a": [True, False, None, -5, 0, {}],
                                   "": "\x00\x1f\x7f/\"\\"}),
             "json": json.dumps({"\uffff": 1, "😀": 2, "a": [True, False, None, -5, 0, {}],
                                 "": "\x00\x1f\x7f/\"\\"}, sort_keys=True, separators=(",", ":"))},
            {"name": [9007199254740991, -9007199254740991], "hash": subfeed_hash([2**53 - 1, -(2**53 - 1)])},
        ],
        "invalid_subfeed_names_json": [
            {"why": "a float in an object name", "name_json": '{"x":1.5}'},
            {"why": "an integer beyond 2^53-1 in an array name", "name_json": "[9007199254740992]"},
            {"why": "a lone surrogate in a string name", "name_json": '"a\\ud800"'},
            {"why": "a lone surrogate in an object name's key", "name_json": '{"\\udc00":1}'},
            {"why": "empty string", "name_json": '""'},
            {"why": "'~' not followed by exactly 40 hex", "name_json": '"~abc"'},
            {"why": "a number is not a name", "name_json": "5"},
        ],
        "uri_vectors": [
            {"uri": f"feed://{FEED}", "feed_id": FEED, "subfeed_hash": None},
            {"uri": f"feed://{FEED.upper()}/primes?x=1#y", "feed_id": FEED, "subfeed_hash": SUB},
            {"uri": f"feed://{FEED}/a%2Fb", "feed_id": FEED, "subfeed_hash": subfeed_hash("a/b")},
            {"uri": f"feed://{FEED}/a%2fb", "feed_id": FEED, "subfeed_hash": subfeed_hash("a/b")},
            {"uri": f"feed://{FEED}/a/b", "feed_id": FEED, "subfeed_hash": subfeed_hash("a/b")},
            {"uri": f"feed://{FEED}/h%C3%A9llo", "feed_id": FEED, "subfeed_hash": subfeed_hash("héllo")},
            {"uri": f"feed://{FEED}/%7E{SUB.upper()}", "feed_id": FEED, "subfeed_hash": SUB},
        ],
        "invalid_uris": [
            {"why": "'%' not followed by two hex digits", "uri": f"feed://{FEED}/a%zzb"},
            {"why": "percent-decodes to invalid UTF-8", "uri": f"feed://{FEED}/%ff"},
            {"why": "percent-decodes to an encoded surrogate", "uri": f"feed://{FEED}/%ED%A0%80"},
            {"why": "feed ID of 63 hex", "uri": f"feed://{FEED[:63]}"},
            {"why": "'~' not followed by exactly 40 hex", "uri": f"feed://{FEED}/~abc"},
            {"why": "not feed://", "uri": f"sha1://{FEED[:40]}"},
        ],
        "uri_writer_vectors": [
            {"name": n, "uri": subfeed_uri(FEED, n)}
            for n in ("primes", "a b/c~é!*'()_.-", CURATION)
        ],
    }
    print(json.dumps(vectors, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
