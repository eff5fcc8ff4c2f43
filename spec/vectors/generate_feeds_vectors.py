"""Regenerate spec/vectors/feeds-v1.json (deterministic: fixed seed and timestamps).

Run: python spec/vectors/generate_feeds_vectors.py > spec/vectors/feeds-v1.json
The tests check the committed file against the implementation, so a change to the format shows
up as a test failure, not as silently regenerated vectors.
"""

from __future__ import annotations

import hashlib
import json

import nacl.bindings

from kachery_feeds.messages import SIGNATURE_CONTEXT, build_body, message_hash, sign_hash, to_wire
from kachery_feeds.payloads import encode_json
from kachery_feeds.uris import subfeed_hash

CURATION = {"name": "curation", "sortingId": 3}
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def main() -> None:
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(SEED)
    feed_id = pk.hex()
    sub_name = "primes"
    sh = subfeed_hash(sub_name)
    payloads = [{"p": 2}, {"p": 3, "note": "héllo ✓ 😀"}, {"p": 5, "x": [1.5, -0.0, 1e-7, None, True]}]
    metas = [None, None, {"submittedBy": "ab" * 32}]
    messages = []
    prev = None
    for n, (payload, meta) in enumerate(zip(payloads, metas, strict=True)):
        ts = 1700000000000 + n
        body = build_body(
            feed_id, sh, n, prev, ts, encode_json(payload), None if meta is None else encode_json(meta)
        )
        h = message_hash(body)
        signed = n != 1  # message 1 is inside a batch: covered by message 2's signature
        sig = sign_hash(sk, h) if signed else None
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
    vectors = {
        "description": "kachery feed message format v1 test vectors; see spec/feeds.md",
        "seed_hex": SEED.hex(),
        "feed_id": feed_id,
        "subfeed_name": sub_name,
        "subfeed_hash": sh,
        "signature_context_hex": SIGNATURE_CONTEXT.hex(),
        "messages": messages,
        "segment": "".join(w + "\n" for w in good),
        "subfeed_hash_vectors": [
            {"name": "primes", "hash": subfeed_hash("primes")},
            {"name": "héllo", "hash": subfeed_hash("héllo")},
            {"name": CURATION, "hash": subfeed_hash(CURATION)},
            {"name": ["a", {"b": "é"}], "hash": subfeed_hash(["a", {"b": "é"}])},
            {"name": "~" + hashlib.sha1(b"x").hexdigest(), "hash": hashlib.sha1(b"x").hexdigest()},
        ],
        "invalid_ranges": [
            {"why": "payload of message 1 changed (chain no longer links)", "wire": tampered_payload},
            {"why": "signature of the last message corrupted", "wire": good[:2] + [bad_sig]},
            {"why": "range ends at an unsigned message", "wire": good[:2]},
            {"why": "gap in numbering", "wire": [good[0], good[2]]},
            {"why": "no tab separator", "wire": [good[0].replace("\t", " ")]},
            {"why": "signature is not hex", "wire": [good[0].split("\t")[0] + "\t" + "zz" * 64]},
        ],
    }
    print(json.dumps(vectors, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
