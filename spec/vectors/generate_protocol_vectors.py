"""Regenerate spec/vectors/protocol-v1.json: node envelopes, hub requests, task results,
subfeed heads and bucket keys (spec/node-protocol.md, spec/hub.md, spec/tasks.md,
spec/bucket.md). Deterministic: fixed keys, times and nonces.

Run: .venv/bin/python spec/vectors/generate_protocol_vectors.py > spec/vectors/protocol-v1.json
Checked by tests/protocol/test_protocol_vectors.py (Python) and js/test/vectors.test.js.
Every ``invalid`` case must be refused and says why.
"""

from __future__ import annotations

import hashlib
import json

import nacl.signing
import orjson

from kachery_node.protocol.bucket_layout import (
    file_path,
    subfeed_head_path,
    subfeed_segment_path,
    task_result_path,
)
from kachery_node.protocol.hub_requests import _signed_bytes as hub_signed_bytes
from kachery_node.protocol.node_messages import CONTEXT as ENVELOPE_CONTEXT
from kachery_node.protocol.task_messages import RESULT_CONTEXT, task_hash

NODE_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
OTHER_SEED = bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
NODE = nacl.signing.SigningKey(NODE_SEED)
OTHER = nacl.signing.SigningKey(OTHER_SEED)
NODE_ID = NODE.verify_key.encode().hex()
IDENTITY = "01" + "00" * 31
NOW = 1700000000000
CHANNEL = "lab.ch"
HUB = nacl.signing.SigningKey(hashlib.sha256(b"kachery vector hub").digest()).verify_key.encode().hex()


def sign(key: nacl.signing.SigningKey, data: bytes) -> str:
    return key.sign(data).signature.hex()


# ----------------------------------------------------------------------------- envelopes
def envelope(body: bytes | str, key: nacl.signing.SigningKey = NODE, sender: str | None = None,
             sig: str | None = None) -> str:
    raw = body.encode() if isinstance(body, str) else body
    sig = sig or sign(key, ENVELOPE_CONTEXT + hashlib.sha256(raw).digest())
    return raw.decode() + "\t" + (sender or key.verify_key.encode().hex()) + "\t" + sig


def env_body(**over: object) -> str:
    d = {"type": "offer", "request_id": "r0123456789", "function_id": "f.1", "channel": CHANNEL,
         "band": "provide-tasks", "time_ms": NOW, "nonce": "0123456789abcdef01234567", **over}
    return orjson.dumps({k: v for k, v in d.items() if v is not None},
                        option=orjson.OPT_SORT_KEYS).decode()


def envelopes() -> dict:
    good = env_body()
    return {
        "now_ms": NOW, "channel": CHANNEL, "band": "provide-tasks",
        "valid": [
            {"why": "an offer", "line": envelope(good), "sender": NODE_ID, "body": json.loads(good)},
            {"why": "body with TAB and space whitespace (split at the last two TABs)",
             "line": envelope(good.replace(',"channel"', ',\t "channel"')), "sender": NODE_ID,
             "body": json.loads(good)},
            {"why": "nonce of 8 characters of the whole alphabet",
             "line": envelope(env_body(nonce="aZ09_-xY")), "sender": NODE_ID,
             "body": json.loads(env_body(nonce="aZ09_-xY"))},
        ],
        "invalid": [
            {"why": "body changed after signing", "line": envelope(good).replace('"f.1"', '"f.2"')},
            {"why": "arrived on another channel", "line": envelope(good), "channel": "lab.other"},
            {"why": "arrived on another band", "line": envelope(good), "band": "request-tasks"},
            {"why": "stale: time_ms 60001 ms from now", "line": envelope(env_body(time_ms=NOW - 60001))},
            {"why": "time_ms written as a float", "line": envelope(good.replace(str(NOW), f"{NOW}.0"))},
            {"why": "nonce of 7 characters", "line": envelope(env_body(nonce="abcdefg"))},
            {"why": "nonce of 65 characters", "line": envelope(env_body(nonce="a" * 65))},
            {"why": "nonce with a character outside [A-Za-z0-9_-]",
             "line": envelope(env_body(nonce="abcd.efgh"))},
            {"why": "duplicate key type", "line": envelope(good.replace('"type":"offer"',
                                                                        '"type":"offer","type":"offer"'))},
            {"why": "no type", "line": envelope(env_body(type=None))},
            {"why": "sender in uppercase hex",
             "line": envelope(good, sender=NODE_ID.upper())},
            {"why": "two fields only", "line": good + "\t" + NODE_ID},
            {"why": "sender and R are the identity, S = 0 (Ed25519 small-order rule)",
             "line": envelope(good, sender=IDENTITY, sig=IDENTITY + "00" * 32)},
            {"why": "body is a JSON array", "line": envelope("[" + good + "]")},
        ],
    }


# ----------------------------------------------------------------------------- hub requests
def hub_request(body: str, kind: str = "node", key: nacl.signing.SigningKey = NODE) -> dict:
    raw = body.encode()
    id_h, sig_h = {"node": ("Kachery-Node-Id", "Kachery-Node-Signature"),
                   "user": ("Kachery-User-Id", "Kachery-User-Signature")}[kind]
    return {"kind": kind, "body": body,
            "headers": {id_h: key.verify_key.encode().hex(),
                        sig_h: sign(key, hub_signed_bytes(kind, raw))}}


def hub_body(**over: object) -> str:
    d = {"type": "channel_info", "hub": HUB, "time_ms": NOW, "nonce": "n0123456789abcdef",
         "channel": CHANNEL, **over}
    return orjson.dumps({k: v for k, v in d.items() if v is not None},
                        option=orjson.OPT_SORT_KEYS).decode()


def hub_requests() -> dict:
    good = hub_body()
    as_user = hub_request(good, "node")
    as_user["kind"] = "user"
    as_user["headers"] = {"Kachery-User-Id": as_user["headers"]["Kachery-Node-Id"],
                          "Kachery-User-Signature": as_user["headers"]["Kachery-Node-Signature"]}
    tampered = hub_request(good)
    tampered["body"] = good.replace(CHANNEL, "lab.other")
    return {
        "hub_id": HUB, "now_ms": NOW,
        "valid": [{"why": "a node request", **hub_request(good), "signer": NODE_ID},
                  {"why": "a user request", **hub_request(good, "user", OTHER),
                   "signer": OTHER.verify_key.encode().hex()}],
        "invalid": [
            {"why": "a node signature presented as a user signature (the kind is signed)", **as_user},
            {"why": "body changed after signing", **tampered},
            {"why": "duplicate key hub", **hub_request(good.replace('"hub":', f'"hub":"{HUB}","hub":'))},
            {"why": "nonce of 15 characters", **hub_request(hub_body(nonce="n" * 15))},
            {"why": "time_ms written as a float", **hub_request(good.replace(str(NOW), f"{NOW}.0"))},
            {"why": "signed for another hub", **hub_request(hub_body(hub="ab" * 32))},
            {"why": "stale: time_ms 60001 ms from now", **hub_request(hub_body(time_ms=NOW + 60001))},
        ],
    }


# ----------------------------------------------------------------------------- task results
def result_object(body: str | bytes, key: nacl.signing.SigningKey = NODE) -> dict:
    raw = body.encode() if isinstance(body, str) else body
    return {"body": raw.decode(), "signature": sign(key, RESULT_CONTEXT + hashlib.sha256(raw).digest())}


def task_results() -> dict:
    th = task_hash("f.1", {"x": 1})

    def body(**over: object) -> str:
        d = {"task_hash": th, "function_id": "f.1", "result": {"y": [1, 2.5, "é"]},
             "provider": NODE_ID, "time_ms": NOW, **over}
        return orjson.dumps({k: v for k, v in d.items() if v is not None},
                            option=orjson.OPT_SORT_KEYS).decode()

    good = result_object(body())
    as_text = orjson.dumps(good).decode()
    upper = dict(good, signature=good["signature"].upper())
    return {
        "task_hash": th, "function_id": "f.1", "kwargs": {"x": 1},
        "valid": [{"why": "a result object as stored in the bucket", "object": as_text,
                   "provider": NODE_ID, "result": {"y": [1, 2.5, "é"]}, "time_ms": NOW}],
        "invalid": [
            {"why": "result changed after signing",
             "object": orjson.dumps(dict(good, body=good["body"].replace("2.5", "3.5"))).decode()},
            {"why": "signed by another key than the provider it names",
             "object": orjson.dumps(result_object(body(), OTHER)).decode()},
            {"why": "answers another task (function_id)",
             "object": orjson.dumps(result_object(body(function_id="f.2"))).decode()},
            {"why": "an unknown key in the object",
             "object": orjson.dumps(dict(good, extra=1)).decode()},
            {"why": "an unknown key in the body",
             "object": orjson.dumps(result_object(body(extra=1))).decode()},
            {"why": "time_ms is missing", "object": orjson.dumps(result_object(body(time_ms=None))).decode()},
            {"why": "signature in uppercase hex", "object": orjson.dumps(upper).decode()},
            {"why": "duplicate key in the body",
             "object": orjson.dumps(result_object(
                 body().replace('"time_ms":', '"time_ms":1,"time_ms":'))).decode()},
            {"why": "duplicate key in the object",
             "object": as_text.replace('{"body":', '{"body":"x","body":', 1)},
            {"why": "body is not UTF-8 once unescaped (a lone surrogate)",
             "object": as_text.replace('\\"f.1\\"', '\\"f.1\\ud800\\"', 1)},
        ],
    }


# ----------------------------------------------------------------------------- heads
def heads() -> dict:
    line = "x" * 10  # heads are parsed here; their lines are verified on import

    def head(text_over: str | None = None, **over: object) -> str:
        d = {"v": 1, "count": 2003, "segmentSize": 1000, "tail": [line] * 3, **over}
        return text_over or orjson.dumps({k: v for k, v in d.items() if v is not None}).decode()

    good = head()
    return {
        "valid": [{"why": "count 2003: segments 0 and 1, then a tail of 3", "head": good, "count": 2003,
                   "tail_length": 3},
                  {"why": "count 2000: an empty tail", "head": head(count=2000, tail=[]), "count": 2000,
                   "tail_length": 0}],
        "invalid": [
            {"why": "an unknown key", "head": head(extra=1)},
            {"why": "tail is missing", "head": head(tail=None)},
            {"why": "segmentSize is not 1000", "head": head(segmentSize=999)},
            {"why": "v is 2", "head": head(v=2)},
            {"why": "count above 2^53-1", "head": head(count=2**53 + 3)},
            {"why": "count is -0", "head": head(count=0, tail=[]).replace('"count":0', '"count":-0')},
            {"why": "tail length does not match count", "head": head(count=2004)},
            {"why": "duplicate key count", "head": good.replace('"count":2003', '"count":3,"count":2003')},
            {"why": "a tail entry is not a string", "head": head(tail=[line, line, 5])},
        ],
    }


def bucket_keys() -> dict:
    feed, sub = "d7" * 32, hashlib.sha1(b"primes").hexdigest()
    sha1 = hashlib.sha1(b"Hello, world!").hexdigest()
    th = task_hash("f.1", {"x": 1})
    return {"channel": CHANNEL, "feed_id": feed, "subfeed_hash": sub, "sha1": sha1, "task_hash": th,
            "head": subfeed_head_path(CHANNEL, feed, sub),
            "segment_0": subfeed_segment_path(CHANNEL, feed, sub, 0),
            "segment_12": subfeed_segment_path(CHANNEL, feed, sub, 12),
            "file": file_path(CHANNEL, sha1), "task_result": task_result_path(CHANNEL, th)}


def main() -> None:
    print(json.dumps({"description": "kachery protocol v1 vectors: envelopes, hub requests, task "
                                     "results, subfeed heads, bucket keys",
                      "envelopes": envelopes(), "hub_requests": hub_requests(),
                      "task_results": task_results(), "heads": heads(),
                      "bucket_keys": bucket_keys()}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
