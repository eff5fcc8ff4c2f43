"""Live output of the Python implementation for js/test/crosscheck.test.js.

Usage: python live_fixture.py <workdir>
Creates real data with kachery_feeds and kachery_node (a feed with single and batch appends,
segments and heads, a fork proof, a feed whose key was rotated, then handed on by a recovery
key (spec/feeds.md §9: its messages, a message its replaced key signed after the hand-over, and
a fork proof carrying the succession), node envelopes, a hub request, a task result, files with and
without a manifest), writes a bucket's objects under <workdir>/bucket in the layout of
spec/bucket.md, prints one JSON line describing it all, then serves commands on stdin:
``append <n>`` appends n single messages and republishes the head (and any new full segment),
answering ``{"count": N}``; ``verify-proof <hex>`` checks a fork or violation proof
(``kachery_feeds.verify_fork_proof``), answering ``{"ok": bool, "position"|"error"}``; ``quit`` (or EOF) ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nacl.bindings

import kachery_feeds as kf
from kachery_feeds.key_backup import parse_backup
from kachery_feeds.messages import build_body, message_hash, sign_hash, to_wire
from kachery_node.identity import Keypair
from kachery_node.protocol import bucket_layout as bl
from kachery_node.protocol.feed_bucket import head_for, segment_for
from kachery_node.protocol.hub_requests import make_body, sign_body
from kachery_node.protocol.node_messages import seal
from kachery_node.protocol.task_messages import encode_result_object, sign_result, task_hash
from kachery_node.storage.manifest import CHUNK_SIZE, Chunk, Manifest

CHANNEL = "js.check"


def put(root: Path, key: str, data: bytes) -> None:
    path = root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see a partial object


def publish(root: Path, sf: kf.Subfeed, feed_id: str) -> int:
    count, head = head_for(sf)
    for i in range(count // 1000):
        key = bl.subfeed_segment_path(CHANNEL, feed_id, sf.subfeed_hash, i)
        if not root.joinpath(*key.split("/")).exists():
            put(root, key, segment_for(sf, i))
    put(root, bl.subfeed_head_path(CHANNEL, feed_id, sf.subfeed_hash), head)
    return count


def rotated_feed(work: Path, bucket: Path) -> dict:
    """A feed that changed keys twice (spec/feeds.md §9), published to the bucket, with a
    message its first key signed after the hand-over and a fork proof carrying the succession."""
    store = kf.open_store(work / "rotated.db")
    feed = store.create_feed()
    fid = feed.feed_id
    k0_seed = parse_backup(store.export_key(fid)).seed
    sf = feed.load_subfeed("rotated")
    for i in range(3):
        sf.append_message({"r": i})
    sf.append_messages([{"r": 3}, {"r": 4}])  # a batch: message 3 unsigned, 4 signed by K0
    store.rotate_key(fid)  # record 1: K0 -> K1, boundary 5
    sf.append_messages([{"r": 5}, {"r": 6}])  # message 5 carries the succession
    recovery_seed = os.urandom(32)
    recovery_public = nacl.bindings.crypto_sign_seed_keypair(recovery_seed)[0]
    store.set_recovery_key(fid, recovery_public)  # record 2: a commitment
    sf.append_message({"r": 7})
    store.recover_key(fid, recovery_seed)  # record 3: K1 -> K2, signed by the recovery key
    sf.append_message({"r": 8})
    lines = [w.decode() for w in sf.get_signed_messages()]
    publish(bucket, sf, fid)
    # The replaced key K0 signs a message 8 after the hand-over (a stolen backup, say).
    head = sf.get_signed_messages(7, 8)[0]
    body7 = head.rsplit(b"\t", 1)[0]
    old_body = build_body(fid, sf.subfeed_hash, 8, message_hash(body7), int(time.time() * 1000),
                          b'{"r":"the old key"}')
    _pk, k0_secret = nacl.bindings.crypto_sign_seed_keypair(k0_seed)
    old_key_line = to_wire(old_body, sign_hash(k0_secret, message_hash(old_body))).decode()
    # A fork under the current key: a copy of the store appends something else at position 9.
    store.close()
    shutil.copy(work / "rotated.db", work / "rotated-copy.db")
    store = kf.open_store(work / "rotated.db")
    copy = kf.open_store(work / "rotated-copy.db")
    store.load_feed(fid).load_subfeed("rotated").append_message({"r": 9})
    other = copy.load_feed(fid).load_subfeed("rotated")
    other.append_message({"r": "nine"})
    try:
        store.load_feed(fid).load_subfeed("rotated").add_signed_messages(other.get_signed_messages(9, 10))
        raise SystemExit("expected a fork")
    except kf.ForkError as exc:
        fork_proof, fork_position = exc.proof.decode(), exc.position
    copy.close()
    succession = [r.decode() for r in store.key_succession(fid)]
    store.close()
    return {"feed_id": fid, "uri": sf.uri, "subfeed_hash": sf.subfeed_hash, "lines": lines,
            "payloads": [{"r": i} for i in range(9)], "succession": succession,
            "old_key_line": old_key_line, "fork_proof": fork_proof, "fork_position": fork_position}


def main() -> None:
    work = Path(sys.argv[1])
    bucket = work / "bucket"
    store = kf.open_store(work / "a.db")
    feed = store.create_feed()
    fid = feed.feed_id
    sf = feed.load_subfeed("live")
    sf.append_message({"i": 0, "s": "héllo 😀"})
    # One batch across the segment boundary at 1000: only its last message is signed.
    sf.append_messages([{"i": i, "x": [i / 7, -0.0, None]} for i in range(1, 1500)])
    sf.append_message({"i": 1500}, metadata={"by": "test"})
    obj_sf = feed.load_subfeed({"name": "curation", "sortingId": 3})
    obj_sf.append_message({"k": 1})
    lines = [w.decode() for w in sf.get_signed_messages()]
    count = publish(bucket, sf, fid)
    described = {
        "uri": sf.uri, "subfeed_hash": sf.subfeed_hash, "lines": lines, "count": count,
        "payloads": sf.get_messages(), "object_name_uri": obj_sf.uri,
        "object_name_hash": obj_sf.subfeed_hash,
        "object_name_lines": [w.decode() for w in obj_sf.get_signed_messages()],
        "segment0": segment_for(sf, 0).decode(), "head": head_for(sf)[1].decode(),
    }

    # A fork: a copy of the store (same key) appends something else at position 2.
    store2_path = work / "b.db"
    small = feed.load_subfeed("forked")
    small.append_messages([{"a": 1}, {"a": 2}])
    store.close()
    shutil.copy(work / "a.db", store2_path)
    store = kf.open_store(work / "a.db")
    store2 = kf.open_store(store2_path)
    store.load_feed(fid).load_subfeed("forked").append_message({"a": 3})
    other = store2.load_feed(fid).load_subfeed("forked")
    other.append_message({"a": "three"})
    try:
        store.load_feed(fid).load_subfeed("forked").add_signed_messages(other.get_signed_messages())
        raise SystemExit("expected a fork")
    except kf.ForkError as exc:
        fork_proof, fork_position = exc.proof.decode(), exc.position
    store2.close()

    node = Keypair.generate()
    now_ms = int(time.time() * 1000)
    envelope = seal(node, channel=CHANNEL, band="provide-feeds",
                    body={"type": "subfeedUploaded", "feed_id": fid, "subfeed_hash": sf.subfeed_hash,
                          "count": count}, now_ms=now_ms).hex()
    attached = kf.encode_segment([lines[0].encode()])  # message 0: signed, so it verifies alone
    envelope_with_lines = seal(node, channel=CHANNEL, band="provide-feeds",
                               body={"type": "newSubfeedMessages", "feed_id": fid,
                                     "subfeed_hash": sf.subfeed_hash},
                               now_ms=now_ms, attachment=attached).hex()
    hub_id = Keypair.generate().public_hex
    hub_body = make_body("channel_info", hub_id, channel=CHANNEL, time_ms=now_ms)
    hub_headers = sign_body(node, "node", hub_body)

    kwargs = {"n": 3, "name": "é", "xs": [1.5, 2]}
    th = task_hash("lab.square.1", kwargs)
    result_obj = sign_result(node, task_hash=th, function_id="lab.square.1", result={"y": [2.25, 4]},
                             now_ms=now_ms)
    put(bucket, bl.task_result_path(CHANNEL, th), encode_result_object(result_obj))

    small_file = b"Hello, world!"
    put(bucket, bl.file_path(CHANNEL, hashlib.sha1(small_file).hexdigest()), small_file)
    big = os.urandom(CHUNK_SIZE + 12345)
    chunks = []
    for start in range(0, len(big), CHUNK_SIZE):
        part = big[start:start + CHUNK_SIZE]
        h = hashlib.sha1(part).hexdigest()
        put(bucket, bl.file_path(CHANNEL, h), part)
        chunks.append(Chunk(start, start + len(part), h))
    big_sha1 = hashlib.sha1(big).hexdigest()
    manifest = Manifest(len(big), big_sha1, tuple(chunks)).to_bytes()
    manifest_sha1 = hashlib.sha1(manifest).hexdigest()
    put(bucket, bl.file_path(CHANNEL, manifest_sha1), manifest)

    print(json.dumps({
        "channel": CHANNEL, "bucket_dir": str(bucket), "feed_id": fid, **described,
        "fork_proof": fork_proof, "fork_position": fork_position,
        "rotated": rotated_feed(work, bucket),
        "envelope_hex": envelope, "envelope_with_lines_hex": envelope_with_lines,
        "attached_lines": attached.decode(), "envelope_time_ms": now_ms, "node_id": node.public_hex,
        "hub_request": {"body": hub_body.decode(), "headers": hub_headers, "hub_id": hub_id},
        "task": {"task_hash": th, "function_id": "lab.square.1", "kwargs": kwargs,
                 "object": encode_result_object(result_obj).decode()},
        "small_file": {"uri": f"sha1://{hashlib.sha1(small_file).hexdigest()}/hello.txt",
                       "text": small_file.decode()},
        "big_file": {"uri": f"sha1://{big_sha1}/big.bin?manifest={manifest_sha1}", "size": len(big),
                     "range": [CHUNK_SIZE - 5, CHUNK_SIZE + 7],
                     "range_hex": big[CHUNK_SIZE - 5:CHUNK_SIZE + 7].hex(),
                     "tail_sha1": hashlib.sha1(big[-100:]).hexdigest()},
    }), flush=True)

    s = store.load_feed(fid).load_subfeed("live")
    for cmd in sys.stdin:
        parts = cmd.split()
        if not parts or parts[0] == "quit":
            break
        if parts[0] == "verify-proof":  # a proof made by kachery.js, checked by Python
            try:
                info = kf.verify_fork_proof(bytes.fromhex(parts[1]))
                print(json.dumps({"ok": True, "position": info.position}), flush=True)
            except kf.VerificationError as exc:
                print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
            continue
        if parts[0] == "append":
            for i in range(int(parts[1])):
                s.append_message({"more": i})
            print(json.dumps({"count": publish(bucket, s, fid)}), flush=True)
    store.close()


if __name__ == "__main__":
    main()
