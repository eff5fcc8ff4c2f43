"""The import helper (issue 15, kachery_feeds/range_verifier.py): a large range is verified partly in
a helper process while the store inserts it, and committed only once the helper vouched for its
part. Whatever the helper does (answers, refuses, hangs, dies), the store ends with exactly what
an import without it gives: the same rows, or the same error with nothing written."""

from __future__ import annotations

import array
import io
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kachery_feeds as kf
from kachery_feeds import range_verifier
from kachery_feeds.messages import parse_range, range_rows, sign_hash

pytestmark = pytest.mark.skipif(not range_verifier.helper_wanted(),
                                reason="the helper is used on two cores or more")

N = 3 * range_verifier.HELPER_MIN_LINES


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A subfeed of N messages appended in batches of 1000 (one signature each) and one of 5000
    signed one by one; their wire lines."""
    store = kf.open_store(tmp_path_factory.mktemp("src") / "src.db")
    feed = store.create_feed()
    batched = feed.load_subfeed("batched")
    for b in range(0, N, 1000):
        batched.append_messages([{"i": i, "text": "x" * (i % 50)} for i in range(b, b + 1000)])
    each = feed.load_subfeed("each")
    for i in range(5000):
        each.append_message({"i": i})
    yield {"batched": (batched.uri, batched.get_signed_messages()),
           "each": (each.uri, each.get_signed_messages()),
           "ids": (feed.feed_id, batched.subfeed_hash)}
    store.close()


@pytest.fixture(autouse=True)
def fresh_helper():
    """Each test starts without a helper and ends it (the module's process-wide one)."""
    range_verifier.shared().close()
    yield
    helper = range_verifier.shared()
    pid = helper.pid
    helper.close()
    if pid is not None:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _import(tmp_path, name, uri, lines, helper: bool, monkeypatch):
    monkeypatch.setenv("KACHERY_IMPORT_HELPER", "1" if helper else "0")
    store = kf.open_store(tmp_path / f"{name}.db")
    sf = store.load_subfeed(uri)
    try:
        return ("added", sf.add_signed_messages(lines)), sf.get_signed_messages(), store
    except kf.FeedError as exc:
        return (type(exc), str(exc)), sf.get_signed_messages(), store


def _outcomes(tmp_path, uri, lines, monkeypatch):
    """(outcome, stored lines) with the helper and without it; and whether the helper answered."""
    before = range_verifier.shared().answers
    with_helper, stored_with, s1 = _import(tmp_path, "with", uri, lines, True, monkeypatch)
    answered = range_verifier.shared().answers - before
    without, stored_without, s2 = _import(tmp_path, "without", uri, lines, False, monkeypatch)
    s1.close()
    s2.close()
    return (with_helper, stored_with), (without, stored_without), answered


@pytest.mark.parametrize("kind", ["batched", "each"])
def test_a_large_range_imports_with_the_helper_exactly_as_without_it(source, tmp_path, monkeypatch, kind):
    uri, lines = source[kind]
    helped, alone, answered = _outcomes(tmp_path, uri, lines, monkeypatch)
    assert answered == 1  # the helper did verify a part
    assert helped == alone == (("added", len(lines)), lines)


def test_the_helper_starts_in_a_directory_holding_modules_named_like_its_own(source, tmp_path,
                                                                            monkeypatch):
    # A script run from a folder with its own select.py or struct.py: the helper (python -m) put
    # that folder first on its sys.path, imported them and died at start, so no part was ever
    # verified beside the store (before -P: answered == 0).
    work = tmp_path / "work"
    work.mkdir()
    for name in ("select", "struct", "kachery_feeds"):
        (work / f"{name}.py").write_text("raise SystemExit('a module of the folder was imported')\n")
    monkeypatch.chdir(work)
    uri, lines = source["batched"]
    helped, alone, answered = _outcomes(tmp_path, uri, lines, monkeypatch)
    assert answered == 1
    assert helped == alone == (("added", len(lines)), lines)


def _verified_here(monkeypatch) -> list[int]:
    """Counts the ranges the store verified in its own process (the usual path, which a range
    the helper did not vouch for takes)."""
    calls: list[int] = []
    usual = kf.Store._parse_import

    def counted(self, feed_id, sh, lines):
        calls.append(len(lines))
        return usual(self, feed_id, sh, lines)

    monkeypatch.setattr(kf.Store, "_parse_import", counted)
    return calls


def test_parts_written_from_the_lines_themselves_reach_the_helper_intact(source, tmp_path, monkeypatch):
    """Past the first part, the lines go to the helper by writev from where they are: many small
    parts, writev batches that end anywhere in a part, and the helper vouches for them all."""
    uri, lines = source["batched"]
    monkeypatch.setattr(range_verifier, "CHUNK_LINES", 900)
    monkeypatch.setattr(range_verifier, "JOINED_PARTS", 1)
    monkeypatch.setattr(range_verifier, "_IOV_MAX", 7)
    here = _verified_here(monkeypatch)
    helped, alone, answered = _outcomes(tmp_path, uri, lines, monkeypatch)
    assert answered == 1 and here == [len(lines)]  # the second: the import without the helper
    assert helped == alone == (("added", len(lines)), lines)


def test_a_writev_cut_short_is_finished(monkeypatch):
    """A writev that a signal cuts short (it returns fewer bytes): the rest follows, in order."""
    lines = [bytes([65 + i % 26]) * (100 + i) for i in range(50)]
    real = os.writev

    def short(fd, buffers):
        return real(fd, [buffers[0][: len(buffers[0]) // 2]])  # half of the first line only

    monkeypatch.setattr(range_verifier.os, "writev", short)
    monkeypatch.setattr(range_verifier, "_IOV_MAX", 8)
    r, w = os.pipe()
    got = bytearray()

    def read_all() -> None:
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        range_verifier._write_lines(w, lines)
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    assert bytes(got) == b"".join(lines)


@pytest.mark.parametrize("stored", [3000, 11000])  # the local end in the helper's part, in the store's
def test_a_range_that_overlaps_the_stored_messages_adds_the_rest_as_without_the_helper(
        source, tmp_path, monkeypatch, stored):
    uri, lines = source["batched"]
    here = _verified_here(monkeypatch)
    outcomes = []
    for name, helper in (("with", True), ("without", False)):
        monkeypatch.setenv("KACHERY_IMPORT_HELPER", "0")
        store = kf.open_store(tmp_path / f"{name}.db")
        sf = store.load_subfeed(uri)
        sf.add_signed_messages(lines[:stored])
        monkeypatch.setenv("KACHERY_IMPORT_HELPER", "1" if helper else "0")
        outcomes.append((sf.add_signed_messages(lines), sf.get_signed_messages()))
        store.close()
    assert outcomes[0] == outcomes[1] == (len(lines) - stored, lines)
    # with: only the first part (under the helper's size); without: both
    assert here == [stored, stored, len(lines)]


def _tampered(lines, at: int, how: str) -> list[bytes]:
    out = list(lines)
    body, _tab, sig = out[at].rpartition(b"\t")
    if how == "payload":
        out[at] = body.replace(b'"i":', b'"i": ', 1) + b"\t" + sig  # no longer canonical JSON
    elif how == "digit":
        out[at] = body.replace(b'"text":"', b'"text":"y', 1) + b"\t" + sig  # another valid body
    else:  # a signature of the wrong message
        out[at] = body + b"\t" + lines[-1].rpartition(b"\t")[2]
    return out


@pytest.mark.parametrize("where", ["helper's part", "store's part"])
@pytest.mark.parametrize("how", ["payload", "digit", "signature"])
def test_a_tampered_message_is_refused_as_without_the_helper_and_nothing_is_written(
        source, tmp_path, monkeypatch, where, how):
    uri, lines = source["batched"]
    at = 999 if how == "signature" else 1234  # message 999 is signed (the end of a batch)
    if where == "store's part":
        at = len(lines) - 1 - (1 if how != "signature" else 0) * 10
        if how == "signature":
            at = len(lines) - 1001
    bad = _tampered(lines, at, how)
    (helped, stored_h), (alone, stored_a), _answered = _outcomes(tmp_path, uri, bad, monkeypatch)
    assert helped == alone
    assert helped[0] is kf.VerificationError
    assert stored_h == stored_a == []


def test_a_range_that_does_not_follow_the_stored_messages_is_a_gap_as_without_the_helper(
        source, tmp_path, monkeypatch):
    uri, lines = source["batched"]
    (helped, stored_h), (alone, stored_a), answered = _outcomes(tmp_path, uri, lines[1000:], monkeypatch)
    assert helped == alone and helped[0] is kf.MissingMessagesError
    assert answered == 1  # the verdict was waited for before the gap was reported
    assert stored_h == stored_a == []


def test_a_helper_that_hangs_is_ended_at_the_deadline_and_the_range_verified_here(
        source, tmp_path, monkeypatch):
    uri, lines = source["batched"]
    helper = range_verifier.shared()
    # Start the helper with a first import, then stop it (SIGSTOP: it takes no input, answers nothing).
    _import(tmp_path, "first", uri, lines, True, monkeypatch)[2].close()
    pid = helper.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    monkeypatch.setattr(range_verifier, "ANSWER_SECONDS_BASE", 1.0)
    monkeypatch.setattr(range_verifier, "ANSWER_SECONDS_PER_LINE", 0.0)
    t0 = time.monotonic()
    outcome, stored, store = _import(tmp_path, "second", uri, lines, True, monkeypatch)
    store.close()
    assert outcome == ("added", len(lines)) and stored == lines
    assert time.monotonic() - t0 < 30
    assert helper.pid is None  # ended ...
    proc = psutil.Process(pid) if psutil.pid_exists(pid) else None
    assert proc is None or proc.status() == psutil.STATUS_ZOMBIE  # ... and gone
    # the next import starts another, which answers
    before = helper.answers
    _import(tmp_path, "third", uri, lines, True, monkeypatch)[2].close()
    assert helper.answers == before + 1 and helper.pid not in (None, pid)


def test_a_helper_killed_between_imports_is_started_again(source, tmp_path, monkeypatch):
    uri, lines = source["batched"]
    helper = range_verifier.shared()
    _import(tmp_path, "first", uri, lines, True, monkeypatch)[2].close()
    pid = helper.pid
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=10)
    outcome, stored, store = _import(tmp_path, "second", uri, lines, True, monkeypatch)
    store.close()
    assert outcome == ("added", len(lines)) and stored == lines
    assert helper.answers == 2 and helper.pid != pid


def test_imports_in_two_threads_at_once_both_complete(source, tmp_path, monkeypatch):
    uri, lines = source["batched"]
    monkeypatch.setenv("KACHERY_IMPORT_HELPER", "1")
    stores = [kf.open_store(tmp_path / f"t{i}.db") for i in range(2)]
    results: list = [None, None]

    def run(i: int) -> None:
        results[i] = stores[i].load_subfeed(uri).add_signed_messages(lines)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [len(lines), len(lines)]
    for s in stores:
        assert s.load_subfeed(uri).get_signed_messages() == lines
        s.close()


def test_an_idle_helper_ends_itself(source):
    _uri, lines = source["batched"]
    helper = range_verifier.RangeVerifier(idle_seconds=0.5)
    try:
        feed_id, subfeed_hash = source["ids"]
        cuts = range_verifier.plan(lines)
        expected = kf.messages.message_hash(lines[cuts[-1] - 1].rpartition(b"\t")[0])
        pending = helper.check(lines, cuts, feed_id, subfeed_hash, expected)
        assert pending is not None and pending.verified()
        psutil.Process(helper.pid).wait(timeout=30)  # raises if it did not end
    finally:
        helper.close()


def test_the_helper_ends_with_the_process_that_started_it(source, tmp_path):
    uri, lines = source["batched"]
    src = tmp_path / "lines.bin"
    src.write_bytes(b"\n".join(lines))
    script = textwrap.dedent(f"""
        import kachery_feeds as kf
        from kachery_feeds import range_verifier
        lines = open({str(src)!r}, "rb").read().split(b"\\n")
        store = kf.open_store({str(tmp_path / "child.db")!r})
        store.load_subfeed({uri!r}).add_signed_messages(lines)
        print(range_verifier.shared().pid, flush=True)
        # exits without closing anything
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                         env={**os.environ, "KACHERY_IMPORT_HELPER": "1"}, check=True)
    pid = int(out.stdout)
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the helper outlived its process"
        time.sleep(0.05)


# ------------------------------------------------------------------ range_rows and plan
_SEED_PK, _SEED_SK = kf.messages.nacl.bindings.crypto_sign_seed_keypair(bytes(32))


def _signed_range(pattern: list[bool], payloads: list[dict]) -> list[bytes]:
    """Lines 0..n-1 of a subfeed of the fixed key, message i signed when pattern[i] (and the last)."""
    import orjson

    feed, sub, prev, lines = _SEED_PK.hex(), "cd" * 20, None, []
    for n, (signed, payload) in enumerate(zip(pattern, payloads, strict=True)):
        fields = {"feed": feed, "n": n, "payload": payload, "prev": prev.hex() if prev else None,
                  "subfeed": sub, "ts": 5, "v": 1}
        if n % 7 == 3:
            fields["meta"] = {"note": n}  # an unusual (valid) body: parse_range's slow path
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        prev = kf.messages.message_hash(body)
        sig = sign_hash(_SEED_SK, prev).hex().encode() if signed or n == len(pattern) - 1 else b""
        lines.append(body + b"\t" + sig)
    return lines


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40),
       st.lists(st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=8), st.none()),
                min_size=40, max_size=40),
       st.integers(0, 39))
def test_range_rows_are_the_rows_parse_range_gives(pattern, values, start):
    lines = _signed_range(pattern, [{"v": v} for v in values[: len(pattern)]])
    start = min(start, len(lines) - 1)
    part = lines[start:]
    parsed = parse_range(part, _SEED_PK.hex(), "cd" * 20, _SEED_PK)
    assert range_rows(part, _SEED_PK.hex(), "cd" * 20) == (parsed.first, parsed.previous_hash, parsed.rows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=30_000).map(lambda p: p[:-1] + [True]))
def test_plan_cuts_after_signed_messages_within_the_helpers_share(pattern):
    lines = [b"x\tsig" if signed else b"x\t" for signed in pattern]
    cuts = range_verifier.plan(lines)
    if not cuts:
        return
    assert cuts == sorted(set(cuts))
    assert all(lines[c - 1].endswith(b"sig") for c in cuts)
    assert range_verifier.HELPER_MIN_LINES // 2 <= cuts[-1] <= len(lines) * range_verifier.HELPER_SHARE
    # each part but the last reaches CHUNK_LINES at the first signed message that lets it
    for a, b in zip([0, *cuts], cuts[:-1], strict=False):
        assert b - a >= range_verifier.CHUNK_LINES
        assert not any(lines[c - 1].endswith(b"sig") for c in range(a + range_verifier.CHUNK_LINES, b))


def test_plan_cuts_a_batch_signed_range_into_parts_the_helper_parses_as_they_come():
    lines = [b"x\tsig" if (i + 1) % 1000 == 0 else b"x\t" for i in range(100_000)]
    assert range_verifier.plan(lines) == [9000, 18000, 27000, 36000, 45000, 54000, 63000, 72000, 80000]
    each = [b"x\tsig"] * 20_000
    assert range_verifier.plan(each) == [8192, 16000]
    assert range_verifier.plan([b"x\t"] * 19_999 + [b"x\tsig"]) == []  # signed only at its end


def test_a_forked_child_uses_a_helper_of_its_own_and_leaves_the_parents_alone(source, tmp_path, monkeypatch):
    uri, lines = source["batched"]
    _import(tmp_path, "parent", uri, lines, True, monkeypatch)[2].close()
    helper = range_verifier.shared()
    parent_helper = helper.pid
    assert parent_helper is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, report its helper's pid, exit without cleaning up
        code = 1
        try:
            os.close(read)
            store = kf.open_store(tmp_path / "child.db")
            added = store.load_subfeed(uri).add_signed_messages(lines)
            child_helper = range_verifier.shared()
            ok = added == len(lines) and child_helper.answers == 1 and child_helper.pid != parent_helper
            os.write(write, f"{child_helper.pid}".encode() if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as r:
        if not select.select([r], [], [], 120)[0]:  # a hung child is killed, not waited for
            os.kill(pid, signal.SIGKILL)
        said = r.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and said.isdigit(), said
    child_helper = int(said)
    deadline = time.monotonic() + 30  # the child's helper ends with the child (its input closed)
    while psutil.pid_exists(child_helper) and psutil.Process(child_helper).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child's helper outlived the child"
        time.sleep(0.05)
    # the parent's helper is untouched and still answers
    before = helper.answers
    _import(tmp_path, "parent2", uri, lines, True, monkeypatch)[2].close()
    assert helper.pid == parent_helper and helper.answers == before + 1


def _serve(data: bytes) -> bytes:
    """What the helper's loop answers to ``data`` on its input, which then ends."""
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    out = io.BytesIO()
    with os.fdopen(read, "rb") as inp:
        range_verifier.serve(inp, out, idle_seconds=5)
    return out.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000))
def test_the_helper_reads_any_input_without_failing(data):
    answers = _serve(data)
    assert len(answers) % 33 == 0 and all(answers[i] in (0, 1) for i in range(0, len(answers), 33))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.binary(max_size=64))
def test_the_helper_refuses_parts_that_are_not_a_verified_range(lines, ids):
    """A well-framed request of arbitrary lines and IDs: refused (1 and zeros), never a crash."""
    part = range_verifier._PART.pack(len(lines), sum(map(len, lines)))
    part += array.array("I", map(len, lines)).tobytes() + b"".join(lines)
    request = range_verifier._HEADER.pack(len(ids) // 2, len(ids) - len(ids) // 2, 1) + ids + part
    assert _serve(request) == b"\1" + bytes(32)
