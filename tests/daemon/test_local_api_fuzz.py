"""Fuzzing the daemon's local API (a real daemon process) with hypothesis: whatever the query
parameters, headers and URIs, the answer is a 2xx or a 4xx with a JSON error, never a 500, and a
streamed answer is never cut in the middle (issue 11, defect 8). Examples are bounded so that
the module runs in CI in seconds."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kachery_feeds as kf
from tests.nodes import TestNode

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings a number parser may choke on: digits of every script, signs, separators, exponents,
# huge and negative values, and plain text.
_numberish = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet=st.sampled_from("0123456789+-_ .eExX\u00b2\u00b3\u00b9\u0663\u0966\uff11\u2460"),
            max_size=25),
    st.text(max_size=12),
)
# What a header value can carry: latin-1 without control characters or surrounding spaces.
_header_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                               exclude_characters="\x7f"), max_size=25)
_hex40 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
_file_uri = st.one_of(
    st.builds(lambda h, p, a, b: f"sha1://{h}?chunkOf={p}~{a}~{b}", _hex40, _hex40, _numberish, _numberish),
    st.builds(lambda h, m: f"sha1://{h}/x.dat?manifest={m}", _hex40, st.text(max_size=45)),
    st.builds(lambda h, rest: f"sha1://{h}{rest}", _hex40, st.text(max_size=30)),
    st.text(max_size=60),
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    node = TestNode(tmp_path_factory.mktemp("fuzz"), "fuzz")
    node.start()
    sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("s")
    sf.append_messages([{"i": i} for i in range(3)])
    client_token = (node.storage_dir / "daemon-token").read_text().strip()
    browser_token = (node.storage_dir / "browser-token").read_text().strip()
    with httpx.Client(base_url=node.client.base_url, timeout=10) as http:
        yield http, sf.uri, client_token, browser_token
    node.stop()


def _assert_clean_refusal_or_success(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["error"], r.text


@FUZZ
@given(start=st.none() | _numberish, end=st.none() | _numberish)
def test_messages_never_500(daemon, start, end):
    http, uri, _client, browser = daemon
    params = {"uri": uri, "token": browser}
    params.update({k: v for k, v in (("start", start), ("end", end)) if v is not None})
    r = http.get("/api/feeds/messages", params=params)
    _assert_clean_refusal_or_success(r)
    if r.status_code == 200:
        assert all(m["number"] >= int(start or 0) for m in r.json()["messages"])


@FUZZ
@given(start=st.none() | _numberish, last_event_id=st.none() | _header_value)
def test_stream_never_500_nor_cut(daemon, start, last_event_id):
    http, uri, _client, browser = daemon
    params = {"uri": uri, "token": browser, **({"start": start} if start is not None else {})}
    headers = {"Last-Event-ID": last_event_id.encode("latin-1")} if last_event_id is not None else {}
    # A live stream does not end: it is healthy if it is still open when the read times out.
    with http.stream("GET", "/api/feeds/stream", params=params, headers=headers,
                     timeout=httpx.Timeout(10, read=0.3)) as r:
        if r.status_code != 200:
            r.read()
            _assert_clean_refusal_or_success(r)
            return
        received = b""
        try:
            for chunk in r.iter_bytes():
                received += chunk
                if received.count(b"\n\n") >= 4:  # retry line and the three messages: enough
                    break
        except httpx.ReadTimeout:
            pass  # open and waiting for new messages
        # httpx.RemoteProtocolError (a cut stream) propagates and fails the test
    assert received.startswith(b"retry: ")


@FUZZ
@given(uri=_file_uri, channel=st.none() | st.text(max_size=10))
def test_file_fetch_never_500_nor_cut(daemon, uri, channel):
    http, _feed_uri, client, _browser = daemon
    body = {"uri": uri, **({"channel": channel} if channel is not None else {})}
    with http.stream("POST", "/api/files/fetch", json=body,
                     headers={"Authorization": f"Bearer {client}"}) as r:
        if r.status_code != 200:
            r.read()
            _assert_clean_refusal_or_success(r)
            return
        lines = [line for line in r.iter_lines() if line]
    assert lines and ('"type":"finished"' in lines[-1] or '"type":"error"' in lines[-1]), lines


@FUZZ
@given(uri=_file_uri, channel=st.text(max_size=10))
def test_file_upload_never_500(daemon, uri, channel):
    http, _feed_uri, client, _browser = daemon
    r = http.post("/api/files/upload", json={"uri": uri, "channel": channel},
                  headers={"Authorization": f"Bearer {client}"})
    _assert_clean_refusal_or_success(r)


# -- task endpoints (spec/tasks.md §8): JSON bodies with values of every type in every field
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
_function = st.fixed_dictionaries(
    {"function_id": st.sampled_from(["fuzz.f.1", "fuzz..bad", ""]) | _json,
     "function_type": st.sampled_from(["pure-calculation", "query", "action"]) | _json},
    optional={"channels": st.lists(st.text(max_size=5), max_size=2) | _json})


def _post_and_read(http, path: str, body: dict, client: str) -> None:
    with http.stream("POST", path, json=body, headers={"Authorization": f"Bearer {client}"}) as r:
        if r.status_code != 200 or r.headers["content-type"] != "application/x-ndjson":
            r.read()
            _assert_clean_refusal_or_success(r)
            return
        lines = [line for line in r.iter_lines() if line]
    assert lines and ('"type":"finished"' in lines[-1] or '"type":"error"' in lines[-1]), lines


@FUZZ
@given(backend_id=st.text(min_size=1, max_size=8) | _json, functions=st.lists(_function, max_size=3) | _json,
       timeout=st.sampled_from([0, 0.05, -1, 16, "1", None, True]), max_tasks=st.integers(-2, 3) | _json,
       running=st.lists(st.text(max_size=4), max_size=2) | _json)
def test_task_poll_never_500(daemon, backend_id, functions, timeout, max_tasks, running):
    http, _uri, client, _browser = daemon
    body = {"backend_id": backend_id, "functions": functions, "timeout": timeout,
            "max_tasks": max_tasks, "running": running}
    _post_and_read(http, "/api/tasks/poll", body, client)


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "backend_id": st.text(max_size=8) | _json, "task_key": st.text(max_size=8) | _json,
    "status": st.sampled_from(["running", "finished", "error"]) | _json,
    "progress": _json, "result": _json, "error": _json}))
def test_task_update_never_500(daemon, body):
    http, _uri, client, _browser = daemon
    _post_and_read(http, "/api/tasks/update", body, client)


@FUZZ
@given(body=st.fixed_dictionaries({"function_id": st.sampled_from(["fuzz.f.1", "x"]) | _json}, optional={
    "kwargs": st.dictionaries(st.text(max_size=5), _json, max_size=3) | _json,
    "function_type": st.sampled_from(["pure-calculation", "query", "action"]) | _json,
    "timeout": _json, "request_id": st.text(min_size=8, max_size=12) | _json, "channel": _json}))
def test_task_request_never_500_nor_cut(daemon, body):
    http, _uri, client, _browser = daemon
    _post_and_read(http, "/api/tasks/request", body, client)


_feed_uri = st.one_of(
    st.builds(lambda f, name: f"feed://{f}/{name}", st.text(alphabet="0123456789abcdef", min_size=64,
                                                            max_size=64), st.text(max_size=20)),
    st.builds(lambda rest: f"feed://{rest}", st.text(max_size=80)),
    st.text(max_size=40),
)


@FUZZ
@given(uri=_feed_uri)
def test_feed_uri_never_500(daemon, uri):
    http, _uri, client, browser = daemon
    _assert_clean_refusal_or_success(http.get("/api/feeds/messages", params={"uri": uri, "token": browser}))
    r = http.post("/api/feeds/follow", json={"uri": uri}, headers={"Authorization": f"Bearer {client}"})
    _assert_clean_refusal_or_success(r)
