# ruff: noqa: E501
"""Regenerate spec/vectors/witness-v1.json: checkpoints, cosignatures, witnessed checkpoints
and fork notices (spec/witness.md). Deterministic: fixed keys, timestamps and times.

Run: .venv/bin/python spec/vectors/generate_witness_vectors.py > spec/vectors/witness-v1.json
Checked by tests/witness/test_witness_vectors.py. Every ``invalid`` case must be refused and
says why (``why``).
"""

from __future__ import annotations

import base64
import hashlib
import json

import nacl.bindings
import nacl.signing
import orjson

from kachery_feeds.checkpoints import (
    Checkpoint,
    cosign,
    cosigned_message,
    key_id,
)
from kachery_feeds.forks import build_fork_proof
from kachery_feeds.messages import build_body, message_hash, sign_hash, to_wire
from kachery_feeds.uris import subfeed_hash

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PK, SK = nacl.bindings.crypto_sign_seed_keypair(SEED)
FEED = PK.hex()
SUB = subfeed_hash("notebook")
TS = 1800000000000
WITNESS = nacl.signing.SigningKey(hashlib.sha256(b"kachery vector witness").digest())
WITNESS2 = nacl.signing.SigningKey(hashlib.sha256(b"kachery vector witness 2").digest())
TIME = 1800000123


def chain(payloads: list[str], start_prev: bytes | None = None, first: int = 0, sign_all: bool = True) -> list[bytes]:
    lines, prev = [], start_prev
    for i, p in enumerate(payloads):
        body = build_body(FEED, SUB, first + i, prev, TS + i, p.encode())
        h = message_hash(body)
        last = i == len(payloads) - 1
        lines.append(to_wire(body, sign_hash(SK, h) if (sign_all or last) else None))
        prev = h
    return lines


MAIN = chain(['{"i":0}', '{"i":1}', '{"i":2}'], sign_all=False)
HASHES = [message_hash(line.rsplit(b"\t", 1)[0]) for line in MAIN]
CP = Checkpoint(FEED, SUB, 3, HASHES[2])
RIVAL = chain(['{"i":"rival"}'], start_prev=HASHES[1], first=2)


def text(cp: Checkpoint) -> str:
    return cp.text().decode()


def cosignature_line(witness_hex: str, t: int, sig: bytes) -> str:
    blob = key_id(witness_hex) + t.to_bytes(8, "big") + sig
    return f"\u2014 kachery-witness/{witness_hex} {base64.b64encode(blob).decode()}"


def obj(**over: object) -> str:
    d = {"type": "kachery-witnessed-checkpoint", "v": 1, "checkpoint": text(CP),
         "last": MAIN[2].decode(), "cosignatures": [cosign(WITNESS, CP, TIME).line()]}
    d.update(over)
    return orjson.dumps(d).decode()


def main() -> dict:
    c1 = cosign(WITNESS, CP, TIME)
    c2 = cosign(WITNESS2, CP, TIME + 60)
    w_hex = WITNESS.verify_key.encode().hex()
    bad_sig = bytearray(c1.signature)
    bad_sig[0] ^= 1
    return {
        "about": "spec/witness.md; regenerate with spec/vectors/generate_witness_vectors.py",
        "feed_id": FEED,
        "subfeed_hash": SUB,
        "messages": [x.decode() for x in MAIN],
        "checkpoints": {
            "valid": [
                {"why": "derived from message 2 (signed): size 3, its hash", "last": MAIN[2].decode(),
                 "text": text(CP), "size": 3, "hash": HASHES[2].hex()},
            ],
            "invalid_text": [
                {"why": "no final LF", "text": text(CP)[:-1]},
                {"why": "size with a leading zero", "text": text(CP).replace("\n3\n", "\n03\n")},
                {"why": "size 0 (a checkpoint names at least one message)",
                 "text": f"kachery-feed/{FEED}/{SUB}\n0\n{HASHES[0].hex()}\n"},
                {"why": "uppercase hex hash", "text": text(CP).replace(HASHES[2].hex(), HASHES[2].hex().upper())},
                {"why": "base64 hash (C2SP uses base64; kachery hashes are hex)",
                 "text": f"kachery-feed/{FEED}/{SUB}\n3\n{base64.b64encode(HASHES[2]).decode()}\n"},
                {"why": "extension line (kachery checkpoints have none)", "text": text(CP) + "extra\n"},
                {"why": "origin with a scheme", "text": "feed://" + text(CP)[len("kachery-feed/"):]},
            ],
            "invalid_last": [
                {"why": "unsigned last message (a checkpoint ends at a signed message)", "last": MAIN[1].decode()},
                {"why": "signature does not verify", "last": (MAIN[2].rsplit(b"\t", 1)[0] + b"\t" + sign_hash(SK, HASHES[0]).hex().encode()).decode()},
            ],
        },
        "cosignatures": {
            "witness_public_key": w_hex,
            "valid": [
                {"why": "cosignature/v1 over the checkpoint at time 1800000123", "checkpoint": text(CP),
                 "time": TIME, "signed_message": cosigned_message(CP, TIME).decode(),
                 "key_id_hex": key_id(w_hex).hex(), "line": c1.line()},
            ],
            "invalid": [
                {"why": "signature of another checkpoint (size 2)", "checkpoint": text(CP),
                 "line": cosign(WITNESS, Checkpoint(FEED, SUB, 2, HASHES[1]), TIME).line()},
                {"why": "signature bit flipped", "checkpoint": text(CP), "line": cosignature_line(w_hex, TIME, bytes(bad_sig))},
                {"why": "time changed after signing", "checkpoint": text(CP), "line": cosignature_line(w_hex, TIME + 1, c1.signature)},
            ],
            "malformed": [
                {"why": "key ID does not match the name", "line": c1.line().replace(w_hex, WITNESS2.verify_key.encode().hex())},
                {"why": "hyphen instead of EM DASH", "line": "-" + c1.line()[1:]},
                {"why": "uppercase key hex", "line": c1.line().replace(w_hex, w_hex.upper())},
                {"why": "base64 without padding", "line": c1.line().rstrip("=")},
            ],
        },
        "witnessed_checkpoints": {
            "valid": [
                {"why": "one witness", "object": obj(), "witnesses": [w_hex]},
                {"why": "two witnesses", "object": obj(cosignatures=[c1.line(), c2.line()]),
                 "witnesses": sorted([w_hex, WITNESS2.verify_key.encode().hex()])},
                {"why": "no cosignature yet (derived from the head)", "object": obj(cosignatures=[]), "witnesses": []},
                {"why": "a cosignature that does not verify is dropped, not fatal",
                 "object": obj(cosignatures=[cosignature_line(w_hex, TIME + 1, c1.signature)]), "witnesses": []},
            ],
            "invalid": [
                {"why": "last message does not derive the checkpoint (size)", "object": obj(checkpoint=text(Checkpoint(FEED, SUB, 4, HASHES[2])))},
                {"why": "last message of the rival branch", "object": obj(last=RIVAL[0].decode())},
                {"why": "unknown key", "object": obj(extra=1)},
                {"why": "v is 2", "object": obj(v=2)},
                {"why": "malformed cosignature line", "object": obj(cosignatures=["\u2014 someone else"])},
            ],
        },
        "fork_notices": {
            "valid": [
                {"why": "two branches at message 2, as a witness proves it: its copy vs the request",
                 "proof": build_fork_proof(FEED, SUB, 2, [MAIN[2]], RIVAL).decode(), "position": 2},
            ],
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=1, ensure_ascii=False))
