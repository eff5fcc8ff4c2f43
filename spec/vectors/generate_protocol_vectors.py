# ruff: noqa: E501
"""Regenerate spec/vectors/protocol-v1.json: node messages (v2, with attachments), the relay's
binary frames, hub requests, task results, subfeed heads and bucket keys (spec/node-protocol.md,
spec/pubsub.md, spec/hub.md, spec/tasks.md, spec/bucket.md). Deterministic: fixed keys, times
and nonces.

Run: .venv/bin/python spec/vectors/generate_protocol_vectors.py > spec/vectors/protocol-v1.json
Checked by tests/protocol/test_protocol_vectors.py (Python) and js/test/vectors.test.js.
Every ``invalid`` case must be refused and says why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.signing
import orjson

from kachery_node.protocol import relay_frames
from kachery_node.protocol.bucket_layout import (
    file_path,
    subfeed_head_path,
    subfeed_segment_path,
    task_result_path,
)
from kachery_node.protocol.hub_requests import _signed_bytes as hub_signed_bytes
from kachery_node.protocol.node_messages import context as envelope_context
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
FEEDS = json.loads((Path(__file__).parent / "feeds-v1.json").read_text())


def envelope(signed: bytes | str, key: nacl.signing.SigningKey = NODE, sender: bytes | None = None,
             sig: bytes | None = None, version: int = 2, band: str = "provide-tasks") -> str:
    """A v2 node message (hex) signed over ``signed`` (the body, and LF + attachment if any) for
    CHANNEL and ``band``."""
    raw = signed.encode() if isinstance(signed, str) else signed
    to_sign = envelope_context(CHANNEL, band) + hashlib.sha256(raw).digest()
    sig = sig if sig is not None else key.sign(to_sign).signature
    return (bytes([version]) + (sender if sender is not None else key.verify_key.encode()) + sig + raw).hex()


def env_body(**over: object) -> str:
    d = {"type": "offer", "request_id": "r0123456789", "function_id": "f.1", "time_ms": NOW,
         "nonce": "Zm9yIHRoZSB2ZWN0b3Jz", **over}
    return orjson.dumps({k: v for k, v in d.items() if v is not None},
                        option=orjson.OPT_SORT_KEYS).decode()


def envelopes() -> dict:
    good = env_body()
    # newSubfeedMessages: the wire lines of spec/vectors/feeds-v1.json's segment, attached as they are.
    lines = FEEDS["segment"].encode()
    news = env_body(type="newSubfeedMessages", request_id=None, function_id=None,
                    feed_id=FEEDS["feed_id"], subfeed_hash=FEEDS["subfeed_hash"])
    with_lines = news.encode() + b"\n" + lines
    v1_body = env_body(channel=CHANNEL, band="provide-tasks")
    v1_sig = NODE.sign(b"kachery-pubsub-v1\x00" + hashlib.sha256(v1_body.encode()).digest()).signature.hex()
    v1_line = (v1_body + "\t" + NODE_ID + "\t" + v1_sig).encode().hex()
    signed = envelope(good)
    body_at = 2 * (1 + 32 + 64)
    return {
        "version": 2, "now_ms": NOW, "channel": CHANNEL, "band": "provide-tasks",
        "valid": [
            {"why": "an offer", "message_hex": signed, "sender": NODE_ID, "body": json.loads(good)},
            {"why": "body with TAB and space whitespace",
             "message_hex": envelope(good.replace(',"nonce"', ',\t "nonce"')), "sender": NODE_ID,
             "body": json.loads(good)},
            {"why": "nonce of 8 characters of the whole alphabet",
             "message_hex": envelope(env_body(nonce="aZ09_-xY")), "sender": NODE_ID,
             "body": json.loads(env_body(nonce="aZ09_-xY"))},
            {"why": "newSubfeedMessages: wire lines attached in segment form, signed with the body",
             "message_hex": envelope(with_lines), "sender": NODE_ID, "body": json.loads(news),
             "attachment_hex": lines.hex()},
            {"why": "an attachment of any bytes (LF, TAB, NUL, 0xff included)",
             "message_hex": envelope(good.encode() + b"\n" + bytes(range(256)) + b"\n\n"),
             "sender": NODE_ID, "body": json.loads(good), "attachment_hex": (bytes(range(256)) + b"\n\n").hex()},
        ],
        "invalid": [
            {"why": "a version 1 message (a text line: body TAB sender TAB signature)", "message_hex": v1_line},
            {"why": "version byte 3", "message_hex": envelope(good, version=3)},
            {"why": "body changed after signing",
             "message_hex": signed[:body_at] + good.replace('"f.1"', '"f.2"').encode().hex()},
            {"why": "attachment changed after signing",
             "message_hex": envelope(with_lines)[:-2] + ("00" if envelope(with_lines)[-2:] != "00" else "01")},
            {"why": "attachment cut off (the signature covers it)",
             "message_hex": envelope(with_lines)[: -2 * len(lines)]},
            {"why": "a LF after the body and no attachment", "message_hex": envelope(good + "\n")},
            {"why": "a LF inside the body (the body ends at the first LF)",
             "message_hex": envelope(good.replace(',"nonce"', ',\n"nonce"'))},
            {"why": "arrived on another channel (the signature binds the channel)", "message_hex": signed,
             "channel": "lab.other"},
            {"why": "arrived on another band (the signature binds the band)", "message_hex": signed,
             "band": "request-tasks"},
            {"why": "signed for another band", "message_hex": envelope(good, band="request-tasks")},
            {"why": "stale: time_ms 60001 ms from now", "message_hex": envelope(env_body(time_ms=NOW - 60001))},
            {"why": "time_ms written as a float", "message_hex": envelope(good.replace(str(NOW), f"{NOW}.0"))},
            {"why": "nonce of 7 characters", "message_hex": envelope(env_body(nonce="abcdefg"))},
            {"why": "nonce of 65 characters", "message_hex": envelope(env_body(nonce="a" * 65))},
            {"why": "nonce with a character outside [A-Za-z0-9_-]",
             "message_hex": envelope(env_body(nonce="abcd.efgh"))},
            {"why": "duplicate key type",
             "message_hex": envelope(good.replace('"type":"offer"', '"type":"offer","type":"offer"'))},
            {"why": "no type", "message_hex": envelope(env_body(type=None))},
            {"why": "signed by another key than the sender's", "message_hex": envelope(good, key=OTHER,
                                                                                       sender=NODE.verify_key.encode())},
            {"why": "header only, no body", "message_hex": signed[:body_at]},
            {"why": "sender and R are the identity, S = 0 (Ed25519 small-order rule)",
             "message_hex": envelope(good, sender=bytes.fromhex(IDENTITY),
                                     sig=bytes.fromhex(IDENTITY) + bytes(32))},
            {"why": "body is a JSON array", "message_hex": envelope("[" + good + "]")},
        ],
    }


# ----------------------------------------------------------------------------- relay frames
def relay_frames_vectors() -> dict:
    band = f"{CHANNEL}-provideFeeds"
    m1, m2 = bytes.fromhex(envelope(env_body())), b"\x02any bytes\n\x00"
    p1, p2 = relay_frames.encode_publish(7, band, m1), relay_frames.encode_publish(0, band, m2)
    d1 = relay_frames.encode_message(band, NODE_ID, NOW, m1)
    d2 = relay_frames.encode_message(band, OTHER.verify_key.encode().hex(), NOW + 1, m2)
    return {
        "publish": [
            {"why": "one publish record asking for an ack (id 7)", "frame_hex": p1.hex(),
             "records": [{"id": 7, "band": band, "message_hex": m1.hex()}]},
            {"why": "two records back to back, the second without an ack (id 0)", "frame_hex": (p1 + p2).hex(),
             "records": [{"id": 7, "band": band, "message_hex": m1.hex()},
                         {"id": 0, "band": band, "message_hex": m2.hex()}]},
        ],
        "message": [
            {"why": "two delivered messages", "frame_hex": (d1 + d2).hex(),
             "records": [{"band": band, "sender": NODE_ID, "ts_ms": NOW, "message_hex": m1.hex()},
                         {"band": band, "sender": OTHER.verify_key.encode().hex(), "ts_ms": NOW + 1,
                          "message_hex": m2.hex()}]},
        ],
        "invalid_publish": [
            {"why": "empty frame", "frame_hex": ""},
            {"why": "cut inside the message", "frame_hex": p1[:-1].hex()},
            {"why": "cut inside the header", "frame_hex": p1[:3].hex()},
            {"why": "a message record where a publish is expected", "frame_hex": d1.hex()},
            {"why": "an empty band name", "frame_hex": (bytes([1]) + (7).to_bytes(4, "big") + b"\x00"
                                                         + len(m2).to_bytes(4, "big") + m2).hex()},
            {"why": "a band name that is not UTF-8", "frame_hex": (bytes([1, 0, 0, 0, 0, 1, 0xff])
                                                                  + (0).to_bytes(4, "big")).hex()},
            {"why": "a good record followed by garbage", "frame_hex": (p1 + b"\x09").hex()},
        ],
        "invalid_message": [
            {"why": "a publish record where a message is expected", "frame_hex": p1.hex()},
            {"why": "cut inside the publisher key", "frame_hex": d1[:2 + len(band) + 10].hex()},
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
    print(json.dumps({"description": "kachery protocol vectors: node messages (v2), the relay's binary "
                                     "frames (pub-sub v2), hub requests, task results, subfeed heads, "
                                     "bucket keys",
                      "envelopes": envelopes(), "relay_frames": relay_frames_vectors(),
                      "hub_requests": hub_requests(),
                      "task_results": task_results(), "heads": heads(),
                      "bucket_keys": bucket_keys()}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
