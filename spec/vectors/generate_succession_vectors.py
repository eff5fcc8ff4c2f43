"""Regenerate spec/vectors/succession-v1.json (deterministic: fixed seeds and timestamps).

Run: .venv/bin/python spec/vectors/generate_succession_vectors.py > spec/vectors/succession-v1.json
tests/feeds/test_succession_vectors.py checks the committed file against the implementation and
that this script still writes exactly it.

The story (spec/feeds.md §9): feed key K0 writes messages 0-1 of subfeed "notes"; record 1
commits recovery key Q; record 2 hands the feed to K1 (boundary 2); K1 writes messages 2-3
(message 2 carries records 1-2); record 3, signed by Q because K1 was "lost", hands the feed to
K2 (boundary 4); K2 writes message 4 (carrying records 1-3). Every ``invalid_*`` case is refused
by a conforming reader and says why; each ``violations`` case is a reader that imported
``range`` (learning the records it carries) and is then given ``then``: refused, and reported
with exactly ``proof``.
"""

from __future__ import annotations

import hashlib
import json

import nacl.bindings
import orjson

from kachery_feeds.messages import build_body, message_hash, sign_hash, to_wire
from kachery_feeds.succession import KeyChain, build_record, build_violation_proof
from kachery_feeds.uris import subfeed_hash


def seed(label: str) -> bytes:
    return hashlib.sha256(b"kachery succession vectors " + label.encode()).digest()


def pub(s: bytes) -> bytes:
    return nacl.bindings.crypto_sign_seed_keypair(s)[0]


K0, K1, K2, Q, THIEF = (seed(x) for x in ("K0", "K1", "K2", "Q", "thief"))
FEED = pub(K0).hex()
SUB = subfeed_hash("notes")
TS = 1800000000000


def message(s: bytes, n: int, prev: bytes | None, payload: object,
            carried: list[bytes] | None = None) -> bytes:
    succession = None if carried is None else orjson.dumps([x.decode() for x in carried])
    body = build_body(FEED, SUB, n, prev, TS + n, orjson.dumps(payload), None, succession)
    sk = nacl.bindings.crypto_sign_seed_keypair(s)[1]
    return to_wire(body, sign_hash(sk, message_hash(body)))


def h(line: bytes) -> bytes:
    return message_hash(line.rsplit(b"\t", 1)[0])


def body_hash(line: bytes) -> bytes:
    return hashlib.sha256(line.rsplit(b"\t", 1)[0]).digest()


def main() -> dict:
    m0 = message(K0, 0, None, "zero")
    m1 = message(K0, 1, h(m0), "one")
    r1 = build_record(FEED, 1, None, pub(K0), pub(Q), "key", {}, TS + 10, K0)
    r2 = build_record(FEED, 2, body_hash(r1), pub(K1), pub(Q), "key", {SUB: (2, h(m1))}, TS + 11, K0)
    m2 = message(K1, 2, h(m1), "two", [r1, r2])
    m3 = message(K1, 3, h(m2), "three")
    r3 = build_record(FEED, 3, body_hash(r2), pub(K2), None, "recovery", {SUB: (4, h(m3))}, TS + 12, Q)
    m4 = message(K2, 4, h(m3), "four", [r1, r2, r3])
    records = [r1, r2, r3]
    chain = KeyChain.verify(FEED, records)
    old_key_4 = message(K1, 4, h(m3), "the lost key K1, found by someone else")
    k0_after = message(K0, 2, h(m1), "K0 after handing over")

    def lines(xs: list[bytes]) -> list[str]:
        return [x.decode() for x in xs]

    return {
        "description": "kachery feed key succession v1 (spec/feeds.md §9)",
        "seeds": {"K0": K0.hex(), "K1": K1.hex(), "K2": K2.hex(), "Q": Q.hex()},
        "feed": FEED,
        "subfeed": SUB,
        "subfeed_name": "notes",
        "records": lines(records),
        "record_hashes": [body_hash(r).hex() for r in records],
        "key_for": [{"position": n, "key": chain.key_for(SUB, n).hex()} for n in range(6)],
        "messages": lines([m0, m1, m2, m3, m4]),
        "invalid_chains": [
            {"why": "record 1 signed by a key that is not the feed's",
             "records": lines([build_record(FEED, 1, None, pub(THIEF), None, "key", {}, TS, THIEF)])},
            {"why": "signed 'by recovery' with no recovery key committed before",
             "records": lines([build_record(FEED, 1, None, pub(THIEF), None, "recovery", {}, TS, THIEF)])},
            {"why": "record 2 does not name record 1's hash as prev",
             "records": lines([r1, build_record(FEED, 2, b"\x00" * 32, pub(K1), None, "key",
                                                {SUB: (2, h(m1))}, TS, K0)])},
            {"why": "record 3 moves the subfeed's boundary back (4 -> 1)",
             "records": lines([r1, r2, build_record(FEED, 3, body_hash(r2), pub(K2), None, "recovery",
                                                    {SUB: (1, h(m0))}, TS, Q)])},
            {"why": "a record keeping the key lists heads",
             "records": lines([build_record(FEED, 1, None, pub(K0), None, "key", {SUB: (1, h(m0))},
                                            TS, K0)])},
            {"why": "record 3 signed by the recovery key when record 2 committed none",
             "records": lines([build_record(FEED, 1, None, pub(K1), None, "key", {SUB: (2, h(m1))}, TS, K0),
                               build_record(FEED, 2, body_hash(build_record(
                                   FEED, 1, None, pub(K1), None, "key", {SUB: (2, h(m1))}, TS, K0)),
                                   pub(K2), None, "recovery", {SUB: (2, h(m1))}, TS, Q)])},
        ],
        "violations": [
            {"why": "K1 signs message 4 after record 3 handed the subfeed to K2 at 4",
             "range": lines([m0, m1, m2, m3, m4]), "then": lines([old_key_4]), "position": 4,
             "proof": build_violation_proof(FEED, SUB, 4, chain, [old_key_4]).decode()},
            {"why": "K0 signs message 2 after record 2 handed the subfeed to K1 at 2 (the reader "
                    "knows the chain from the carried records)",
             "range": lines([m0, m1, m2, m3, m4]), "then": lines([k0_after]), "position": 2,
             "proof": build_violation_proof(FEED, SUB, 2, chain, [k0_after]).decode()},
        ],
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1, ensure_ascii=False))
