"""kachery_node.channel_buckets: where a joined channel's bucket is read, for a process with no
daemon (a real hub process, nodes joined with the real CLI, no daemon started)."""

from __future__ import annotations

import io
import json

import pytest

import kachery_node as kn
from kachery_node.channel_buckets import channel_bucket_readers
from kachery_node.protocol.bucket_layout import file_path


def _entry(node) -> dict:
    return json.loads((node.storage_dir / "channels.json").read_text())["channels"]["lab"]


def test_reader_of_a_joined_channel_reads_its_bucket_without_a_daemon(lab):
    node = lab.add_node("reader", ["request-files"], start=False)
    assert _entry(node)["bucket"] == {"backend": "embedded", "read_url": f"{lab.hub.url}/bucket"}

    (bucket,) = channel_bucket_readers(node.storage_dir, "lab")
    assert bucket.channel == "lab" and bucket.read_url == f"{lab.hub.url}/bucket"
    data = bytes(range(256)) * 1000
    sha1 = "ab" * 20  # the embedded bucket keeps what is written behind its back as it is
    key = file_path("lab", sha1)
    obj = lab.bucket_object(key)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(data)

    assert bucket.get(key) == data
    assert bucket.get(key, 10, 20) == data[10:20]
    assert bucket.get(key, 5, 5) == b""
    sink = io.BytesIO()
    assert bucket.download(key, sink, start=1000) == len(data) - 1000
    assert sink.getvalue() == data[1000:]
    dest = node.storage_dir.parent / "copy.bin"
    seen = []
    assert bucket.download(key, dest, progress=lambda done, total: seen.append((done, total))) == len(data)
    assert dest.read_bytes() == data and seen[-1] == (len(data), len(data))
    with pytest.raises(kn.InvalidDataError, match="larger than 100 bytes"):
        bucket.get(key, max_bytes=100)

    missing = file_path("lab", "cd" * 20)
    with pytest.raises(kn.NotFoundError, match=f"{missing} is not in the bucket of channel lab"):
        bucket.get(missing)
    with pytest.raises(kn.NotFoundError):
        bucket.download(missing, io.BytesIO())


def test_a_membership_without_the_bucket_spec_asks_the_hub_once_and_keeps_it(lab):
    node = lab.add_node("old", ["request-files"], start=False)
    path = node.storage_dir / "channels.json"
    doc = json.loads(path.read_text())
    del doc["channels"]["lab"]["bucket"]  # as `kachery node join` wrote it before
    doc["channels"]["lab"]["bucket_url"] = "http://127.0.0.1:9/nowhere"  # must not be used
    path.write_text(json.dumps(doc))

    (bucket,) = channel_bucket_readers(node.storage_dir)
    assert bucket.read_url == f"{lab.hub.url}/bucket"  # from the hub's channel info
    assert _entry(node)["bucket"] == {"backend": "embedded", "read_url": f"{lab.hub.url}/bucket"}

    lab.hub.stop()  # now kept: no hub needed any more
    (again,) = channel_bucket_readers(node.storage_dir, "lab")
    assert again.read_url == f"{lab.hub.url}/bucket"


def test_the_bucket_url_is_the_fallback_when_the_hub_cannot_be_asked(lab):
    node = lab.add_node("offline", ["request-files"], start=False)
    path = node.storage_dir / "channels.json"
    doc = json.loads(path.read_text())
    del doc["channels"]["lab"]["bucket"]
    path.write_text(json.dumps(doc))
    lab.hub.stop()
    (bucket,) = channel_bucket_readers(node.storage_dir, "lab")
    assert bucket.read_url == f"{lab.hub.url}/bucket"
    with pytest.raises(kn.HubRequestError) as err:  # the hub also serves the bucket: it is down
        bucket.get(file_path("lab", "ab" * 20))
    assert err.value.code == "unreachable"


def test_a_channel_not_joined_is_a_typed_error(lab):
    node = lab.add_node("n", ["request-files"], start=False)
    with pytest.raises(kn.ChannelNotJoinedError, match=r"has not joined channel 'other'.*joined: lab"):
        channel_bucket_readers(node.storage_dir, "other")
    assert issubclass(kn.ChannelNotJoinedError, kn.ConfigError)
    empty = node.storage_dir.parent / "empty"
    empty.mkdir()
    assert channel_bucket_readers(empty) == []
