"""Subfeed names, hashes and feed:// URIs (compatible with the original kachery)."""

from __future__ import annotations

import hashlib
import json

import pytest

import kachery_feeds as kf

FEED = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_subfeed_hash_follows_the_original_rule():
    assert kf.subfeed_hash("primes") == hashlib.sha1(b"primes").hexdigest()
    obj = {"sortingId": 3, "name": "curation"}
    expected = hashlib.sha1(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert kf.subfeed_hash(obj) == expected
    h = hashlib.sha1(b"anything").hexdigest()
    assert kf.subfeed_hash("~" + h) == h
    assert kf.subfeed_hash("~" + h.upper()) == h


def test_uri_round_trips():
    assert kf.subfeed_uri(FEED, "primes") == f"feed://{FEED}/primes"
    assert kf.subfeed_uri(FEED, "a b/c") == f"feed://{FEED}/a%20b%2Fc"
    assert kf.parse_feed_uri(f"feed://{FEED}/a%20b%2Fc").subfeed_name == "a b/c"
    obj_uri = kf.subfeed_uri(FEED, {"name": "curation"})
    assert obj_uri == f"feed://{FEED}/~{kf.subfeed_hash({'name': 'curation'})}"
    parsed = kf.parse_feed_uri(obj_uri)
    assert parsed.feed_id == FEED and parsed.subfeed_hash == kf.subfeed_hash({"name": "curation"})
    assert kf.parse_feed_uri(f"feed://{FEED}").subfeed_name is None
    assert kf.parse_feed_uri(f"feed://{FEED.upper()}/x").feed_id == FEED


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "sha1://abc",
        "feed://",
        "feed://xyz/primes",
        f"feed://{FEED[:-1]}/primes",
        f"feed://{FEED}0/primes",
        f"feed://{FEED}/~1234",
        f"feed://{FEED}/~{'g' * 40}",
        f"feed://{FEED}/%ff%fe",
        None,
        42,
    ],
)
def test_malformed_uris_raise_invalid_uri(uri):
    with pytest.raises(kf.InvalidUriError):
        kf.parse_feed_uri(uri)


def test_bad_subfeed_names():
    for bad in ["", "~nothex", 3, 1.5, None, {"x": float("nan")}]:
        with pytest.raises(kf.InvalidUriError):
            kf.subfeed_hash(bad)


def test_store_refuses_bad_uris(tmp_path):
    store = kf.open_store(tmp_path / "s.db")
    with pytest.raises(kf.InvalidUriError):
        store.load_subfeed(f"feed://{FEED}")  # a feed, not a subfeed
    with pytest.raises(kf.InvalidUriError):
        store.load_subfeed("feed://nope/primes")
    with pytest.raises(kf.UnknownFeedError):
        store.load_feed("no-such-local-name")
