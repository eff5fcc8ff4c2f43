"""One framing for pub-sub payloads (issue 12): a feed's wire lines travel as a node message's
attachment, in a binary relay record, never as JSON strings inside JSON. A relay operation is at
most 1.1x the wire lines it carries.

Before (node messages v1, pub-sub v1): 10 small messages, 4,011 bytes of wire lines, became a
5,478-byte relay op (1.37x): each line a JSON string in the envelope's body, the envelope a JSON
string in the relay's JSON op. The figures are in bench/README.md (``bench/bench_framing.py``).
"""

from __future__ import annotations

import kachery_feeds as kf
from kachery_node.identity import Keypair
from kachery_node.protocol import relay_frames
from kachery_node.protocol.node_messages import open_envelope, seal
from kachery_node.protocol.roles import band_name, pubsub_band

MAX_RATIO = 1.1
NOW = 1_700_000_000_000


def small_messages(tmp_path, count: int) -> tuple[kf.Subfeed, list[bytes]]:
    store = kf.open_store(tmp_path / "feeds.db")
    sf = store.create_feed().load_subfeed("sensor")
    for i in range(count):  # appended one by one: every message signed, as a live feed's are
        sf.append_message({"t": i, "value": i * 1.5, "note": "small"})
    return sf, sf.get_signed_messages(0, count)


def relay_ops(sf: kf.Subfeed, lines: list[bytes], channel: str) -> tuple[bytes, bytes, bytes]:
    """The node message newSubfeedMessages as the provider sends it (spec/node-protocol.md,
    Feeds), its publish record (node -> relay) and its message record (relay -> node)."""
    key = Keypair.generate()
    body = {"type": "newSubfeedMessages", "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
    message = seal(key, channel=channel, band="provide-feeds", body=body, now_ms=NOW,
                   attachment=kf.encode_segment(lines))
    band = band_name(channel, pubsub_band("provide-feeds"))
    return (message, relay_frames.encode_publish(17, band, message),
            relay_frames.encode_message(band, key.public_hex, NOW, message))


def test_ten_small_messages_cost_at_most_a_tenth_more_on_the_relay(tmp_path):
    sf, lines = small_messages(tmp_path, 10)
    wire = sum(len(line) for line in lines)
    message, publish, delivered = relay_ops(sf, lines, "lab.ephys")
    assert len(publish) <= MAX_RATIO * wire, (wire, len(publish))
    assert len(delivered) <= MAX_RATIO * wire, (wire, len(delivered))
    # The lines are in there as they are: no escaping, no re-encoding.
    assert kf.encode_segment(lines) in publish and kf.encode_segment(lines) in delivered
    assert b'\\"' not in publish
    env = open_envelope(message, channel="lab.ephys", band="provide-feeds", now_ms=NOW)
    assert kf.decode_segment(env.attachment) == lines


def test_the_overhead_is_a_constant_not_a_factor(tmp_path):
    """What a relay op adds to its lines does not grow with them: the header, the body's few
    fields and one LF per line."""
    sf, lines = small_messages(tmp_path, 100)
    overheads = []
    for n in (1, 10, 100):
        _message, publish, _delivered = relay_ops(sf, lines[:n], "lab.ephys")
        overheads.append(len(publish) - sum(len(line) for line in lines[:n]) - n)  # minus one LF each
    assert max(overheads) - min(overheads) <= 2, overheads  # the same few hundred bytes
    assert max(overheads) < 400, overheads
