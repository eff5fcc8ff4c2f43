"""An unmodified kachery-client 1.2.0 script (run under the original client, against a kachery
node's daemon found through KACHERY_STORAGE_DIR and KACHERY_DAEMON_PORT). Only the original's
public API, as its README and docs show it. Prints a JSON summary for the test to check."""

import json
import os
import sys
import threading
import time

import kachery_client as kc
import numpy as np
from kachery_client.main import delete_feed, get_node_id

work = sys.argv[1]
out = {"node_id": get_node_id()}

# -- files --------------------------------------------------------------------------------------
out["text_uri"] = kc.store_text("Hello, world!")
assert kc.load_text(out["text_uri"]) == "Hello, world!"
obj = {"name": "Zoë", "values": [1, 2.5, None], "nested": {"ok": True}}
out["json_uri"] = kc.store_json(obj)
assert kc.load_json(out["json_uri"]) == obj
array = np.arange(24, dtype=np.float32).reshape(4, 6)
out["npy_uri"] = kc.store_npy(array)
assert (kc.load_npy(out["npy_uri"]) == array).all()
out["pkl_uri"] = kc.store_pkl({"a": np.ones(3), "b": [1, "x"]})
assert (kc.load_pkl(out["pkl_uri"])["a"] == np.ones(3)).all()

big = os.path.join(work, "big.dat")
with open(big, "wb") as f:
    f.write(np.random.default_rng(0).bytes(21_000_000))  # two chunks: a manifest
out["big_uri"] = kc.store_file(big)
assert "?manifest=" in out["big_uri"]
with open(big, "rb") as f:
    data = f.read()
assert kc.load_bytes(out["big_uri"], 19_999_990, 20_000_010) == data[19_999_990:20_000_010]

linked = os.path.join(work, "linked.dat")
with open(linked, "wb") as f:
    f.write(os.urandom(3000))
out["link_uri"] = kc.link_file(linked)
assert kc.load_file(out["link_uri"]) == linked  # read through the .link file, as the original
assert kc.load_file("sha1://" + "0" * 40) is None  # not here, no channel: the original's None

# -- mutables -----------------------------------------------------------------------------------
assert kc.set("run/best", {"score": 0.9}) is True
assert kc.get("run/best") == {"score": 0.9}
assert kc.set("run/best", {"score": 0.1}, update=False) is False
assert kc.get("run/best") == {"score": 0.9}
assert kc.set({"type": "dict-key", "n": 1}, ["a", "b"]) is True
assert kc.get({"n": 1, "type": "dict-key"}) == ["a", "b"]
assert kc.get("never-set") is None
assert kc.set("to-delete", 1) and kc.delete("to-delete") is True and kc.get("to-delete") is None

# -- feeds --------------------------------------------------------------------------------------
feed = kc.create_feed("lab-notes")
assert feed.is_writeable
primes = feed.load_subfeed("primes")
primes.append_message({"p": 2})
primes.append_messages([{"p": 3}, {"p": 5}])
out["feed_id"] = feed.feed_id
out["primes_uri"] = primes.uri
assert kc.get_feed_id("lab-notes") == feed.feed_id
assert kc.load_feed("lab-notes").feed_id == feed.feed_id

reader = kc.load_subfeed(primes.uri)
assert reader.get_num_local_messages() == 3
assert reader.get_next_messages(wait_msec=0) == [{"p": 2}, {"p": 3}, {"p": 5}]
assert reader.get_next_messages(wait_msec=100) == []  # waits, then nothing new
reader.set_position(1)
assert reader.get_next_message(wait_msec=0) == {"p": 3}
signed = kc.load_subfeed(primes.uri).get_next_messages(wait_msec=0, signed=True)
out["signed"] = signed

# Several subfeeds in one long poll; a message arrives while it waits.
events = feed.load_subfeed({"kind": "events"})


def append_later():
    time.sleep(0.4)
    events.append_message({"event": "late"})


threading.Thread(target=append_later).start()
t0 = time.time()
news = kc.watch_for_new_messages({
    "primes": {"feedId": feed.feed_id, "subfeedName": "primes", "position": 3},
    "events": {"feedId": feed.feed_id, "subfeedName": {"kind": "events"}, "position": 0},
}, wait_msec=10000)
out["watch"] = news
out["watch_seconds"] = time.time() - t0
out["events_uri"] = events.uri

stream = kc.load_subfeed(events.uri).message_stream()
assert next(stream) == {"event": "late"}

scratch = kc.create_feed()
scratch.load_subfeed("x").append_message({"x": 1})
delete_feed(scratch.uri)
out["deleted_feed"] = scratch.feed_id
print(json.dumps(out))
