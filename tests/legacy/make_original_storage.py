"""Make a storage directory as the original kachery left it (run under kachery-client 1.2.0).

    python make_original_storage.py STORAGE_DIR WORK_DIR

Everything the client itself can write is written by its own code, in offline mode
(``KACHERY_OFFLINE_STORAGE_DIR``): stored files (``_local_kachery_storage_store_file``),
``.link`` files (``_local_kachery_storage_link_file``), manifests
(``_compute_local_file_sha1_and_manifest``), node and feed keys and their PEM files
(``_generate_keypair``, ``_private_key_from_hex``), message signatures (``_sign_message``, the
daemon's SHA-1 form) and subfeed hashes (``_subfeed_hash``). What only the daemon (TypeScript)
wrote is written byte for byte as original-protocol.md describes it: the SQLite schemas of
feeds.db (§2.3) and mutables.db (§8.4), the daemon's ``.link`` form (§8.2), the manifest's key
order (§3.3), kachery-node-id, owner, client-auth and kachery.yaml (§8.3, §9). Canonical JSON is
the client's ``_deterministic_json_dumps``, equal to the daemon's for the ASCII, integer-valued
data used here. Prints a JSON summary of what it made.
"""

import hashlib
import json
import os
import random
import sqlite3
import sys

storage, work = sys.argv[1], sys.argv[2]
os.environ["KACHERY_OFFLINE_STORAGE_DIR"] = storage
os.makedirs(storage, exist_ok=True)
os.makedirs(work, exist_ok=True)

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from kachery_client._feeds import _subfeed_hash  # noqa: E402
from kachery_client._local_kachery_storage import (  # noqa: E402
    _compute_local_file_sha1_and_manifest,
    _local_kachery_storage_link_file,
    _local_kachery_storage_store_file,
)
from kachery_client.ephemeral.ephemeral_load_file import (  # noqa: E402
    _deterministic_json_dumps,
    _generate_keypair,
    _private_key_from_hex,
    _public_key_from_hex,
    _sign_message,
)

rng = random.Random(17)
out = {}


def write(path, data, mode=None):
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def uri(sha1, name, manifest=None):
    return f"sha1://{sha1}/{name}" + (f"?manifest={manifest}" if manifest else "")


# -- files ------------------------------------------------------------------------------------
small = os.path.join(work, "hello.txt")
write(small, b"Hello from the original kachery\n")
_, sha1, _ = _local_kachery_storage_store_file(path=small)
out["small"] = {"uri": uri(sha1, "hello.txt"), "bytes": "Hello from the original kachery\n"}

big = os.path.join(work, "big.dat")
write(big, rng.randbytes(41_000_000))  # three 20 MB chunks (20, 20, 1)
_, big_sha1, _ = _local_kachery_storage_store_file(path=big, _no_manifest=True)
big_sha1_again, manifest = _compute_local_file_sha1_and_manifest(big)
assert big_sha1_again == big_sha1
manifest_path = os.path.join(work, "manifest.json")
# The daemon's JSON.stringify of {size, sha1, chunks: [{start, end, sha1}]}, in that order.
write(manifest_path, json.dumps(manifest, separators=(",", ":")).encode())
_, manifest_sha1, _ = _local_kachery_storage_store_file(path=manifest_path)
out["big"] = {"uri": uri(big_sha1, "big.dat", manifest_sha1), "path": big}

linked = os.path.join(work, "linked-by-client.dat")
write(linked, rng.randbytes(5000))
_, sha1, _ = _local_kachery_storage_link_file(path=linked)
out["linked_client"] = {"uri": uri(sha1, "linked-by-client.dat"), "path": linked}

linked = os.path.join(work, "linked-by-daemon.dat")
write(linked, rng.randbytes(7000))
with open(linked, "rb") as f:
    sha1 = hashlib.sha1(f.read()).hexdigest()
link_dir = os.path.join(storage, "sha1", sha1[0:2], sha1[2:4], sha1[4:6])
os.makedirs(link_dir, exist_ok=True)
st = os.stat(linked)
write(os.path.join(link_dir, sha1 + ".link"), json.dumps(
    {"path": linked, "manifestSha1": None, "stat": {"size": st.st_size, "mtime": st.st_mtime},
     "_writingProcess": "daemon"}, separators=(",", ":")).encode())
out["linked_daemon"] = {"uri": uri(sha1, "linked-by-daemon.dat"), "path": linked}

changed = os.path.join(work, "changed-after-linking.dat")
write(changed, b"a" * 3000)
_, sha1, _ = _local_kachery_storage_link_file(path=changed)
write(changed, b"b" * 3000)  # same size, other bytes: the link no longer holds
out["linked_changed"] = {"uri": uri(sha1, "changed-after-linking.dat"), "path": changed}

# -- node identity and settings -----------------------------------------------------------------
node_public, node_private = _generate_keypair()
write(os.path.join(storage, "private.pem"), _private_key_from_hex(node_private).encode(), 0o600)
write(os.path.join(storage, "public.pem"), _public_key_from_hex(node_public).encode())
write(os.path.join(storage, "kachery-node-id"), node_public.encode())
write(os.path.join(storage, "owner"), b"someone@example.org")
write(os.path.join(storage, "client-auth"), b"abcdefghijkl", 0o640)
write(os.path.join(storage, "kachery.yaml"), b"maxCacheSizeGiB: 50\n")
out["node_id"] = node_public

# -- feeds.db (the daemon's schema) --------------------------------------------------------------
feeds_db = os.path.join(storage, "feeds.db")
db = sqlite3.connect(feeds_db)
db.executescript("""
CREATE TABLE feeds(feedId TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
CREATE TABLE subfeeds(feedId TEXT NOT NULL, subfeedHash TEXT NOT NULL,
    PRIMARY KEY(feedId, subfeedHash),
    FOREIGN KEY(feedId) REFERENCES feeds(feedId) ON UPDATE CASCADE ON DELETE CASCADE) WITHOUT ROWID;
CREATE TABLE subfeedMessages(feedId TEXT NOT NULL, subfeedHash TEXT NOT NULL,
    position INTEGER NOT NULL, message TEXT,
    PRIMARY KEY(feedId, subfeedHash, position),
    FOREIGN KEY(feedId, subfeedHash) REFERENCES subfeeds ON UPDATE CASCADE ON DELETE CASCADE) WITHOUT ROWID;
""")


def legacy_signature(body, private_hex):
    """kachery-p2p's form: Ed25519 over the canonical JSON itself, without the SHA-1."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return key.sign(_deterministic_json_dumps(body).encode()).hex()


def add_subfeed(feed_id, public, private, name, payloads, legacy_at=()):
    sh = _subfeed_hash(name)
    db.execute("INSERT OR IGNORE INTO feeds(feedId) VALUES (?)", (feed_id,))
    db.execute("INSERT INTO subfeeds(feedId, subfeedHash) VALUES (?, ?)", (feed_id, sh))
    previous = None
    for i, payload in enumerate(payloads):
        body = {"message": payload, "messageNumber": i, "timestamp": 1_650_000_000_000 + 1000 * i}
        if previous is not None:
            body["previousSignature"] = previous
        sig = legacy_signature(body, private) if i in legacy_at else _sign_message(body, public, private)
        text = _deterministic_json_dumps({"body": body, "signature": sig})
        db.execute("INSERT INTO subfeedMessages(feedId, subfeedHash, position, message) VALUES (?,?,?,?)",
                   (feed_id, sh, i, text))
        previous = sig
    return sh


owned_public, owned_private = _generate_keypair()
remote_public, remote_private = _generate_keypair()
primes = [{"p": p, "n": i + 1} for i, p in enumerate([2, 3, 5, 7, 11])]
out["feeds"] = {
    "owned": {"feed_id": owned_public, "name": "lab-notes", "subfeeds": {
        "primes": {"hash": add_subfeed(owned_public, owned_public, owned_private, "primes", primes),
                   "messages": primes},
        "obj": {"name": {"kind": "obj"},
                "hash": add_subfeed(owned_public, owned_public, owned_private, {"kind": "obj"},
                                    [{"a": 1}, {"b": [1, 2]}]),
                "messages": [{"a": 1}, {"b": [1, 2]}]}}},
    "remote": {"feed_id": remote_public, "subfeeds": {
        "log": {"hash": add_subfeed(remote_public, remote_public, remote_private, "log",
                                    [{"i": 0}, {"i": 1}, {"i": 2}], legacy_at={1}),
                "messages": [{"i": 0}, {"i": 1}, {"i": 2}]}}},
}
db.commit()
db.close()
os.chmod(feeds_db, 0o600)

# -- mutables.db (the daemon's schema: sha1 of the key's canonical JSON) -----------------------------
mutables_db = os.path.join(storage, "mutables.db")
db = sqlite3.connect(mutables_db)
db.execute("CREATE TABLE mutables(sha1 TEXT PRIMARY KEY NOT NULL, key TEXT NOT NULL, "
           "value TEXT NOT NULL) WITHOUT ROWID")
entries = [
    ("best-run", {"score": 0.5, "uri": out["small"]["uri"]}),
    ({"type": "feedConfig", "feedId": owned_public}, {"feedId": owned_public, "privateKey": owned_private}),
    ({"type": "feedIdForName", "feedName": "lab-notes"}, owned_public),            # the daemon's
    ({"type": "feed_id_for_name", "feed_name": "lab-notes"}, owned_public),        # the client's
]
for key, value in entries:
    key_text = _deterministic_json_dumps(key)
    db.execute("INSERT INTO mutables(sha1, key, value) VALUES (?, ?, ?)",
               (hashlib.sha1(key_text.encode()).hexdigest(), key_text, _deterministic_json_dumps(value)))
db.commit()
db.close()
out["mutables"] = {"best-run": entries[0][1]}

print(json.dumps(out))
