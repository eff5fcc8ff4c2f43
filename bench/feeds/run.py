"""kachery_feeds benchmarks side by side with hypercore (issue 2), with physical limits.

Run from the repository root::

    .venv/bin/python bench/feeds/run.py                # full run (a few minutes)
    .venv/bin/python bench/feeds/run.py --quick        # small sizes, smoke test
    .venv/bin/python bench/feeds/run.py --no-hypercore # skip the Node.js side
    .venv/bin/python bench/feeds/run.py --json out.json

This is a benchmark, not a test: it prints tables and never fails on a missed target.
What it measures (all on disk, in one temporary folder, one thing at a time):

* physical limits of this machine, measured in the same run: Ed25519 sign and verify (libsodium
  through PyNaCl's cffi bindings, the calls the store uses), SHA-256 of one message body, orjson
  dumps of one payload, raw ``sqlite3`` inserts of the very rows an import writes (same
  ``messages`` table, copied from a store's own schema, bound as fast as sqlite3 binds) in one
  transaction, one commit per row (one autocommit INSERT each), and the single append's
  limit: SHA-256, sign and one commit per row in one loop (:func:`sign_and_commit_rate`;
  in the rounds it alternates with the single appends in slices,
  :func:`single_append_and_limit_rates`);
* kachery_feeds: durable single appends, batch appends of 1000, follow latency from
  ``append_message`` in one process to ``follow()`` in another, verified import
  (``get_signed_messages`` -> ``add_signed_messages`` into a fresh store) of batch-signed and
  individually signed ranges (on two cores or more, most of such a range is verified by the
  store's import helper process while the store inserts it: the import uses two cores, its
  limit, the raw insert, one; its CPU time includes the helper's), and peak memory of reading
  a 1M-message subfeed with ``follow``;
* hypercore (``bench/hypercore/bench.mjs``, npm package installed into ``bench/.cache/``) for
  the same message size: single and batch appends, in-process live tail latency, and (for
  issue 5) replication of 100k small blocks and of 64 KiB blocks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HYPERCORE_SRC = REPO / "bench" / "hypercore"
sys.path.insert(0, str(REPO))

import nacl.bindings  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402

import kachery_feeds as kf  # noqa: E402
from kachery_feeds import range_verifier  # noqa: E402

sys.path.insert(0, str(HYPERCORE_SRC))
sys.path.insert(0, str(REPO / "bench"))
from bench_common import PAYLOAD_BYTES, log, payload, table  # noqa: E402
from bench_common import machine_info as common_machine_info  # noqa: E402
from hypercore_runner import run_hypercore_bench  # noqa: E402

# The store's checkpoint interval, which the raw limits use too (SQLite's default, 1000 pages, for
# a kachery_feeds from before the store set one: bench/feeds/ab_cpu.py runs older trees).
WAL_AUTOCHECKPOINT_PAGES = getattr(kf.store, "WAL_AUTOCHECKPOINT_PAGES", 1000)
# Slices in which a round's single appends and their limit alternate (see
# single_append_and_limit_rates): 10 slices of 500 at the full size.
SINGLE_SLICES = 10

FULL = {
    "single": 5000,
    "batches": 100,  # x 1000 messages
    "tail": 2000,
    "tail_interval_ms": 2.0,
    "import": 100_000,
    "follow_mem": 1_000_000,
    "sign": 20_000,
    "verify": 10_000,
    "hash": 200_000,
    "dumps": 200_000,
    "commit_rows": 5000,
    "repeat": 2,
}
QUICK = {
    "single": 300,
    "batches": 5,
    "tail": 200,
    "tail_interval_ms": 2.0,
    "import": 5000,
    "follow_mem": 20_000,
    "sign": 2000,
    "verify": 2000,
    "hash": 20_000,
    "dumps": 20_000,
    "commit_rows": 300,
    "repeat": 1,
}


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


# ---------------------------------------------------------------------------------- limits
def rows_from_wire(lines: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    out = []
    for line in lines:
        body, _tab, sig = line.rpartition(b"\t")
        out.append((body, bytes.fromhex(sig.decode()) if sig else None))
    return out


def messages_schema(store_path: Path) -> str:
    """The CREATE TABLE statement of a kachery store's messages table (so raw = same shape)."""
    with sqlite3.connect(store_path) as c:
        (sql,) = c.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()
    return sql


def settle() -> None:
    """Before a timed section: flush earlier stages' dirty pages so that their writeback does
    not land in this measurement, and collect garbage."""
    os.sync()
    gc.collect()


def raw_insert_sql(schema: str, signed: bool) -> str:
    """The raw limits' INSERT of one row of subfeed row 1, into the messages table as ``schema``
    declares it, in the form the store uses: schema version 4's ``message_key`` as a constant
    base + the number (the store's statement), or the (subfeed_id, n) key of the stores before
    it (bench/feeds/ab_cpu.py runs older trees)."""
    sig = "?" if signed else "NULL"
    if "message_key" in schema:
        return f"INSERT INTO messages(message_key, body, sig) VALUES ({1 << 40} + ?,?,{sig})"
    return f"INSERT INTO messages(subfeed_id, n, body, sig) VALUES (1,?,?,{sig})"


def raw_connection(path: Path) -> sqlite3.Connection:
    """Plain sqlite3 with the store's settings: WAL, synchronous=NORMAL, the store's
    wal_autocheckpoint (so that the limits checkpoint as often as the store does)."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    return c


def raw_insert_rate(
    tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]], tag: str
) -> tuple[float, float]:
    """Plain sqlite3: the same rows, same table, the store's settings, one transaction.
    Returns (rows per wall second, rows per CPU second).

    Bound as fast as sqlite3 binds (as the store does): bytes as bytearrays (a bytes parameter
    costs sqlite3 an adapter lookup), and the unsigned rows' NULL written in the statement (so
    is a None parameter), each run of one kind in one executemany."""
    path = tmp / f"raw-insert-{tag}.sqlite"
    c = raw_connection(path)
    c.execute(schema)
    runs: list[tuple[str, list[tuple]]] = []
    for n, (body, sig) in enumerate(rows):
        sql = raw_insert_sql(schema, signed=sig is not None)
        if not runs or runs[-1][0] != sql:
            runs.append((sql, []))
        runs[-1][1].append((n, bytearray(body)) if sig is None else (n, bytearray(body), bytearray(sig)))
    settle()
    t0, c0 = time.perf_counter(), time.process_time()
    c.execute("BEGIN IMMEDIATE")
    for sql, params in runs:
        c.executemany(sql, params)
    c.execute("COMMIT")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    c.close()
    return len(rows) / secs, len(rows) / max(cpu, 1e-9)


def commit_per_row_rate(tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]]) -> float:
    """Plain sqlite3: one commit per row, the store's settings: each row one INSERT in
    autocommit mode (its own transaction, the fewest statements a commit takes; the store's
    single append is one such statement), bytes bound as bytearrays."""
    path = tmp / "raw-commit-per-row.sqlite"
    for f in tmp.glob("raw-commit-per-row.sqlite*"):
        f.unlink()
    c = raw_connection(path)
    c.execute(schema)
    params = [(n, bytearray(body), None if sig is None else bytearray(sig))
              for n, (body, sig) in enumerate(rows)]
    settle()
    t0 = time.perf_counter()
    insert = raw_insert_sql(schema, signed=True)
    for row in params:
        c.execute(insert, row)
    secs = time.perf_counter() - t0
    c.close()
    return len(rows) / secs


def sign_and_commit_rate(tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]]) -> float:
    """What a durable single append must do at least, in one loop: per row, SHA-256 of its
    body, an Ed25519 signature of that hash (sign_hash, as the store signs) and one autocommit
    INSERT of the row with it (bytearrays, the store's settings). Measured as one loop rather
    than combined from the sign and commit rates measured apart: each of those runs with its
    own code and data hot in the CPU's caches, which a real append (or this loop) does not,
    so their combination is a rate nothing that signs and commits each message can reach
    (~2-4 µs a message faster on this machine)."""
    from kachery_feeds.messages import sign_hash

    _pk, sk = nacl.bindings.crypto_sign_keypair()
    path = tmp / "raw-sign-commit.sqlite"
    for f in tmp.glob("raw-sign-commit.sqlite*"):
        f.unlink()
    c = raw_connection(path)
    c.execute(schema)
    bodies = [bytearray(body) for body, _sig in rows]
    sha256, insert = hashlib.sha256, raw_insert_sql(schema, signed=True)
    settle()
    t0 = time.perf_counter()
    for n, body in enumerate(bodies):
        c.execute(insert, (n, body, bytearray(sign_hash(sk, sha256(body).digest()))))
    secs = time.perf_counter() - t0
    c.close()
    return len(rows) / secs


def single_append_and_limit_rates(tmp: Path, schema: str, rows: list[tuple[bytes, bytes | None]],
                                  n: int, tag: str, slices: int = SINGLE_SLICES) -> tuple[float, float]:
    """Durable single appends (``append_message`` of ``n`` payloads into a fresh store) and
    their limit (:func:`sign_and_commit_rate`'s loop over ``n`` rows into a fresh file), in
    ``slices`` alternating slices, so that both see the same moments of a shared machine's
    load: the ratio of one to the other does not depend on which of them a burst of other
    work happened to fall on. Returns (appends per second, limit rows per second)."""
    from kachery_feeds.messages import sign_hash

    store = kf.open_store(tmp / f"single-sliced-{tag}.sqlite")
    subfeed = store.create_feed().load_subfeed("single")
    subfeed.append_message(payload(-1))  # creates the subfeed row; not timed
    data = [payload(i) for i in range(n)]
    path = tmp / f"raw-sign-commit-sliced-{tag}.sqlite"
    c = raw_connection(path)
    c.execute(schema)
    _pk, sk = nacl.bindings.crypto_sign_keypair()
    bodies = [bytearray(rows[k % len(rows)][0]) for k in range(n)]
    sha256, insert = hashlib.sha256, raw_insert_sql(schema, signed=True)
    append = subfeed.append_message
    appends_s = limit_s = 0.0
    step = -(-n // slices)
    settle()
    for start in range(0, n, step):
        end = min(n, start + step)
        t0 = time.perf_counter()
        for k in range(start, end):
            body = bodies[k]
            c.execute(insert, (k, body, bytearray(sign_hash(sk, sha256(body).digest()))))
        t1 = time.perf_counter()
        for p in data[start:end]:
            append(p)
        t2 = time.perf_counter()
        limit_s += t1 - t0
        appends_s += t2 - t1
    c.close()
    store.close()
    return n / appends_s, n / limit_s


def crypto_limits(cfg: dict) -> dict[str, float]:
    from kachery_feeds.messages import SIGNATURE_CONTEXT, sign_hash

    pk, sk = nacl.bindings.crypto_sign_keypair()
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(cfg["sign"])]
    inputs = [SIGNATURE_CONTEXT + d for d in digests]
    # sign_hash calls libsodium's crypto_sign through cffi as directly as Python can (the store
    # signs with it): the limit is the signature itself, not a wrapper's allocations.
    t0 = time.perf_counter()
    sigs = [sign_hash(sk, d) for d in digests]
    sign_rate = len(inputs) / (time.perf_counter() - t0)
    nv = min(cfg["verify"], len(inputs))
    signed = [sigs[i] + inputs[i] for i in range(nv)]
    t0 = time.perf_counter()
    for sm in signed:
        nacl.bindings.crypto_sign_open(sm, pk)
    verify_rate = nv / (time.perf_counter() - t0)
    return {"ed25519_sign_per_s": sign_rate, "ed25519_verify_per_s": verify_rate}


def small_op_limits(cfg: dict, bodies: list[bytes]) -> dict[str, float]:
    sha = hashlib.sha256
    reps = max(1, cfg["hash"] // len(bodies))
    t0 = time.perf_counter()
    for _ in range(reps):
        for b in bodies:
            sha(b).digest()
    hash_rate = reps * len(bodies) / (time.perf_counter() - t0)
    payloads = [payload(i) for i in range(1000)]
    reps = max(1, cfg["dumps"] // len(payloads))
    dumps, opt = orjson.dumps, orjson.OPT_SORT_KEYS
    t0 = time.perf_counter()
    for _ in range(reps):
        for p in payloads:
            dumps(p, option=opt)
    dumps_rate = reps * len(payloads) / (time.perf_counter() - t0)
    return {
        "sha256_per_s": hash_rate,
        "sha256_body_bytes": sum(map(len, bodies)) / len(bodies),
        "orjson_dumps_per_s": dumps_rate,
    }


# ---------------------------------------------------------------------------------- kachery
def bench_single(tmp: Path, n: int, repeat: int, durability: str = "normal", tag: str = "") -> dict[str, Any]:
    """Durable single appends: each ``append_message`` returns after its commit. Best of
    ``repeat`` runs, each on a fresh store."""
    runs = []
    for r in range(repeat):
        store = kf.open_store(tmp / f"single-{durability}-{tag}{r}.sqlite", durability=durability)
        sf = store.create_feed().load_subfeed("single")
        data = [payload(i) for i in range(n)]
        sf.append_message(payload(-1))  # creates the subfeed row; not timed
        settle()
        t0 = time.perf_counter()
        for p in data:
            sf.append_message(p)
        runs.append(n / (time.perf_counter() - t0))
        store.close()
    return {"single_appends": n, "single_appends_per_s": max(runs), "single_appends_runs": runs}


def bench_batch(tmp: Path, batches: int, repeat: int, tag: str = "") -> dict[str, Any]:
    """``append_messages`` with 1000 payloads per call. Best of ``repeat`` fresh-store runs."""
    runs = []
    for r in range(repeat):
        store = kf.open_store(tmp / f"batch-{tag}{r}.sqlite")
        sf = store.create_feed().load_subfeed("batch")
        data = [[payload(b * 1000 + i) for i in range(1000)] for b in range(batches)]
        sf.append_message(payload(-1))
        settle()
        t0 = time.perf_counter()
        for batch in data:
            sf.append_messages(batch)
        runs.append(batches * 1000 / (time.perf_counter() - t0))
        store.close()
    return {
        "batch_messages": batches * 1000,
        "batch_messages_per_s": max(runs),
        "batch_messages_runs": runs,
    }


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def bench_follow_latency(tmp: Path, n: int, interval_ms: float) -> dict[str, Any]:
    """Writer process appends n messages (send time in the payload); follower process records
    arrival - send with time.time_ns (one machine, one clock)."""
    db = tmp / "latency.sqlite"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("latency")
    sf.append_message({"warmup": True})  # message 0: the follower's "ready" point
    uri = sf.uri
    store.close()
    out = tmp / "latency-follower.json"
    settle()
    wout = tmp / "latency-writer.json"
    follower = subprocess.Popen(
        worker_cmd("_follower", str(db), uri, str(n), str(out)), stdout=subprocess.PIPE, text=True
    )
    try:
        line = follower.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"follower did not start: {line!r}")
        subprocess.run(
            worker_cmd("_writer", str(db), uri, str(n), str(interval_ms), str(wout)),
            check=True,
            timeout=120 + n * interval_ms / 1000 * 5,
        )
        follower.wait(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    lat = sorted(json.loads(out.read_text())["latencies_ms"])
    wr = json.loads(wout.read_text())
    return {
        "follow_messages": n,
        "follow_received": len(lat),
        "follow_interval_ms": interval_ms,
        "follow_p50_ms": percentile(lat, 50),
        "follow_p99_ms": percentile(lat, 99),
        "follow_max_ms": lat[-1] if lat else None,
        "follow_writer_append_p50_ms": wr["append_p50_ms"],
        "follow_writer_append_p99_ms": wr["append_p99_ms"],
    }


def _follower(db: str, uri: str, n: str, out: str) -> None:
    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    want = int(n)
    lat: list[float] = []
    it = sf.follow(start=0, timeout=30)
    next(it)  # the warm-up message: the watcher is armed from here on
    print("ready", flush=True)
    for p in it:
        lat.append((time.time_ns() - p["t_ns"]) / 1e6)
        if len(lat) >= want:
            break
    Path(out).write_text(json.dumps({"latencies_ms": lat}))


def _writer(db: str, uri: str, n: str, interval_ms: str, out: str) -> None:
    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    pad = "x" * (PAYLOAD_BYTES - 48)
    interval = float(interval_ms) / 1000
    took = []
    time.sleep(0.1)
    next_at = time.perf_counter()
    for i in range(int(n)):
        t0 = time.perf_counter()
        sf.append_message({"i": i, "t_ns": time.time_ns(), "data": pad})
        took.append((time.perf_counter() - t0) * 1000)
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    took.sort()
    Path(out).write_text(
        json.dumps({"append_p50_ms": percentile(took, 50), "append_p99_ms": percentile(took, 99)})
    )


def build_import_sources(tmp: Path, n: int) -> dict[str, Any]:
    """The two import sources (n messages appended in batches of 1000, and one by one), their
    wire lines and the rows a raw insert writes."""
    src = kf.open_store(tmp / "import-src.sqlite")
    feed = src.create_feed()
    log(f"  building {n} messages with batch appends of 1000")
    batched = feed.load_subfeed("batched")
    for b in range(0, n, 1000):
        batched.append_messages([payload(i) for i in range(b, min(n, b + 1000))])
    log(f"  building {n} messages with individual appends")
    single = feed.load_subfeed("single")
    t0 = time.perf_counter()
    for i in range(n):
        single.append_message(payload(i))
    out: dict[str, Any] = {"n": n, "build_individual_appends_per_s": n / (time.perf_counter() - t0),
                           "schema": messages_schema(tmp / "import-src.sqlite")}
    for tag, sf in (("batched", batched), ("individual", single)):
        lines = sf.get_signed_messages()
        assert len(lines) == n, (tag, len(lines))
        out[tag] = {"uri": sf.uri, "lines": lines, "rows": rows_from_wire(lines)}
    src.close()
    return out


def helper_cpu_seconds() -> tuple[int | None, float]:
    """(pid, user + system CPU seconds so far) of this process's import helper (kachery_feeds.
    range_verifier), which verifies most of a large import's range in parallel: its CPU is part
    of the import's."""
    now = range_verifier.shared().pid
    if now is None:
        return None, 0.0
    try:
        t = psutil.Process(now).cpu_times()
    except psutil.Error:
        return now, 0.0
    return now, t.user + t.system


def measure_import(tmp: Path, sources: dict[str, Any], tag: str, attempt: str) -> dict[str, float]:
    """One raw insert of a source's rows, then one verified import of its lines into a fresh
    store: wall and CPU rates of each."""
    src = sources[tag]
    n = sources["n"]
    raw_wall, raw_cpu = raw_insert_rate(tmp, sources["schema"], src["rows"], f"{tag}-{attempt}")
    path = tmp / f"import-dst-{tag}-{attempt}.sqlite"
    dst = kf.open_store(path)
    target = dst.load_subfeed(src["uri"])
    settle()
    h0 = helper_cpu_seconds()
    t0, c0 = time.perf_counter(), time.process_time()
    added = target.add_signed_messages(src["lines"])
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    h1 = helper_cpu_seconds()
    cpu += h1[1] - (h0[1] if h1[0] == h0[0] else 0.0)  # the helper's share (a new one counts whole)
    assert added == n, (tag, added)
    dst.close()
    for f in tmp.glob(f"import-dst-{tag}-{attempt}.sqlite*"):
        f.unlink()
    for f in tmp.glob(f"raw-insert-{tag}-{attempt}.sqlite*"):
        f.unlink()
    return {"raw": raw_wall, "raw_cpu": raw_cpu, "import": n / secs, "import_cpu": n / max(cpu, 1e-9)}


def bench_import(tmp: Path, n: int) -> dict[str, Any]:
    """Verified import of n messages into a fresh store: batch-signed and individually signed
    (the raw insert and the import alternate; the best of each counts). Used by
    bench/compare_revisions.py; the full run measures rounds instead (see main)."""
    sources = build_import_sources(tmp, n)
    res: dict[str, Any] = {"import_messages": n,
                           "build_individual_appends_per_s": sources["build_individual_appends_per_s"]}
    for tag in ("batched", "individual"):
        runs = [measure_import(tmp, sources, tag, str(a)) for a in range(3 if tag == "batched" else 2)]
        for key, name in (("raw", "raw_insert"), ("import", "import")):
            res[f"{name}_{tag}_per_s"] = max(r[key] for r in runs)
            res[f"{name}_{tag}_cpu_per_s"] = max(r[key + "_cpu"] for r in runs)
            res[f"{name}_{tag}_runs"] = [r[key] for r in runs]
    return res


def bench_follow_memory(tmp: Path, n: int) -> dict[str, Any]:
    db = tmp / "follow-mem.sqlite"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("big")
    log(f"  building {n} messages with batch appends of 1000")
    t0 = time.perf_counter()
    for b in range(0, n, 1000):
        sf.append_messages([payload(i) for i in range(b, min(n, b + 1000))])
    build_rate = n / (time.perf_counter() - t0)
    uri = sf.uri
    store.close()
    out = tmp / "follow-mem.json"
    settle()
    subprocess.run(worker_cmd("_follow_memory", str(db), uri, str(out)), check=True, timeout=1800)
    res = json.loads(out.read_text())
    assert res["count"] == n, res
    # The same read through iter_messages (streaming) and get_messages (everything in a list).
    for how in ("iter", "list"):
        settle()
        subprocess.run(worker_cmd("_follow_memory", str(db), uri, str(out), how), check=True, timeout=1800)
        other = json.loads(out.read_text())
        assert other["count"] == n, other
        res[how] = other
    res["build_batch_per_s"] = build_rate
    res["db_mb"] = db.stat().st_size / 1e6
    return res


def _follow_memory(db: str, uri: str, out: str, how: str = "follow") -> None:
    """Read the whole subfeed in a fresh process: ``follow`` (the default), ``iter``
    (``iter_messages``) or ``list`` (``get_messages``); write count, peak RSS and rate."""
    def maxrss_mb() -> float:
        # VmHWM is this program image's own peak RSS. ru_maxrss is not: Linux carries the
        # parent's high-water mark across fork + exec, which would count the bench runner.
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    store = kf.open_store(db)
    sf = store.load_subfeed(uri)
    gc.collect()
    baseline = maxrss_mb()
    count = 0
    t0 = time.perf_counter()
    if how == "follow":
        for _p in sf.follow(start=0, timeout=0.5):
            count += 1
        secs = time.perf_counter() - t0 - 0.5  # the idle timeout at the end is not reading
    elif how == "iter":
        for _p in sf.iter_messages():
            count += 1
        secs = time.perf_counter() - t0
    else:
        count = len(sf.get_messages())
        secs = time.perf_counter() - t0
    peak = maxrss_mb()
    Path(out).write_text(
        json.dumps(
            {
                "count": count,
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak,
                "delta_rss_mb": peak - baseline,
                "read_per_s": count / max(secs, 1e-9),
            }
        )
    )


# ---------------------------------------------------------------------------------- hypercore
def run_hypercore(tmp: Path, quick: bool, rounds: int) -> dict[str, Any] | None:
    """bench.mjs with ``--repeat rounds``: one single-append and one batch run per round."""
    return run_hypercore_bench(tmp, (["--quick"] if quick else []) + ["--repeat", str(rounds)], log)


# ---------------------------------------------------------------------------------- rounds
def measure_round(tmp: Path, cfg: dict, sources: dict[str, Any], r: int) -> dict[str, float]:
    """One round: each limit measured right before the kachery figure it bounds (the single
    append's alternating with it in slices), fresh stores."""
    log(f"round {r + 1}: ed25519 sign/verify, one commit per row, single appends")
    out: dict[str, float] = {}
    crypto = crypto_limits(cfg)
    out["sign_per_s"], out["verify_per_s"] = crypto["ed25519_sign_per_s"], crypto["ed25519_verify_per_s"]
    out["commit_per_row_per_s"] = commit_per_row_rate(
        tmp, sources["schema"], sources["individual"]["rows"][: cfg["commit_rows"]])
    out["sign_commit_apart_per_s"] = 1 / (1 / out["sign_per_s"] + 1 / out["commit_per_row_per_s"])
    out["single_per_s"], out["sign_commit_per_s"] = single_append_and_limit_rates(
        tmp, sources["schema"], sources["individual"]["rows"], cfg["single"], f"r{r}")
    log(f"round {r + 1}: batch appends, raw insert + verified import")
    out["batch_per_s"] = bench_batch(tmp, cfg["batches"], 1, tag=f"r{r}")["batch_messages_per_s"]
    for tag in ("batched", "individual"):
        m = measure_import(tmp, sources, tag, f"r{r}")
        out[f"raw_{tag}_per_s"], out[f"raw_{tag}_cpu_per_s"] = m["raw"], m["raw_cpu"]
        out[f"import_{tag}_per_s"], out[f"import_{tag}_cpu_per_s"] = m["import"], m["import_cpu"]
    return out


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


# ---------------------------------------------------------------------------------- report
def fmt_rate(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k/s"
    return f"{x:.0f}/s"


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} ms"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def fmt_spread(values: list[float] | None, fmt) -> str:
    if not values:
        return "-"
    lo, mid, hi = spread(values)
    return f"{fmt(lo)} / {fmt(mid)} / {fmt(hi)}"


def build_rows(rounds: list[dict], h: dict | None) -> list[dict[str, Any]]:
    """Issue 15's single-node feed rows: per round the kachery figure, its limit from the same
    round and the ratio; hypercore's run of the same index, and the ratio to it."""
    h = h or {}
    rows = []

    def add(metric, key, limit_key, limit_name, h_runs, target, judge):
        k = [r[key] for r in rounds]
        lim = [r[limit_key] for r in rounds]
        to_limit = [a / b for a, b in zip(k, lim, strict=True)]
        to_h = [a / b for a, b in zip(k, h_runs, strict=False)] if h_runs else None
        ratios = to_limit if judge == "limit" else to_h
        threshold = float(target.split("x")[0].lstrip(">= "))
        rows.append({
            "metric": metric, "kachery": k, "limit_name": limit_name, "limit": lim,
            "ratio_to_limit": to_limit, "hypercore": h_runs or None, "ratio_to_hypercore": to_h,
            "target": target,
            "met_median": None if ratios is None else statistics.median(ratios) >= threshold,
            "met_every_round": None if ratios is None else min(ratios) >= threshold,
        })

    add("durable single append", "single_per_s", "sign_commit_per_s", "hash + sign + one commit",
        h.get("single_appends_runs"), ">= 0.75x limit", "limit")
    add("batch append, 1000/call", "batch_per_s", "raw_batched_per_s", "raw SQLite insert",
        h.get("batch_blocks_runs"), ">= 2x hypercore", "hypercore")
    add("verified import, batch-signed", "import_batched_per_s", "raw_batched_per_s",
        "raw insert of the same rows", None, ">= 0.6x limit", "limit")
    add("verified import, each signed", "import_individual_per_s", "verify_per_s", "Ed25519 verify",
        None, ">= 0.6x limit", "limit")
    return rows


def render(result: dict) -> str:
    h, lim, x = result.get("hypercore"), result["limits"], result["extra"]
    rounds = result["rounds"]
    out = []
    m = result["machine"]
    out.append(
        f"kachery_feeds vs hypercore — {result['date']} — {m['cpu']} x{m['cpus']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, PyNaCl {m['pynacl']}"
        + (f", hypercore {h['hypercore_version']} on node {h['node_version']}" if h else ", no hypercore")
        + (" — QUICK (smoke sizes, not comparable)" if result["quick"] else "")
    )
    out.append(
        f"commit {result['commit']}; load average {result['loadavg_start'][0]:.2f} at the start, "
        f"{result['loadavg_end'][0]:.2f} at the end; payload {PAYLOAD_BYTES} B JSON (stored body "
        f"~{lim['sha256_body_bytes']:.0f} B); hypercore blocks of 256 B"
    )
    out.append("")
    out.append(f"{len(rounds)} rounds; each cell min / median / max over the rounds. A round measures "
               "each limit right before the figure it bounds (the single appends alternate with "
               f"theirs, {SINGLE_SLICES} slices each); ratios are per round (round i of "
               "kachery over round i of its limit, and over hypercore's run i).")
    rows = build_rows(rounds, h)
    yes = lambda v: "n/a" if v is None else ("yes" if v else "NO")  # noqa: E731
    out.append(table(
        ["metric", "kachery", "limit (same round)", "x limit", "hypercore", "x hypercore", "target",
         "met (median / every round)"],
        [[r["metric"], fmt_spread(r["kachery"], fmt_rate),
          f"{r['limit_name']} {fmt_spread(r['limit'], fmt_rate)}",
          fmt_spread(r["ratio_to_limit"], fmt_ratio), fmt_spread(r["hypercore"], fmt_rate),
          fmt_spread(r["ratio_to_hypercore"], fmt_ratio), r["target"],
          f"{yes(r['met_median'])} / {yes(r['met_every_round'])}"] for r in rows]))
    cpu_ratio = [r["import_batched_cpu_per_s"] / r["raw_batched_cpu_per_s"] for r in rounds]
    out.append(
        f"verified import batch-signed by CPU time (this process and its import helper; less "
        f"sensitive to disk writeback): "
        f"{fmt_spread([r['import_batched_cpu_per_s'] for r in rounds], fmt_rate)} vs raw insert "
        f"{fmt_spread([r['raw_batched_cpu_per_s'] for r in rounds], fmt_rate)}, "
        f"ratio {fmt_spread(cpu_ratio, fmt_ratio)}; per-message cost over the raw insert: "
        + fmt_spread([1e6 / r["import_batched_per_s"] - 1e6 / r["raw_batched_per_s"] for r in rounds],
                     lambda v: f"{v:.2f} us")
    )
    out.append(
        "single append cost over sign + one commit: "
        + fmt_spread([1e6 / r["single_per_s"] - 1e6 / r["sign_commit_per_s"] for r in rounds],
                     lambda v: f"{v:.1f} us")
    )
    out.append("")
    others = []
    if "follow_p50_ms" in x:
        others += [
            ["follow latency p50 / p99 (writer process -> follower process)",
             f"{fmt_ms(x['follow_p50_ms'])} / {fmt_ms(x['follow_p99_ms'])}",
             f"in-process tail: {fmt_ms(h and h.get('tail_event_p50_ms'))} / "
             f"{fmt_ms(h and h.get('tail_event_p99_ms'))}"],
            ["writer's own append_message during it, p50 / p99",
             f"{fmt_ms(x['follow_writer_append_p50_ms'])} / {fmt_ms(x['follow_writer_append_p99_ms'])}", "-"],
        ]  # fmt: skip
    mem = x.get("follow_mem")
    if mem:
        others.append([f"follow {mem['count'] // 1000}k msgs: peak RSS",
                       f"{mem['peak_rss_mb']:.1f} MB (+{mem['delta_rss_mb']:.1f}); "
                       f"read {fmt_rate(mem['read_per_s'])}", "-"])
        for how, what in (("iter", "iter_messages"), ("list", "get_messages")):
            if how in mem:
                mm = mem[how]
                others.append([f"{what} {mm['count'] // 1000}k msgs: peak RSS",
                               f"{mm['peak_rss_mb']:.1f} MB (+{mm['delta_rss_mb']:.1f}); "
                               f"{fmt_rate(mm['read_per_s'])}", "-"])
        others.append(["batch appends building the follow subfeed", fmt_rate(mem["build_batch_per_s"]), "-"])
    if "single_appends_full_per_s" in x:
        others.append(["single appends with durability='full' (fsync per commit)",
                       fmt_rate(x["single_appends_full_per_s"]), "-"])
    others.append(["individual appends building the import source",
                   fmt_rate(x["build_individual_appends_per_s"]), "-"])
    if h:
        others += [
            [f"hypercore: replication {h['repl_small_blocks'] // 1000}k x 256 B (issue 5)",
             f"{fmt_rate(h['repl_small_blocks_per_s'])} ({h['repl_small_mb_per_s']:.2f} MB/s)", "-"],
            [f"hypercore: replication 64 KiB blocks, {h['repl_big_blocks'] * 64 // 1024} MiB",
             f"{h['repl_big_mb_per_s']:.0f} MB/s", "-"],
        ]  # fmt: skip
    out.append(table(["other figures (one run)", "kachery", "hypercore"], others))
    out.append("")
    out.append("Physical limits (one core, Python; per round min / median / max, else once):")
    lrows = [
        ["Ed25519 sign (libsodium crypto_sign via cffi, 56 B input)", [r["sign_per_s"] for r in rounds]],
        ["Ed25519 verify (crypto_sign_open)", [r["verify_per_s"] for r in rounds]],
        ["sqlite3 one commit per row (autocommit INSERT, WAL, NORMAL)",
         [r["commit_per_row_per_s"] for r in rounds]],
        ["SHA-256 + sign + one commit per row, one loop (the single append's limit)",
         [r["sign_commit_per_s"] for r in rounds]],
        ["the same combined from sign and commit measured apart (each hot in cache)",
         [r.get("sign_commit_apart_per_s", r["sign_commit_per_s"]) for r in rounds]],
        ["sqlite3 insert, same rows, one txn (batch-signed rows)", [r["raw_batched_per_s"] for r in rounds]],
        ["sqlite3 insert, same rows, one txn (signed rows)", [r["raw_individual_per_s"] for r in rounds]],
        [f"SHA-256 of one body (~{lim['sha256_body_bytes']:.0f} B)", [lim["sha256_per_s"]]],
        ["orjson dumps of one payload (sorted keys)", [lim["orjson_dumps_per_s"]]],
    ]
    out.append(table(["limit", "rate", "per op (median)"],
                     [[name, fmt_spread(v, fmt_rate), f"{1e6 / statistics.median(v):.2f} us"]
                      for name, v in lrows]))
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    import nacl

    return {**common_machine_info(), "sqlite": sqlite3.sqlite_version, "pynacl": nacl.__version__,
            "orjson": orjson.__version__}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


SECTIONS = ("rounds", "latency", "memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 30 s)")
    ap.add_argument("--no-hypercore", action="store_true", help="skip the Node.js hypercore side")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the append and import rows (default 3)")
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(SECTIONS)} (default all)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--tmp", metavar="DIR", help="parent folder for the temporary stores")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    only = set((args.only or ",".join(SECTIONS)).split(","))
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kachery-bench-", dir=args.tmp))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "config": cfg,
        "machine": machine_info(),
        "commit": git_commit(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        h = None
        if not args.no_hypercore:
            log("hypercore (node)")
            h = run_hypercore(tmp, args.quick, args.rounds)
        result["hypercore"] = h
        log("building the import sources")
        sources = build_import_sources(tmp, cfg["import"])
        x: dict[str, Any] = {"build_individual_appends_per_s": sources["build_individual_appends_per_s"]}
        lim = small_op_limits(cfg, [b for b, _s in sources["batched"]["rows"][:1000]])
        rounds = []
        if "rounds" in only:
            for r in range(args.rounds):
                rounds.append(measure_round(tmp, cfg, sources, r))
            log("single appends, durability='full'")
            x["single_appends_full_per_s"] = bench_single(
                tmp, cfg["single"] // 5, 1, "full")["single_appends_per_s"]
        del sources
        if "latency" in only:
            log("follow latency (2 processes)")
            x.update(bench_follow_latency(tmp, cfg["tail"], cfg["tail_interval_ms"]))
        if "memory" in only:
            log("follow memory")
            x["follow_mem"] = bench_follow_memory(tmp, cfg["follow_mem"])
        result["limits"], result["rounds"], result["extra"] = lim, rounds, x
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    result["rows"] = build_rows(rounds, result["hypercore"]) if rounds else []
    result["seconds"] = time.perf_counter() - t_start
    if rounds:
        print(render(result))
    print(f"\n(total {result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_follower", "_writer", "_follow_memory"):
        globals()[sys.argv[1]](*sys.argv[2:])
    else:
        main()
